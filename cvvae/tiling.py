"""Temporal windows and spatial tiles: the one place where CV-VAE is tiled.

Both networks are split where their resolution reaches the latent grid (``Encoder.high`` /
``Encoder.low``, ``Decoder.low`` / ``Decoder.high``). The latent-resolution stages, whose mid-block
attention is global in space (and, in the decoder, in time), always run on the whole clip: they are
8x smaller in each spatial axis and 4x in time. Only the full-resolution stages are cut into boxes
laid out on the latent grid (one latent frame = 4 video frames, one latent pixel = 8 pixels), so
every box is aligned at every layer:

- **halo**: each box is computed with ``halo`` latent pixels (and, in the decoder, ``temporal_halo``
  latent frames) of real neighbouring context on every side, which is cropped away, so its
  convolutions see what they would see in the whole clip instead of zero padding;
- **blending**: neighbouring boxes overlap by ``overlap`` of a tile (and windows by
  ``temporal_overlap`` latent frames) and are blended with symmetric linear ramps that sum to one;
- **causal windows**: the encoder is causal in time, so its windows do not overlap: every causal
  layer carries the frames it needs from one window to the next (``blocks.CausalHistory``), which
  makes them exact;
- **GroupNorm**: its statistics span the whole clip. The boxes of a window run in lockstep and pause at
  every GroupNorm to pool the sums of their owned parts (a partition of the window: nothing counted
  twice), so statistics are exact within a window. ``norm="pooled"`` also pools them over windows:
  a first pass records them, a second normalises every window with the clip's (``norm_passes`` > 2
  refines them further). ``norm="exact"`` runs every box of the clip in lockstep (one pass, exact);
  ``norm="tile"`` is one pass with per-box statistics, like the release.

Memory holds one window's boxes (one box on the accelerator with ``offload``; every box with
``norm="exact"``) plus the latent-resolution features of the clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from itertools import product

import torch
from torch import nn
from tqdm.auto import tqdm

from .blocks import BoxCore, CausalHistory, NormStats, PooledGroupNorm, group_sums
from .tiling_settings import NORM_MODES, TILING_SPECS, TilingSettings, tiling_changes  # noqa: F401 (re-exported)


def spans(length: int, size: int | None, overlap: int) -> list[tuple[int, int]]:
    """Cover ``[0, length)`` with windows of ``size`` overlapping by at least ``overlap``.

    The last window is moved back to end at ``length``, so every window has the full size.
    """
    if size is None or size >= length:
        return [(0, length)]
    stride = max(1, size - overlap)
    count = math.ceil((length - size) / stride) + 1
    return [(min(i * stride, length - size), min(i * stride, length - size) + size) for i in range(count)]


def ramp_weights(out_spans: list[tuple[int, int]], length: int) -> list[torch.Tensor]:
    """Per-window 1-D blend weights that rise and fall linearly over overlaps and sum to one."""
    weights = []
    for i, (s, e) in enumerate(out_spans):
        w = torch.ones(e - s, dtype=torch.float64)
        if i > 0 and (n := out_spans[i - 1][1] - s) > 0:  # overlap with the previous window
            w[:n] = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
        if i < len(out_spans) - 1 and (n := e - out_spans[i + 1][0]) > 0:
            w[-n:] = torch.minimum(w[-n:], torch.arange(n, 0, -1, dtype=torch.float64) / (n + 1))
        weights.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for (s, e), w in zip(out_spans, weights):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(out_spans, weights)]


def cores(out_spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """A partition of ``[0, length)``: each window owns up to the middle of its overlaps."""
    cuts = [0] + [(out_spans[i][1] + out_spans[i + 1][0]) // 2 for i in range(len(out_spans) - 1)] + [length]
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass
class Axis:
    """One axis of the box grid, on the latent grid: computed boxes (with halo), blended spans, owned cores."""

    boxes: list[tuple[int, int]]
    spans: list[tuple[int, int]]
    cores: list[tuple[int, int]]
    weights: list[torch.Tensor]

    @classmethod
    def plan(cls, length: int, size: int | None, overlap: int, halo: int, lead: int = 0) -> Axis:
        """Overlapping spans with ``halo`` of context (at least ``lead`` before every span but the first)."""
        out = spans(length, size, overlap)
        boxes = [(max(0, s - max(halo, lead if s else 0)), min(length, e + halo)) for s, e in out]
        return cls(boxes, out, cores(out, length), ramp_weights(out, length))

    @classmethod
    def windows(cls, length: int, size: int | None) -> Axis:
        """Back-to-back windows (the first one frame longer): the causal encoder's, which stream exactly."""
        if size is None or size >= length:
            edges = [0, length]
        else:
            edges = [0, *range(size, length, size - 1), length]
        out = list(zip(edges[:-1], edges[1:]))
        return cls(out, out, out, [torch.ones(e - s, dtype=torch.float64) for s, e in out])

    def __len__(self) -> int:
        return len(self.boxes)

    def items(self):
        """``(box, span, core, weights)`` of every box."""
        return zip(self.boxes, self.spans, self.cores, self.weights)


