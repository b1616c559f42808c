"""Building blocks of the CV-VAE encoder and decoder.

Tensors are ``[B, C, T, H, W]`` throughout. Module and parameter names follow the released
checkpoint (the CompVis/ldm layout: ``down.{i}.block.{j}``, ``mid.attn_1.q``, ``norm_out`` ...),
so the released safetensors state dict loads strictly.

Conventions of the released model kept here (see the project's reference facts):
- encoder 3-D convs are causal in time (first frame replicated twice in front), decoder 3-D convs
  are zero padded in time; spatial padding is zeros;
- the second conv of every res block is a per-frame 2-D conv (weights ``[O, I, 3, 3]``);
- GroupNorm in res blocks spans channels-in-group x all frames x H x W (``PooledGroupNorm`` can
  instead use statistics pooled over every tile of a clip, see ``cvvae.tiling``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GROUPNORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@dataclass
class BoxCore:
    """Which part of a box's activations a box owns, for pooling GroupNorm statistics.

    ``latents`` is the box's size on the latent grid ``(n, h, w)``; ``core`` the owned part in the
    box's latent coordinates ``(t0, t1, y0, y1, x0, x1)`` (a partition of the clip over all boxes, so
    nothing is counted twice). ``t0 = t1 = None`` owns every frame of the box (the encoder's windows).
    Latent frame 0 of a box covers its frame 0 at every layer, latent ``j`` the next ``r`` frames.
    """

    latents: tuple[int, int, int]
    core: tuple

    def slices(self, x: torch.Tensor) -> tuple[slice, slice, slice]:
        n, h, w = self.latents
        t0, t1, y0, y1, x0, x1 = self.core
        sh, sw = x.shape[3] // h, x.shape[4] // w
        if t0 is None:
            ts = slice(None)
        else:
            r = (x.shape[2] - 1) // (n - 1) if n > 1 else 1
            ts = slice(0 if t0 == 0 else (t0 - 1) * r + 1, (t1 - 1) * r + 1)
        return ts, slice(y0 * sh, y1 * sh), slice(x0 * sw, x1 * sw)


def group_sums(x: torch.Tensor, groups: int, box: BoxCore | None = None) -> list[torch.Tensor]:
    """Per-(sample, group) sum, sum of squares and count of ``x`` (of the part ``box`` owns), in float64."""
    if box is not None:
        x = x[(slice(None), slice(None), *box.slices(x))]
    b, c = x.shape[:2]
    xg = x.detach().reshape(b, groups, -1)  # (B, G, C/G N)
    if xg.dtype != torch.float32 and xg.dtype != torch.float64:
        xg = xg.float()
    var, mean = torch.var_mean(xg, dim=2, correction=0)  # stable in one read, no copy of the activation
    var, mean, n = var.double(), mean.double(), xg.shape[2]
    return [mean * n, (var + mean * mean) * n, torch.full_like(mean, n)]


class NormStats:
    """Per-(sample, group) GroupNorm statistics pooled over boxes: sums are added, then turned into
    mean and variance (``pool``), layer by layer (keyed by the norm module's id).

    ``mode`` says what a :class:`PooledGroupNorm` does with it: ``"record"`` (normalise with the
    box's own statistics and add the owned part's sums), ``"refine"`` (normalise with the pooled
    statistics and record again) or ``"apply"`` (normalise with the pooled statistics).
    """

    def __init__(self, mode: str = "record") -> None:
        self.mode = mode
        self.box: BoxCore | None = None
        self._sums: dict[int, list[torch.Tensor]] = {}
        self._pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def records(self) -> bool:
        return self.mode in ("record", "refine")

    def add(self, key: int, sums: list[torch.Tensor]) -> None:
        if key in self._sums:
            sums = [a + b for a, b in zip(self._sums[key], sums)]
        self._sums[key] = sums

    def record(self, key: int, x: torch.Tensor, groups: int) -> None:
        self.add(key, group_sums(x, groups, self.box))

    def pool(self, next_mode: str = "apply") -> None:
        """Turn the running sums into mean and variance, and switch to ``next_mode``."""
        self._pooled = {key: _mean_var(sums) for key, sums in self._sums.items()}
        self._sums = {}
        self.mode = next_mode

    def get(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pooled[key]


def _mean_var(sums: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    s, sq, n = sums
    mean = s / n
    return mean, (sq / n - mean * mean).clamp_min(0)


class PooledGroupNorm(nn.GroupNorm):
    """GroupNorm over ``[B, C, ...]`` whose statistics can be pooled across tiles of a clip."""

    stats: NormStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.stats
        if stats is None:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if stats.records:
            stats.record(id(self), x, self.num_groups)
        if stats.mode == "record":
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self.normalize(x, *stats.get(id(self)))

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """GroupNorm of ``x`` with given per-(sample, group) statistics ``[B, G]`` (then the affine)."""
        b, c = x.shape[:2]
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        xg = (x.reshape(b, self.num_groups, -1) - mean.to(x.dtype)[..., None]) * inv[..., None]  # (B, G, N)
        affine = (1, c) + (1,) * (x.dim() - 2)
        return xg.reshape(x.shape) * self.weight.reshape(affine) + self.bias.reshape(affine)


def group_norm(channels: int, groups: int, eps: float = GROUPNORM_EPS) -> PooledGroupNorm:
    return PooledGroupNorm(groups, channels, eps=eps, affine=True)


def silu_fresh(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a tensor nothing else holds (a norm's output): in place outside autograd, no second activation."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------


def _repeat_first_frame(x: torch.Tensor, n: int) -> torch.Tensor:
    """Prepend ``n`` copies of frame 0: ``[B, C, T, H, W] -> [B, C, T + n, H, W]``."""
    return torch.cat([x[:, :, :1].expand(-1, -1, n, -1, -1), x], dim=2)


def causal_buffer(x: torch.Tensor, n: int, right: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty ``[B, C, T + n, H + right, W + right]`` for ``x``, its ``right`` last rows and columns zero,
    and the view of it where ``x``'s frames go; write them there, then :func:`fill_front` (one pass, no cat)."""
    b, c, t, h, w = x.shape
    buf = x.new_empty(b, c, t + n, h + right, w + right)
    if right:
        buf[..., h:, :].zero_()
        buf[..., :h, w:].zero_()
    return buf, buf[:, :, n:, :h, :w]


def fill_front(buf: torch.Tensor, n: int) -> torch.Tensor:
    """Copy frame ``n`` of a :func:`causal_buffer` into its ``n`` frames in front; returns ``buf``."""
    buf[:, :, :n] = buf[:, :, n : n + 1]
    return buf


class CausalHistory:
    """The frames a causal layer needs from earlier temporal windows, so windows stream exactly.

    A layer that pads time by repeating frame 0 (causal convs, the encoder's samplers) asks
    :meth:`pad` instead while a history is set on it: the first window is padded as usual, later
    windows get the last frames of the previous ones in front (as many as the layer's stride and
    the window's offset require), so the outputs equal those of the whole clip.
    """

    def __init__(self) -> None:
        self._state: dict[int, tuple[int, torch.Tensor]] = {}  # id(layer) -> (frames seen, last frames)

    def pad(self, layer: nn.Module, x: torch.Tensor, n: int, stride: int = 1) -> torch.Tensor:
        """``x`` with ``n`` frames of history in front (fewer for a stride-2 layer at an odd offset)."""
        seen, last = self._state.get(id(layer), (0, None))
        if seen == 0:
            padded = _repeat_first_frame(x, n)
        else:
            keep = n - seen % stride if stride > 1 else n  # output k of a stride-2 layer starts at frame 2k - 2
            padded = torch.cat([last[:, :, last.shape[2] - keep :], x], dim=2) if keep else x
        tail = x if last is None else torch.cat([last, x], dim=2)
        self._state[id(layer)] = (seen + x.shape[2], tail[:, :, -n:].detach())
        return padded


class CausalConv3d(nn.Conv3d):
    """3-D conv, causal in time (frame 0 replicated ``k - 1`` times in front), padded in space with
    zeros (SD 2.1 variant) or by replicating edge pixels (``spatial="replicate"``, SD3 variant)."""

    history: CausalHistory | None = None  # set while a clip streams window by window (``cvvae.tiling``)

    def __init__(self, cin: int, cout: int, kernel_size: int, spatial: str = "zeros", stride=1) -> None:
        p = kernel_size // 2
        zeros = spatial == "zeros"
        super().__init__(cin, cout, kernel_size, stride=stride, padding=(0, p, p) if zeros else 0)
        self.time_pad, self.replicate = kernel_size - 1, 0 if zeros else p

    def forward(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        if padded:  # already padded in time by :meth:`after_silu`
            return super().forward(x)
        if self.time_pad:
            stride = self.stride[0]
            pad = self.history.pad if self.history else lambda _layer, x, n, _stride: _repeat_first_frame(x, n)
            x = pad(self, x, self.time_pad, stride)
        if self.replicate:
            x = F.pad(x, (self.replicate,) * 4 + (0, 0), mode="replicate")
        return super().forward(x)

    def after_silu(self, x: torch.Tensor) -> torch.Tensor:
        """``self(silu(x))`` for a norm's output ``x``; outside autograd (and when not streaming) the SiLU
        writes straight into the causally padded input, so no padded copy is made."""
        if torch.is_grad_enabled() or self.history or self.replicate or not self.time_pad:
            return self(silu_fresh(x))
        buf, body = causal_buffer(x, self.time_pad)
        torch.ops.aten.silu.out(x, out=body)
        return self(fill_front(buf, self.time_pad), padded=True)  # through __call__: module hooks still run


def conv_after_silu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(silu(x))`` for a norm's output ``x`` that nothing else holds."""
    return conv.after_silu(x) if isinstance(conv, CausalConv3d) else conv(silu_fresh(x))


class PlainConv3d(nn.Conv3d):
    """3-D conv padded in time and space with zeros (SD 2.1 variant's decoder) or by replication (SD3 variant)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, mode: str = "zeros") -> None:
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2, padding_mode=mode)


class FrameConv2d(nn.Conv2d):
    """2-D conv applied to every frame; weights stay ``[O, I, k, k]`` as in the release.

    Runs as a 3-D conv with a temporal kernel of 1, so frames never fold into the batch.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__(cin, cout, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0] // 2
        return F.conv3d(x, self.weight.unsqueeze(2), self.bias, padding=(0, p, p))


def temporal_reach(layer: nn.Module) -> int:
    """Frames of future (and past) context a non-causal layer needs on each side in time: 0 for causal
    layers (``CausalHistory`` carries their past) and per-frame ones."""
    if isinstance(layer, Upsample):
        return 1
    if isinstance(layer, PlainConv3d):
        return layer.kernel_size[0] // 2
    return 0


def make_conv(kind: str, cin: int, cout: int, kernel_size: int) -> nn.Module:
    """``kind`` is ``causal``, ``plain`` (3-D, zero padded in space), their ``-replicate`` forms (edge
    pixels replicated, the SD3 variant's) or ``frame`` (per-frame 2-D)."""
    kinds = {
        "causal": lambda: CausalConv3d(cin, cout, kernel_size),
        "causal-replicate": lambda: CausalConv3d(cin, cout, kernel_size, spatial="replicate"),
        "plain": lambda: PlainConv3d(cin, cout, kernel_size),
        "plain-replicate": lambda: PlainConv3d(cin, cout, kernel_size, mode="replicate"),
        "frame": lambda: FrameConv2d(cin, cout, kernel_size),
    }
    return kinds[kind]()


# --------------------------------------------------------------------------------------------
# Res block, samplers
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """GN -> SiLU -> conv1 (3-D) -> GN -> SiLU -> dropout -> conv2 (per frame) + shortcut.

    The shortcut (when channels change) is the SD 2.1 variant's 3-D 1x1 ``nin_shortcut`` or the SD3
    variant's per-frame ``conv_shortcut`` (``shortcut="conv_shortcut"``).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        conv_kind: str,
        second_kind: str,
        groups: int,
        dropout: float,
        eps: float = GROUPNORM_EPS,
        shortcut: str = "nin_shortcut",
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(cin, groups, eps)
        self.conv1 = make_conv(conv_kind, cin, cout, 3)
        self.norm2 = group_norm(cout, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = make_conv(second_kind, cout, cout, 3)
        self.shortcut_name = shortcut if cin != cout else None
        if self.shortcut_name:
            kind = "frame" if shortcut == "conv_shortcut" else conv_kind
            self.add_module(shortcut, make_conv(kind, cin, cout, 1))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.shortcut_name)(x) if self.shortcut_name else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = conv_after_silu(self.conv1, self.norm1(x))
        h = self.conv2(self.dropout(silu_fresh(self.norm2(h))))
        if torch.is_grad_enabled():
            return self._shortcut(x) + h
        return h.add_(self._shortcut(x))  # into the conv's fresh output: no new activation

    def steps(self) -> list:
        """``forward`` as steps on a box's state ``{"h": ..., "skip": ...}``, paused at each GroupNorm
        (``cvvae.tiling`` runs all boxes of a window in lockstep and pools the statistics there)."""

        def keep(state: dict) -> None:
            state["skip"] = state["h"]

        def first(state: dict) -> None:
            state["h"] = self.conv1(F.silu(state["h"]))

        def second(state: dict) -> None:
            state["h"] = self._shortcut(state.pop("skip")) + self.conv2(self.dropout(F.silu(state["h"])))

        first.reach = temporal_reach(self.conv1)
        second.reach = max(temporal_reach(self.conv2), temporal_reach(getattr(self, self.shortcut_name or "conv2")))
        return [keep, self.norm1, first, self.norm2, second]


class Downsample(nn.Module):
    """Stride-2 conv in space (and in time when ``time``); T -> 1 + (T - 1) // 2, H -> H // 2."""

    history: CausalHistory | None = None  # set while a clip streams window by window (``cvvae.tiling``)

    def __init__(self, channels: int, time: bool) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=(2 if time else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.history:
            x = F.pad(self.history.pad(self, x, 2, self.conv.stride[0]), (0, 1, 0, 1))
        else:  # frame 0 twice in front, one zero column right and one zero row at the bottom, in one copy
            buf, body = causal_buffer(x, 2, right=1)
            body.copy_(x)
            x = fill_front(buf, 2)
        return self.conv(x)


def _phase_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """A 3-tap kernel axis seen from the low-resolution grid of a nearest x2 upsampling: phase 0 (even
    outputs) takes ``(w0, w1 + w2)`` on rows ``(i - 1, i)``, phase 1 ``(w0 + w1, w2)`` on ``(i, i + 1)``.
    ``[..., 3, ...] -> [2, ..., 2, ...]`` (phase first, 2 taps at ``dim``)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


def upsampled_conv(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, mode: str, halves: int = 1, drop: int = 0
) -> torch.Tensor:
    """``conv3d(nearest x2 in space of x, weight)`` with one pixel of ``mode`` padding in space, computed
    on ``x`` itself: each of the four output phases is a 2x2 conv with summed taps, 16 instead of 36
    multiplications per input pixel (exact up to float rounding). ``kernel`` is the phase kernel
    ``[4 O, I, kt, 2, 2]`` of the conv's ``[O, I, kt, 3, 3]`` weight (:func:`phase_kernel`). With ``halves=2`` the
    output channels' halves become interleaved frames, frame ``2t + n`` from half ``n``, of which the
    first ``drop`` are left out: ``[B, O / halves, halves T - drop, 2 H, 2 W]``."""
    b, _, _, h, w = x.shape
    o = kernel.shape[0] // (4 * halves)
    x = F.pad(x, (1, 1, 1, 1, 0, 0), mode="constant" if mode == "zeros" else mode)
    y = F.conv3d(x, kernel, None if bias is None else bias.repeat(4))  # (B, 4 O, T, H + 1, W + 1)
    t = y.shape[2]
    y = y.view(b, 2, 2, halves, o, t, h + 1, w + 1)
    out = y.new_empty(b, o, halves * t - drop, 2 * h, 2 * w)
    for n in range(halves):
        first = max(0, -(-(drop - n) // halves))  # the first frame of half n that is kept
        start = first * halves + n - drop
        for i in range(2):  # output pixel (2r + i, 2c + j) is phase (i, j) at (r + i, c + j)
            for j in range(2):
                out[:, :, start::halves, i::2, j::2] = y[:, i, j, n, :, first:, i : i + h, j : j + w]
    return out


def phase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """``[O, I, kt, 3, 3] -> [4 O, I, kt, 2, 2]``: the kernels of the four phases (row phase, column phase)."""
    k = _phase_taps(_phase_taps(weight, 3), 5)  # (2 cols, 2 rows, O, I, kt, 2, 2)
    return k.transpose(0, 1).reshape(-1, *k.shape[3:])


class Upsample(nn.Module):
    """Nearest x2 in space; with ``time``, conv channel halves become interleaved frames (T -> 2T - 1).

    The conv sees one replicated frame at each end in time, and zeros (SD 2.1 variant) or replicated
    edge pixels (``spatial="replicate"``, SD3 variant) around each frame. It runs on the frames before
    upsampling (:func:`upsampled_conv`); outside autograd the phase kernel is kept until the weights change.
    """

    def __init__(self, channels: int, time: bool, spatial: str = "zeros") -> None:
        super().__init__()
        self.time = time
        self.conv = nn.Conv3d(channels, channels * (2 if time else 1), 3, padding=(0, 1, 1), padding_mode=spatial)
        # the phase kernel, kept outside autograd; a buffer, so it moves with the module (offloading), not saved
        self.register_buffer("kept_kernel", None, persistent=False)
        self._kept_for = None  # the weight it was made from: (storage, version, dtype, device)

    def _phase_kernel(self) -> torch.Tensor:
        w = self.conv.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return phase_kernel(w)
        key = (w.data_ptr(), None if w.is_inference() else w._version, w.dtype, w.device)
        if self.kept_kernel is None or self._kept_for != key:
            with torch.no_grad():
                self.kept_kernel, self._kept_for = phase_kernel(w), key
        return self.kept_kernel

    def __getstate__(self) -> dict:  # copies (``copy.deepcopy``, ``cvvae.memory.meta_copy``) rebuild the kernel
        return {**self.__dict__, "_buffers": {**self._buffers, "kept_kernel": None}, "_kept_for": None}

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._kept_for = None  # inference tensors have no version counter: a load may keep the storage
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)  # replicate one frame at each end
        halves, drop = (2, 1) if self.time else (1, 0)  # in time, frame 0 of the doubled clip is the padding's
        # (B, C, 2T - 1, 2H, 2W) in time, else (B, C, T, 2H, 2W)
        return upsampled_conv(x, self._phase_kernel(), self.conv.bias, self.conv.padding_mode, halves, drop)


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention; on ``meta`` tensors (memory estimates, ``cvvae.memory``) just its output,
    as the fused kernels it runs on CPU and CUDA hold no score matrix."""
    if q.is_meta:
        return q.new_empty(*q.shape[:-1], v.shape[-1])
    return F.scaled_dot_product_attention(q, k, v)


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W] -> [(B T), C, H, W]``."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, t: int) -> torch.Tensor:
    """``[(B T), C, H, W] -> [B, C, T, H, W]``."""
    bt, c, h, w = x.shape
    return x.reshape(bt // t, t, c, h, w).transpose(1, 2)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (per-frame GroupNorm)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS, affine=True)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch without its residual, ``[B, C, T, H, W]`` in and out."""
        t = x.shape[2]
        h = self.norm(_frames_to_batch(x))  # (BT, C, H, W)
        bt, c, hh, ww = h.shape
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # (BT, HW, C)
        a = attention(q, k, v)
        a = a.transpose(1, 2).reshape(bt, c, hh, ww)
        return _batch_to_frames(self.proj_out(a), t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attend(x)


class SpatialTemporalAttention(SpatialAttention):
    """Spatial attention, then single-head attention over time at every pixel; one residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(channels, groups)
        self.norm_t = nn.LayerNorm(channels, eps=GROUPNORM_EPS)
        self.q_t = nn.Linear(channels, channels)
        self.k_t = nn.Linear(channels, channels)
        self.v_t = nn.Linear(channels, channels)
        self.proj_out_t = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.attend(x)
        b, c, t, h, w = s.shape
        s = s.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # (B H W, T, C)
        y = self.norm_t(s)
        a = attention(self.q_t(y), self.k_t(y), self.v_t(y))
        u = self.proj_out_t(a).reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)  # (B, C, T, H, W)
        return x + u


class FrameAttention(nn.Module):
    """The SD3 variant's attention: single-head self-attention over the pixels of each frame, with
    diffusers' key names (``group_norm``, ``to_q``/``to_k``/``to_v`` and ``to_out.0`` linear layers)."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.group_norm(_frames_to_batch(x)).flatten(2).transpose(1, 2)  # (B T, H W, C)
        a = attention(self.to_q(y), self.to_k(y), self.to_v(y))
        a = self.to_out[0](a).transpose(1, 2).reshape(b * t, c, h, w)
        return x + _batch_to_frames(a, t)


def make_attention(attn_type: str, channels: int, groups: int) -> nn.Module:
    if attn_type in ("vanilla", "vanilla-xformers"):
        return SpatialAttention(channels, groups)
    if attn_type in ("spatial-temporal", "spatial-temporal-xformer"):
        return SpatialTemporalAttention(channels, groups)
    raise ValueError(
        f"unsupported attention type {attn_type!r}: use 'vanilla-xformers' (encoder) or "
        "'spatial-temporal-xformer' (decoder), the released model's types"
    )
