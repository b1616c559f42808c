"""Temporal windows and spatial tiles with blending: the one place where CV-VAE is tiled.

A clip is cut into a grid of overlapping boxes laid out on the *latent* grid (one latent frame =
4 video frames, one latent pixel = 8 pixels), so every box is aligned for both the encoder and
the decoder. Each box runs through the network on its own; outputs are blended with linear
ramps over the overlaps, normalised per axis so the weights of all boxes sum to one everywhere
(symmetric, unlike the release's one-sided ramp; temporal windows overlap and blend, unlike
the release's hard cut every 16 frames).

Most of what separates tiled from whole-clip results is GroupNorm: its statistics span all frames
and pixels of whatever it sees. With ``norm="pooled"`` a first pass over all boxes only records
GroupNorm sums, and a second pass normalises every box with the statistics pooled over the whole
clip. That costs a second pass but keeps memory bounded by one box; ``norm="tile"`` is one pass
with per-box statistics, like the release.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from itertools import product

import torch
from torch import nn
from tqdm.auto import tqdm

from .blocks import NormStats, PooledGroupNorm
from .errors import InputError

NORM_MODES = ("pooled", "tile")


@dataclass(frozen=True)
class TilingSettings:
    """Runtime tiling; ``None`` disables an axis (as the released config keys do).

    Args:
        frames_per_window: video frames per temporal window (a multiple of 4; the released
            ``en_de_n_frames_a_time``). A window holds ``frames_per_window + 1`` frames.
        tile_size: pixel tile size (a multiple of 8; the released ``tile_spatial_size``).
        overlap: fraction of a tile shared with its neighbour (the released ``tile_overlap_ratio``).
        temporal_overlap: latent frames shared by consecutive windows (default: 2, or 1 for
            windows of at most 8 frames).
        norm: ``"pooled"`` (GroupNorm statistics of the whole clip, two passes) or ``"tile"``.
        enabled: ``False`` processes every clip whole and keeps the other settings for later.
    """

    frames_per_window: int | None = 16
    tile_size: int | None = 576
    overlap: float = 0.2222
    temporal_overlap: int | None = None
    norm: str = "pooled"
    enabled: bool = True

    def __post_init__(self) -> None:
        fpw, tile = self.frames_per_window, self.tile_size
        if fpw is not None and (not _is_int(fpw) or fpw < 4 or fpw % 4):
            raise InputError(f"frames_per_window must be a positive multiple of 4, got {fpw!r}")
        if tile is not None and (not _is_int(tile) or tile < 16 or tile % 8):
            raise InputError(f"tile_size must be a multiple of 8 and at least 16 pixels, got {tile!r}")
        if not isinstance(self.overlap, (int, float)) or not 0.0 <= self.overlap < 0.5:
            raise InputError(f"overlap must be in [0, 0.5), got {self.overlap!r}")
        if self.temporal_overlap is None:
            object.__setattr__(self, "temporal_overlap", 1 if fpw is None or fpw <= 8 else 2)
        if fpw is not None and not (_is_int(self.temporal_overlap) and 1 <= self.temporal_overlap <= fpw // 4):
            raise InputError(
                f"temporal_overlap must be 1 to frames_per_window / 4 latent frames, got {self.temporal_overlap!r}"
            )
        if self.norm not in NORM_MODES:
            raise InputError(f"norm must be one of {NORM_MODES}, got {self.norm!r}")

    def replace(self, **changes) -> TilingSettings:
        """A copy with ``changes`` applied and everything else kept (``temporal_overlap`` is re-derived
        for a new ``frames_per_window`` unless it is given too)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(f"unknown tiling setting(s) {', '.join(unknown)}")
        if "frames_per_window" in changes and "temporal_overlap" not in changes:
            changes["temporal_overlap"] = None
        return replace(self, **changes)

    @property
    def window_latents(self) -> int | None:
        return None if self.frames_per_window is None or not self.enabled else self.frames_per_window // 4 + 1

    @property
    def tile_latents(self) -> int | None:
        return None if self.tile_size is None or not self.enabled else self.tile_size // 8

    @property
    def overlap_latents(self) -> int:
        return 0 if self.tile_latents is None else round(self.tile_latents * self.overlap)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What front ends offer (web demo, batch jobs, ``generate --decode-tiling``): see ``tiling_changes``.
TILING_SPECS = ("default", "off", "16", "8", "8/256")


def tiling_changes(spec: str | None) -> dict:
    """A tiling choice as changes for :meth:`TilingSettings.replace`.

    ``"default"`` (or None): the model's own settings; ``"off"``: whole clips; ``"N"``: windows of N
    frames; ``"N/P"``: windows of N frames and tiles of P pixels.
    """
    text = "default" if spec is None else str(spec).strip().lower()
    if text == "default":
        return {}
    if text == "off":
        return {"enabled": False}
    frames, slash, tile = text.partition("/")
    try:
        changes = {"enabled": True, "frames_per_window": int(frames)}
        if slash:
            changes["tile_size"] = int(tile)
    except ValueError:
        raise InputError(
            f"tiling must be 'default', 'off', 'N' (frames per window) or 'N/P' (and tile pixels), got {spec!r}"
        ) from None
    TilingSettings().replace(**changes)  # validate the numbers now
    return changes


def spans(length: int, size: int | None, overlap: int) -> list[tuple[int, int]]:
    """Cover ``[0, length)`` with windows of ``size`` overlapping by at least ``overlap``.

    The last window is moved back to end at ``length``, so every window has the full size.
    """
    if size is None or size >= length:
        return [(0, length)]
    stride = max(1, size - overlap)
    count = math.ceil((length - size) / stride) + 1
    return [(min(i * stride, length - size), min(i * stride, length - size) + size) for i in range(count)]