def grid(settings: TilingSettings, latents: tuple[int, int, int], decoder: bool) -> tuple[Axis, list]:
    """The temporal axis and the spatial tiles (pairs of ``Axis.items()``) of a clip of ``latents`` (n, h, w)."""
    n, h, w = latents
    ov = settings.overlap_latents
    if decoder and settings.norm != "exact":
        # a window's first latent decodes to one frame alone: one latent of lead gives it its other three
        t_axis = Axis.plan(n, settings.window_latents, settings.temporal_overlap, settings.temporal_halo, lead=1)
    else:  # back to back: causal history (encoder) or context from the neighbours in lockstep (exact decoder)
        t_axis = Axis.windows(n, settings.window_latents)
    tiles = list(product(Axis.plan(h, settings.tile_latents, ov, settings.halo).items(),
                         Axis.plan(w, settings.tile_latents, ov, settings.halo).items()))  # fmt: skip
    return t_axis, tiles


def work(settings: TilingSettings, latents: tuple[int, int, int], decoder: bool) -> float:
    """Work of the full-resolution stages relative to the whole clip: the boxes' volume (halos and
    overlaps included) over the clip's, times the passes over it (1 when the clip runs whole)."""
    t_axis, tiles = grid(settings, latents, decoder)
    if len(t_axis) * len(tiles) == 1:
        return 1.0
    area = sum((hb[1] - hb[0]) * (wb[1] - wb[0]) for (hb, *_), (wb, *_) in tiles)
    volume = sum(e - s for s, e in t_axis.boxes) * area
    return volume * len(_passes(settings, len(t_axis))) / math.prod(latents)


# ----------------------------------------------------------------------------- the default: what fits

SAFETY = 0.9  # of the memory a device has free, what a choice may plan to use
_ESTIMATES: dict[tuple, int] = {}  # (stage, input shape, dtype, device type, candidate) -> estimated peak bytes


