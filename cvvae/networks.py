"""CV-VAE encoder and decoder stacks, built from ``cvvae.blocks`` with the released key layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, ResBlock, Upsample, group_norm, make_attention, make_conv, silu_fresh, temporal_reach


class _Mid(nn.Module):
    def __init__(self, channels: int, conv_kind: str, second_kind: str, groups: int, dropout: float, attn: str):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, conv_kind, second_kind, groups, dropout)
        self.attn_1 = make_attention(attn, channels, groups)
        self.block_2 = ResBlock(channels, channels, conv_kind, second_kind, groups, dropout)


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks) and an optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Stack(nn.Module):
    """Shared gradient-checkpointing plumbing (diffusers sets ``gradient_checkpointing``)."""

    gradient_checkpointing = False

    def run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, x)
        return module(x)


def _kinds(use_3d_conv: bool, half_3d: bool, causal: bool) -> tuple[str, str]:
    first = ("causal" if causal else "plain") if use_3d_conv else "frame"
    return first, ("frame" if half_3d else first)


class Encoder(_Stack):
    """``[B, 3, T, H, W] -> [B, 2 z, 1 + (T - 1) // 4, H / 8, W / 8]`` moments (mean | logvar)."""

    def __init__(
        self,
        in_channels: int,
        z_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        groups: int,
        dropout: float = 0.0,
        double_z: bool = True,
        use_3d_conv: bool = True,
        half_3d: bool = True,
        causal: bool = True,
        attn_type: str = "vanilla-xformers",
    ) -> None:
        super().__init__()
        kind, second = _kinds(use_3d_conv, half_3d, causal)
        levels = len(ch_mult)
        self.conv_in = make_conv(kind, in_channels, ch, 3)
        self.down = nn.ModuleList()
        cin = ch
        for i, mult in enumerate(ch_mult):
            cout = ch * mult
            level = _Level(
                [ResBlock(cin if j == 0 else cout, cout, kind, second, groups, dropout) for j in range(num_res_blocks)]
            )
            if i < levels - 1:
                level.downsample = Downsample(cout, time=i % 2 == 0)
            self.down.append(level)
            cin = cout
        self.mid = _Mid(cin, kind, second, groups, dropout, attn_type)
        self.norm_out = group_norm(cin, groups)
        self.conv_out = make_conv(kind, cin, 2 * z_channels if double_z else z_channels, 3)

    def high(self, x: torch.Tensor) -> torch.Tensor:
        """The full-resolution stages (local in space, causal in time): ``[B, 3, T, H, W] -> [B, C, n, h, w]``."""
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = self.run(block, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return h

    def high_steps(self) -> list:
        """``high`` as steps paused at each GroupNorm (see ``ResBlock.steps``)."""
        steps = [_apply(self.conv_in)]
        for level in self.down:
            for block in level.block:
                steps += block.steps()
            if hasattr(level, "downsample"):
                steps.append(_apply(level.downsample))
        return steps

    def low(self, h: torch.Tensor) -> torch.Tensor:
        """The latent-resolution stages (the mid block's attention is global in space): features -> moments."""
        h = self.run(self.mid.block_1, h)
        h = self.run(self.mid.attn_1, h)
        h = self.run(self.mid.block_2, h)
        return self.conv_out(silu_fresh(self.norm_out(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low(self.high(x))


class Decoder(_Stack):
    """``[B, z, n, h, w] -> [B, 3, 1 + 4 (n - 1), 8 h, 8 w]``."""

    def __init__(
        self,
        out_ch: int,
        z_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        groups: int,
        dropout: float = 0.0,
        use_3d_conv: bool = True,
        half_3d: bool = True,
        causal: bool = False,
        attn_type: str = "spatial-temporal-xformer",
    ) -> None:
        super().__init__()
        kind, second = _kinds(use_3d_conv, half_3d, causal)
        levels = len(ch_mult)
        cin = ch * ch_mult[-1]
        self.conv_in = make_conv(kind, z_channels, cin, 3)
        self.mid = _Mid(cin, kind, second, groups, dropout, attn_type)
        up = []
        for i in reversed(range(levels)):
            cout = ch * ch_mult[i]
            level = _Level(
                [
                    ResBlock(cin if j == 0 else cout, cout, kind, second, groups, dropout)
                    for j in range(num_res_blocks + 1)
                ]
            )
            if i != 0:
                level.upsample = Upsample(cout, time=i % 2 == 1)
            up.insert(0, level)
            cin = cout
        self.up = nn.ModuleList(up)  # indexed by level (0 = full resolution), run from the last
        self.norm_out = group_norm(cin, groups)
        self.conv_out = make_conv(kind, cin, out_ch, 3)

    def low(self, z: torch.Tensor) -> torch.Tensor:
        """The latent-resolution stages (the mid block's attention is global in space and time)."""
        h = self.conv_in(z)
        h = self.run(self.mid.block_1, h)
        h = self.run(self.mid.attn_1, h)
        return self.run(self.mid.block_2, h)

    def high(self, h: torch.Tensor) -> torch.Tensor:
        """The upsampling stages (local in space and time): ``[B, C, n, h, w] -> [B, 3, 1 + 4 (n - 1), 8h, 8w]``."""
        for level in reversed(self.up):
            for block in level.block:
                h = self.run(block, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(silu_fresh(self.norm_out(h)))

    def high_steps(self) -> list:
        """``high`` as steps paused at each GroupNorm (see ``ResBlock.steps``)."""
        steps = []
        for level in reversed(self.up):
            for block in level.block:
                steps += block.steps()
            if hasattr(level, "upsample"):
                steps.append(_apply(level.upsample))
        return [*steps, self.norm_out, _apply(lambda h: self.conv_out(F.silu(h)), temporal_reach(self.conv_out))]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.high(self.low(z))


def _apply(fn, reach: int | None = None):
    """A step that replaces a box's ``h`` by ``fn(h)``; ``reach``: frames of context it needs on each side
    in time (default: the layer's), ``up``: frames out per frame in (2 for a temporal upsampler)."""

    def step(state: dict) -> None:
        state["h"] = fn(state["h"])

    step.reach = temporal_reach(fn) if reach is None else reach
    step.up = 2 if isinstance(fn, Upsample) and fn.time else 1
    return step
