"""A 3-D PatchGAN discriminator for clips and images (``[B, 3, T, H, W]``, T >= 1).

Conv3d stacks with stride 2 in space (and in time while T > 1), GroupNorm and LeakyReLU; unlike
the release there are no unused parameters (no ``temb_proj``), so DDP needs no
``find_unused_parameters``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """Outputs patch logits ``[B, 1, T', H', W']``."""

    def __init__(self, channels: int = 64, layers: int = 3, groups: int = 8) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        cin = 3
        for i in range(layers):
            cout = channels * min(2**i, 8)
            self.convs.append(nn.Conv3d(cin, cout, 3, padding=1))
            self.norms.append(nn.GroupNorm(min(groups, cout), cout) if i else nn.Identity())
            cin = cout
        self.out = nn.Conv3d(cin, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.leaky_relu(norm(conv(x)), 0.2)
            # stride 2 in space, and in time while there is time to halve (first frame kept)
            kt = 2 if x.shape[2] > 1 else 1
            if kt == 2 and x.shape[2] % 2:
                x = torch.cat([x[:, :, :1], x], dim=2)  # odd T: repeat frame 0 so pairs line up
            x = F.avg_pool3d(x, (kt, 2, 2))
        return self.out(x)