def choose(stage: nn.Module, x, settings: TilingSettings, decoder: bool, out_channels: int) -> TilingSettings:
    """With ``settings.auto``: the whole clip when its estimated peak fits the device's free memory, else
    the cheapest tiling that fits (exact windows, then exact windows and tiles, then the same with the waiting
    boxes offloaded to the host, then pooled statistics: flat in the clip's length), else the smallest.
    The choice, its estimate and why are kept in ``stage.tiling_choice`` (:func:`tiling_report`)."""
    if not settings.auto or not settings.enabled:
        stage.tiling_choice = {"mode": "whole" if not settings.enabled else "tiled", "reason": "settings given"}
        return settings
    from . import memory

    param = next(stage.parameters())
    device, dtype = param.device, getattr(x, "dtype", param.dtype)
    shape = tuple(x.shape)
    latents = (shape[2], shape[3], shape[4]) if decoder else (1 + (shape[2] - 1) // 4, shape[3] // 8, shape[4] // 8)
    fixed = settings.replace(auto=False)
    candidates = [("whole clip", fixed.replace(enabled=False, auto=False))]
    candidates += [("exact windows", fixed.replace(norm="exact", tile_size=None, auto=False))]
    candidates += [("exact windows and tiles", fixed.replace(norm="exact", auto=False))]
    if device.type != "cpu":
        candidates += [("exact, boxes offloaded to the host", fixed.replace(norm="exact", offload=True, auto=False))]
    candidates += [("pooled statistics", fixed.replace(norm="pooled", auto=False))]
    small = dict(frames_per_window=4, tile_size=min(128, fixed.tile_size or 128), auto=False)
    candidates += [("pooled statistics, small boxes", fixed.replace(norm="pooled", **small))]
    budget = int(memory.available(device) * SAFETY)
    meta = None
    run = tiled_decode if decoder else tiled_encode
    seen, tried = set(), []
    for name, cand in candidates:
        key = (repr(grid(cand, latents, decoder)), cand.norm if cand.enabled else None, cand.offload)
        if key in seen:
            continue
        seen.add(key)
        cached = (id(stage), shape, dtype, device.type, key)  # estimates are deterministic: batches pay once
        if cached not in _ESTIMATES:
            meta = meta or memory.meta_copy(stage, dtype)
            # offloaded lockstep keeps one box on the device: about the peak of one box at a time
            probe = cand.replace(norm="tile", offload=False, auto=False) if cand.offload else cand
            _ESTIMATES[cached] = memory.estimate_peak(
                lambda p=probe, m=meta: run(m, torch.empty(shape, dtype=dtype, device="meta"), p, out_channels),
                device,
                dtype,
            )
            while len(_ESTIMATES) > 512:
                _ESTIMATES.pop(next(iter(_ESTIMATES)))
        peak = _ESTIMATES[cached]
        tried.append((name, cand, peak))
        if peak <= budget:
            break
    name, cand, peak = min(tried, key=lambda t: t[2]) if tried[-1][2] > budget else tried[-1]
    fits = "fits in" if peak <= budget else "is over (nothing fits: the smallest estimate)"
    stage.tiling_choice = {
        "mode": "whole" if not cand.enabled else "tiled",
        "chosen": name,
        "reason": f"estimated peak {peak / memory.GiB:.3f} GiB {fits} {budget / memory.GiB:.3f} GiB "
        f"({SAFETY:.0%} of what {device.type} has free)",
        "estimate_gib": round(peak / memory.GiB, 3),
        "available_gib": round(budget / SAFETY / memory.GiB, 3),
        "work": round(work(cand, latents, decoder), 3),
        "settings": {f.name: getattr(cand, f.name) for f in fields(cand)},
        "tried": {n: round(p / memory.GiB, 3) for n, _, p in tried},
    }
    return cand


def tiling_report(vae: nn.Module) -> dict:
    """What the last encode and decode chose (``choose``), for sidecars."""
    return {k: getattr(getattr(vae, k + "r", None), "tiling_choice", None) for k in ("encode", "decode")}


def _frames(span: tuple[int, int]) -> slice:
    """Latent frames ``[s, e)`` -> their video frames: latent 0 is frame 0, latent ``j`` frames ``4j - 3 .. 4j``."""
    s, e = span
    return slice(0 if s == 0 else 4 * (s - 1) + 1, 4 * (e - 1) + 1)


@dataclass
class Box:
    """One box of the grid: its input, what it owns for GroupNorm statistics, and where its output goes."""

    window: int
    tile: int
    load: Callable[[], torch.Tensor]  # its input, made when it runs (a view, or a converted slice of the source)
    core: BoxCore
    place: Callable[[torch.Tensor], None]

    @property
    def x(self) -> torch.Tensor:
        return self.load()


def _passes(settings: TilingSettings, windows: int) -> list[str]:
    """``tile``: per-box statistics; ``lockstep``: one pass with exact statistics of what runs together
    (the whole clip with ``norm="exact"``, or a single window); else ``record`` (lockstep per window,
    pooled over windows), ``refine``..., ``apply``."""
    if settings.norm == "tile":
        return ["tile"]
    if settings.norm == "exact" or windows == 1:
        return ["lockstep"]
    return ["record"] + ["refine"] * (settings.norm_passes - 2) + ["apply"]


def lockstep(steps: list, boxes: list[Box], clip: NormStats | None, before=None, store=None) -> list[torch.Tensor]:
    """Run ``boxes`` through ``steps`` together, normalising them at every GroupNorm with the statistics of
    their owned parts pooled (exactly the statistics of the region they tile); ``clip`` also collects the
    sums. ``before(box)`` runs before a box takes a step; with ``store`` the boxes' states wait there
    between steps (e.g. the CPU, so accelerator memory holds one box)."""
    states = [{"h": box.x} for box in boxes]
    device = states[0]["h"].device

    def load(state: dict) -> dict:
        return {k: v.to(device, non_blocking=True) for k, v in state.items()}

    def keep(state: dict) -> dict:
        return state if store is None else {k: v.to(store, non_blocking=True) for k, v in state.items()}

    states = [keep(state) for state in states]
    index = {(box.window, box.tile): i for i, box in enumerate(boxes)}
    for step in steps:
        if isinstance(step, PooledGroupNorm):
            pooled = NormStats()
            for state, box in zip(states, boxes):
                sums = group_sums(state["h"].to(device), step.num_groups, box.core)
                pooled.add(id(step), sums)
                if clip is not None:
                    clip.add(id(step), sums)
            pooled.pool()
            for i, state in enumerate(states):
                state = load(state)
                state["h"] = step.normalize(state["h"], *pooled.get(id(step)))
                states[i] = keep(state)
            continue
        reach = getattr(step, "reach", 0)
        # a non-causal layer's context in time: the edge frames of the same tile's neighbouring windows
        edges = [(s["h"][:, :, :reach].clone(), s["h"][:, :, -reach:].clone()) for s in states] if reach else None
        for i, (state, box) in enumerate(zip(states, boxes)):
            if before is not None:
                before(box)
            state = load(state)
            prev, nxt = index.get((box.window - 1, box.tile)), index.get((box.window + 1, box.tile))
            if edges is None or (prev is None and nxt is None):
                step(state)
            else:
                _step_with_context(step, state, reach, None if prev is None else edges[prev][1].to(device),
                                   None if nxt is None else edges[nxt][0].to(device))  # fmt: skip
            states[i] = keep(state)
    return [state["h"].to(device) for state in states]


def _step_with_context(step, state: dict, reach: int, before, after) -> None:
    """``step`` on ``state["h"]`` with the frames ``before`` and ``after`` it in time, cropped back to its own frames
    (a temporal upsampler's window that has a predecessor gives two frames for each of its own)."""
    t = state["h"].shape[2]
    state["h"] = torch.cat([x for x in (before, state["h"], after) if x is not None], dim=2)  # [B, C, t + context, ..]
    step(state)
    if getattr(step, "up", 1) == 1:
        start, length = (0 if before is None else reach), t
    else:  # input frame j -> outputs 2j - 1, 2j (frame 0 -> output 0 alone)
        assert reach == 1, "a temporal upsampler needs one frame of context"
        start, length = (0, 2 * t - 1) if before is None else (1, 2 * t)
    state["h"] = state["h"][:, :, start : start + length]


def _run(stage: nn.Module, boxes: list[Box], settings: TilingSettings, desc: str, causal: list | None = None) -> None:
    """Every box through ``stage.high`` (its ``high_steps`` in lockstep) under the settings' GroupNorm mode,
    each output handed to its box's ``place``. ``causal`` layers carry history per tile across windows."""
    windows = 1 + max(box.window for box in boxes)
    passes = _passes(settings, windows)
    norms = [m for m in stage.modules() if isinstance(m, PooledGroupNorm)]
    clip, causal = NormStats(), causal or []
    steps = stage.high_steps()
    store = torch.device("cpu") if settings.offload else None
    meta = next(stage.parameters()).is_meta  # a memory estimate
    bar = tqdm(total=len(boxes) * len(passes), desc=desc, unit="tile", leave=False, disable=meta)
    try:
        for mode in passes:
            if mode in ("refine", "apply"):
                clip.pool(mode)
            for norm in norms:
                norm.stats = clip if mode in ("refine", "apply") else None
            histories: dict[int, CausalHistory] = {}

            def follow(box: Box, histories=histories) -> None:
                history = histories.setdefault(box.tile, CausalHistory())  # a tile's windows stream in order
                for m in causal:
                    m.history = history

            if mode == "lockstep" and settings.norm == "exact":
                groups = [boxes]
            elif mode in ("lockstep", "record"):
                groups = [[b for b in boxes if b.window == w] for w in range(windows)]
            else:
                groups = [[b] for b in boxes]
            for group in groups:
                if mode in ("lockstep", "record"):
                    outs = lockstep(steps, group, clip if mode == "record" else None, follow, store)
                else:  # statistics known (or each box's own): one box at a time
                    follow(group[0])
                    clip.box = group[0].core
                    outs = [stage.high(group[0].x)]
                bar.update(len(group))
                if mode not in ("record", "refine"):
                    for box, y in zip(group, outs):
                        box.place(y)
    finally:
        for m in [*norms, *causal]:
            setattr(m, "stats" if isinstance(m, PooledGroupNorm) else "history", None)
        bar.close()


def tiled_encode(encoder: nn.Module, x: torch.Tensor, settings: TilingSettings, out_channels: int) -> torch.Tensor:
    """Encode ``x`` ``[B, 3, 1 + 4k, 8h, 8w]`` into moments ``[B, C, 1 + k, h, w]`` window by window, tile by tile.

    The full-resolution stages stream through back-to-back windows (causal history carried: exact)
    and haloed tiles; the latent-resolution stages run on the whole clip. ``x`` may also be anything
    with that ``shape`` that slices like it (``cvvae.model.PaddedFrames``): each box is sliced when it runs.
    """
    settings = choose(encoder, x, settings, False, out_channels)
    b, _, frames, height, width = x.shape
    n, h, w = 1 + (frames - 1) // 4, height // 8, width // 8
    t_axis, tiles = grid(settings, (n, h, w), decoder=False)
    if len(t_axis) * len(tiles) == 1:
        return encoder(x[:, :, :, :, :])
    features: list[torch.Tensor] = []

    def placer(tb, hb, hs, hw, wb, ws, ww):
        def place(y: torch.Tensor) -> None:  # y: [B, C, window latents, box h, box w]: crop the halo, blend
            if not features:
                features.append(y.new_zeros(b, y.shape[1], n, h, w))
            crop = y[:, :, :, hs[0] - hb[0] : hs[1] - hb[0], ws[0] - wb[0] : ws[1] - wb[0]]
            features[0][:, :, tb[0] : tb[1], hs[0] : hs[1], ws[0] : ws[1]] += crop * (hw[:, None] * ww).to(y)

        return place

    boxes = []
    for wi, tb in enumerate(t_axis.boxes):
        for ti, ((hb, hs, hc, hw), (wb, ws, wc, ww)) in enumerate(tiles):
            latents = (tb[1] - tb[0], hb[1] - hb[0], wb[1] - wb[0])
            part = (slice(None), slice(None), _frames(tb), slice(8 * hb[0], 8 * hb[1]), slice(8 * wb[0], 8 * wb[1]))
            core = BoxCore(latents, (None, None, *_local(hc, hb), *_local(wc, wb)))
            boxes.append(Box(wi, ti, partial(x.__getitem__, part), core, placer(tb, hb, hs, hw, wb, ws, ww)))
    causal = [m for m in encoder.modules() if hasattr(m, "history")]
    _run(encoder, boxes, settings, "encode", causal)
    return encoder.low(features[0])


class _Frames:
    """The blended output frames of a decode: all kept (``sink=None``), or handed to ``sink`` in order, and
    freed, as soon as no later box adds to them (memory then holds about one window of frames)."""

    def __init__(self, shape: tuple[int, ...], like: torch.Tensor, sink: Callable[[torch.Tensor], None] | None):
        self.shape, self.like, self.sink, self.start = shape, like, sink, 0  # start: first frame held
        self.held = like.new_zeros(shape if sink is None else (*shape[:2], 0, *shape[3:]))

    def add(self, index: tuple[slice, slice, slice], values: torch.Tensor) -> None:
        frames, rows, cols = index
        missing = frames.stop - self.start - self.held.shape[2]
        if missing > 0:
            self.held = torch.cat([self.held, self.like.new_zeros(*self.shape[:2], missing, *self.shape[3:])], dim=2)
        self.held[:, :, frames.start - self.start : frames.stop - self.start, rows, cols] += values

    def release(self, upto: int) -> None:
        """Hand the frames before ``upto`` to the sink."""
        if self.sink is not None and upto > self.start:
            self.sink(self.held[:, :, : upto - self.start])
            self.held = self.held[:, :, upto - self.start :].clone()
            self.start = upto


def tiled_decode(
    decoder: nn.Module,
    z: torch.Tensor,
    settings: TilingSettings,
    out_channels: int,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Decode ``z`` ``[B, C, n, h, w]`` into ``[B, 3, 1 + 4 (n - 1), 8h, 8w]``: the latent-resolution stages
    on the whole clip, the upsampling stages box by box (haloed windows and tiles, blended).

    With ``sink``, the frames are handed to it in order, in parts ``[B, 3, t, 8h, 8w]``, as soon as they
    are final (and then freed), and nothing is returned."""
    settings = choose(decoder, z, settings, True, out_channels)
    b, _, n, h, w = z.shape
    t_axis, tiles = grid(settings, (n, h, w), decoder=True)
    if len(t_axis) * len(tiles) == 1:
        x = decoder(z)
        if sink is None:
            return x
        sink(x)
        return None
    features = decoder.low(z)  # [B, C, n, h, w], exact: the mid block's attention sees the whole clip
    frames = 1 + 4 * (n - 1)
    out = _Frames((b, out_channels, frames, 8 * h, 8 * w), z, sink)

    def placer(tb, ts, tw, hb, hs, hw, wb, ws, ww, ready):
        def place(y: torch.Tensor) -> None:  # crop the halo, blend the span, release what is final
            frames = slice(None) if ts == tb else _frames(_local(ts, tb))  # back-to-back windows: all their frames
            crop = y[:, :, frames, 8 * (hs[0] - hb[0]) : 8 * (hs[1] - hb[0])]
            crop = crop[..., 8 * (ws[0] - wb[0]) : 8 * (ws[1] - wb[0])]
            weight = _frame_weights(tw, ts)[:, None, None] * _pixels(hw)[:, None] * _pixels(ww)
            out.add((_frames(ts), slice(8 * hs[0], 8 * hs[1]), slice(8 * ws[0], 8 * ws[1])), crop * weight.to(crop))
            out.release(ready)

        return place

    items = [(wi, ti, t, s) for wi, t in enumerate(t_axis.items()) for ti, s in enumerate(tiles)]
    # boxes are placed in this order: frames before every later box's first frame are final after box i
    firsts = [_frames(t[1]).start for _, _, t, _ in items]
    ready = [min(firsts[i + 1 :], default=frames) for i in range(len(items))]
    boxes = []
    for (wi, ti, (tb, ts, tc, tw), ((hb, hs, hc, hw), (wb, ws, wc, ww))), upto in zip(items, ready):
        latents = (tb[1] - tb[0], hb[1] - hb[0], wb[1] - wb[0])
        part = (slice(None), slice(None), slice(*tb), slice(*hb), slice(*wb))
        t_core = (None, None) if tc == tb else _local(tc, tb)  # back-to-back windows own all their frames
        core = BoxCore(latents, (*t_core, *_local(hc, hb), *_local(wc, wb)))
        boxes.append(
            Box(wi, ti, partial(features.__getitem__, part), core, placer(tb, ts, tw, hb, hs, hw, wb, ws, ww, upto))
        )
    _run(decoder, boxes, settings, "decode")
    return out.held if sink is None else None


def _local(span: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    return span[0] - box[0], span[1] - box[0]


def _pixels(latent_weights: torch.Tensor) -> torch.Tensor:
    """Blend weights on the latent grid -> on pixels (each latent pixel covers 8)."""
    return latent_weights.repeat_interleave(8)


def _frame_weights(latent_weights: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Blend weights of a window's latent frames -> its video frames (latent 0 of the clip is one frame)."""
    frames = latent_weights.repeat_interleave(4)
    return frames[3:] if span[0] == 0 else frames