def ramp_weights(out_spans: list[tuple[int, int]], length: int, skip: int = 0) -> list[torch.Tensor]:
    """Per-window 1-D blend weights that rise and fall linearly over overlaps and sum to one.

    ``skip`` positions at the start of every window but the first get no weight (the causal
    encoder's first latent of a window sees a single frame, so it is not worth blending in).
    """
    weights = []
    for i, (s, e) in enumerate(out_spans):
        w = torch.ones(e - s, dtype=torch.float64)
        if i > 0:
            n = out_spans[i - 1][1] - s  # overlap with the previous window
            k = min(skip, n)
            if n > 0:
                w[:k] = 0.0
                w[k:n] = torch.arange(1, n - k + 1, dtype=torch.float64) / (n - k + 1)
        if i < len(out_spans) - 1:
            n = e - out_spans[i + 1][0]
            if n > 0:
                w[-n:] = torch.minimum(w[-n:], torch.arange(n, 0, -1, dtype=torch.float64) / (n + 1))
        weights.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for (s, e), w in zip(out_spans, weights):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(out_spans, weights)]


@dataclass
class _Axis:
    """One axis of the box grid: input spans, output spans and blend weights."""

    inputs: list[tuple[int, int]]
    outputs: list[tuple[int, int]]
    weights: list[torch.Tensor]


def _axis(latent_spans, to_in: Callable, to_out: Callable, out_len: int, skip: int = 0) -> _Axis:
    outputs = [to_out(s) for s in latent_spans]
    return _Axis([to_in(s) for s in latent_spans], outputs, ramp_weights(outputs, out_len, skip))


def _frames(span: tuple[int, int]) -> tuple[int, int]:
    """Latent frames ``[a, b)`` -> video frames ``[4a, 4(b - 1) + 1)``."""
    return 4 * span[0], 4 * (span[1] - 1) + 1


def _pixels(span: tuple[int, int]) -> tuple[int, int]:
    return 8 * span[0], 8 * span[1]


def _identity(span: tuple[int, int]) -> tuple[int, int]:
    return span


def _boxes(t: _Axis, h: _Axis, w: _Axis) -> Iterator[tuple[tuple, tuple, torch.Tensor]]:
    """Yield (input slices, output slices, weight ``[1, 1, t, h, w]``) for every box of the grid."""
    for (it, ot, wt), (ih, oh, wh), (iw, ow, ww) in product(
        zip(t.inputs, t.outputs, t.weights), zip(h.inputs, h.outputs, h.weights), zip(w.inputs, w.outputs, w.weights)
    ):
        weight = wt[:, None, None] * wh[None, :, None] * ww[None, None, :]
        yield (slice(*it), slice(*ih), slice(*iw)), (slice(*ot), slice(*oh), slice(*ow)), weight[None, None]


def _run_boxes(fn, x, out, axes, settings: TilingSettings, module: nn.Module, desc: str) -> torch.Tensor:
    boxes = list(_boxes(*axes))
    if len(boxes) == 1:
        return fn(x)
    norms = [m for m in module.modules() if isinstance(m, PooledGroupNorm)]
    passes = ["record", "apply"] if settings.norm == "pooled" else ["tile"]
    stats = NormStats()
    bar = tqdm(total=len(boxes) * len(passes), desc=desc, unit="tile", leave=False)
    try:
        for norm in norms:
            norm.stats = stats if settings.norm == "pooled" else None
        for mode in passes:
            for (it, ih, iw), (ot, oh, ow), weight in boxes:
                y = fn(x[:, :, it, ih, iw])
                if mode != "record":
                    out[:, :, ot, oh, ow] += y * weight.to(y)
                bar.update()
            if mode == "record":
                stats.pool()
    finally:
        for norm in norms:
            norm.stats = None
        bar.close()
    return out


def tiled_encode(encoder: nn.Module, x: torch.Tensor, settings: TilingSettings, out_channels: int) -> torch.Tensor:
    """Encode ``x`` ``[B, 3, 1 + 4k, 8h, 8w]`` box by box into moments ``[B, C, 1 + k, h, w]``."""
    b, _, frames, height, width = x.shape
    n, h, w = 1 + (frames - 1) // 4, height // 8, width // 8
    ov = settings.overlap_latents
    axes = (
        _axis(spans(n, settings.window_latents, settings.temporal_overlap), _frames, _identity, n, skip=1),
        _axis(spans(h, settings.tile_latents, ov), _pixels, _identity, h),
        _axis(spans(w, settings.tile_latents, ov), _pixels, _identity, w),
    )
    out = x.new_zeros(b, out_channels, n, h, w)
    return _run_boxes(encoder, x, out, axes, settings, encoder, "encode")


def tiled_decode(decoder: nn.Module, z: torch.Tensor, settings: TilingSettings, out_channels: int) -> torch.Tensor:
    """Decode ``z`` ``[B, C, n, h, w]`` box by box into ``[B, 3, 1 + 4 (n - 1), 8h, 8w]``."""
    b, _, n, h, w = z.shape
    ov = settings.overlap_latents
    axes = (
        _axis(spans(n, settings.window_latents, settings.temporal_overlap), _identity, _frames, 1 + 4 * (n - 1)),
        _axis(spans(h, settings.tile_latents, ov), _identity, _pixels, 8 * h),
        _axis(spans(w, settings.tile_latents, ov), _identity, _pixels, 8 * w),
    )
    out = z.new_zeros(b, out_channels, 1 + 4 * (n - 1), 8 * h, 8 * w)
    return _run_boxes(decoder, z, out, axes, settings, decoder, "decode")
