"""Encoder and decoder of the SD3-compatible CV-VAE (16 latent channels), with the released key layout.

The layers are ``cvvae.blocks``' (shared with the SD 2.1 variant); what differs is configuration and
names (diffusers' ``AutoencoderKL`` layout: ``down_blocks.{i}.resnets.{j}``, ``mid_block.attentions.0``,
``conv_norm_out`` ...): GroupNorm eps 1e-6, edge pixels replicated (not zeros) around 3-D convs, the
decoder's 3-D convs replicate frames in time too, per-frame 2-D ``conv_shortcut``, samplers that are
causal convs with symmetric replicated padding, and per-frame spatial attention in both networks.
Both expose the same stages as the SD 2.1 networks (``high``/``low``/``high_steps``), so tiling,
streaming and lockstep statistics work the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import CausalConv3d, FrameAttention, ResBlock, Upsample, group_norm, make_conv, silu_fresh, temporal_reach
from .networks import _apply, _Stack

EPS = 1e-6


class _Block(nn.Module):
    """``resnets`` and an optional ``downsamplers``/``upsamplers`` (a one-element list, as diffusers names them)."""

    def __init__(self, resnets: list[nn.Module], sampler: nn.Module | None, name: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if sampler is not None:
            setattr(self, name, nn.ModuleList([sampler]))


class _MidBlock(nn.Module):
    def __init__(self, channels: int, kind: str, groups: int, dropout: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(channels, channels, kind, groups, dropout) for _ in range(2)])
        self.attentions = nn.ModuleList([FrameAttention(channels, groups, EPS)])


class _Downsampler(nn.Module):
    """A causal 3-D conv with stride 2 in space (and time), edge pixels replicated on every side."""

    def __init__(self, channels: int, time: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, spatial="replicate", stride=(2 if time else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _resnet(cin: int, cout: int, kind: str, groups: int, dropout: float) -> ResBlock:
    return ResBlock(cin, cout, kind, "frame", groups, dropout, eps=EPS, shortcut="conv_shortcut")


class EncoderSD3(_Stack):
    """``[B, 3, T, H, W] -> [B, 2 z, 1 + (T - 1) // 4, H / 8, W / 8]`` moments (mean | logvar)."""

    def __init__(
        self, in_channels: int, latent_channels: int, widths: Sequence[int], layers: int, groups: int, dropout=0.0
    ) -> None:
        super().__init__()
        kind = "causal-replicate"
        self.conv_in = make_conv(kind, in_channels, widths[0], 3)
        self.down_blocks = nn.ModuleList()
        cin = widths[0]
        for i, cout in enumerate(widths):
            last = i == len(widths) - 1
            resnets = [_resnet(cin if j == 0 else cout, cout, kind, groups, dropout) for j in range(layers)]
            sampler = None if last else _Downsampler(cout, time=i % 2 == 0)
            self.down_blocks.append(_Block(resnets, sampler, "downsamplers"))
            cin = cout
        self.mid_block = _MidBlock(cin, kind, groups, dropout)
        self.conv_norm_out = group_norm(cin, groups, EPS)
        self.conv_out = make_conv(kind, cin, 2 * latent_channels, 3)

    def high(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            for resnet in block.resnets:
                h = self.run(resnet, h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
        return h

    def high_steps(self) -> list:
        steps = [_apply(self.conv_in)]
        for block in self.down_blocks:
            for resnet in block.resnets:
                steps += resnet.steps()
            if hasattr(block, "downsamplers"):
                steps.append(_apply(block.downsamplers[0]))
        return steps

    def low(self, h: torch.Tensor) -> torch.Tensor:
        h = self.run(self.mid_block.resnets[0], h)
        h = self.run(self.mid_block.attentions[0], h)
        h = self.run(self.mid_block.resnets[1], h)
        return self.conv_out(silu_fresh(self.conv_norm_out(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low(self.high(x))


class DecoderSD3(_Stack):
    """``[B, z, n, h, w] -> [B, 3, 1 + 4 (n - 1), 8 h, 8 w]``; ``up_blocks`` run in order (0 = lowest resolution)."""

    def __init__(
        self, out_channels: int, latent_channels: int, widths: Sequence[int], layers: int, groups: int, dropout=0.0
    ) -> None:
        super().__init__()
        kind = "plain-replicate"
        widths = list(reversed(widths))
        self.conv_in = make_conv(kind, latent_channels, widths[0], 3)
        self.mid_block = _MidBlock(widths[0], kind, groups, dropout)
        self.up_blocks = nn.ModuleList()
        cin = widths[0]
        for i, cout in enumerate(widths):
            last = i == len(widths) - 1
            resnets = [_resnet(cin if j == 0 else cout, cout, kind, groups, dropout) for j in range(layers + 1)]
            sampler = None if last else Upsample(cout, time=i % 2 == 0, spatial="replicate")
            self.up_blocks.append(_Block(resnets, sampler, "upsamplers"))
            cin = cout
        self.conv_norm_out = group_norm(cin, groups, EPS)
        self.conv_out = make_conv(kind, cin, out_channels, 3)

    def low(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.run(self.mid_block.resnets[0], h)
        h = self.run(self.mid_block.attentions[0], h)
        return self.run(self.mid_block.resnets[1], h)

    def high(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.up_blocks:
            for resnet in block.resnets:
                h = self.run(resnet, h)
            if hasattr(block, "upsamplers"):
                h = block.upsamplers[0](h)
        return self.conv_out(silu_fresh(self.conv_norm_out(h)))

    def high_steps(self) -> list:
        steps = []
        for block in self.up_blocks:
            for resnet in block.resnets:
                steps += resnet.steps()
            if hasattr(block, "upsamplers"):
                steps.append(_apply(block.upsamplers[0]))
        out = _apply(lambda h: self.conv_out(F.silu(h)), temporal_reach(self.conv_out))
        return [*steps, self.conv_norm_out, out]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.high(self.low(z))
