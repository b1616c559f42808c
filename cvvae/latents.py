"""The latent boundary between CV-VAE and a diffusion model: the one place where latents are scaled.

CV-VAE's ``encode``/``decode`` work on raw latents. A diffusion model (SD, SVD, AnimateDiff) works on
``(raw - shift_factor) * scaling_factor``, as it did with its own image VAE (SD 2.1 / SVD: scale
0.18215, no shift). Every pipeline, the fine-tuning objective and the training code cross the boundary
only through these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentScaling:
    scaling_factor: float
    shift_factor: float = 0.0

    @classmethod
    def of(cls, vae_or_config) -> LatentScaling:
        """The scaling of a CV-VAE model, its config, or a dict with ``scaling_factor`` (and ``shift_factor``)."""
        config = getattr(vae_or_config, "config", vae_or_config)
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        return cls(float(get("scaling_factor")), float(get("shift_factor", 0.0) or 0.0))

    def as_dict(self) -> dict:
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}


def to_diffusion(z: torch.Tensor, scaling: LatentScaling) -> torch.Tensor:
    """Raw CV-VAE latents -> the diffusion model's latent space."""
    return (z - scaling.shift_factor) * scaling.scaling_factor


def from_diffusion(z: torch.Tensor, scaling: LatentScaling) -> torch.Tensor:
    """The diffusion model's latents -> raw CV-VAE latents (what ``decode`` takes)."""
    return z / scaling.scaling_factor + scaling.shift_factor
