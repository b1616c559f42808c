"""What every generation pipeline shares: checks, the output type, and decoding with either VAE.

- :func:`decode_cvvae`: the diffusion model's latents -> raw latents (the one latent boundary,
  ``cvvae.latents``) -> CV-VAE video, ``1 + 4 (n - 1)`` frames.
- :func:`decode_native`: the backbone's own VAE (SD's image VAE or SVD's temporal decoder), one frame
  per latent, for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder
from diffusers.utils import BaseOutput

from ..errors import InputError
from ..latents import LatentScaling, from_diffusion
from ..model import video_frames
from ..tiling import tiling_changes

MAX_LATENT_FRAMES = 64  # 253 video frames; more is almost surely a typo
SIZE_MULTIPLE = 64
MAX_SIZE = 4096
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
VAE_CHOICES = ("cvvae", "native")


@dataclass
class CVVAEVideoOutput(BaseOutput):
    """``frames`` as ``output_type`` says; ``fps`` the rate they play at; ``conditioning_fps`` the SVD
    UNet's fps id (None without SVD); ``keyframe`` the generated conditioning image (text->image->video)."""

    frames: Any
    fps: float
    conditioning_fps: float | None = None
    keyframe: Any = None


def check_frames_and_size(num_latent_frames: int, height: int, width: int) -> None:
    """InputError for latent counts outside 2..MAX_LATENT_FRAMES and sizes not multiples of 64."""
    if not _is_int(num_latent_frames) or not 2 <= num_latent_frames <= MAX_LATENT_FRAMES:
        raise InputError(
            f"num_latent_frames must be an integer in 2..{MAX_LATENT_FRAMES} "
            f"(n latents give 1 + 4(n-1) frames), got {num_latent_frames!r}"
        )
    for name, v in (("height", height), ("width", width)):
        if not _is_int(v) or v < SIZE_MULTIPLE or v % SIZE_MULTIPLE or v > MAX_SIZE:
            raise InputError(f"{name} must be a multiple of {SIZE_MULTIPLE} between 64 and {MAX_SIZE}, got {v!r}")


def check_output_choices(output_type: str, vae: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if vae not in VAE_CHOICES:
        raise InputError(f"vae must be 'cvvae' or 'native', got {vae!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def expected_frames(num_latent_frames: int, vae: str = "cvvae") -> int:
    """Frames a pipeline returns for ``num_latent_frames`` latents."""
    return video_frames(num_latent_frames) if vae == "cvvae" else num_latent_frames


def output_fps(fps: float, vae: str) -> float:
    """The rate decoded frames play at: ``fps`` for CV-VAE, ``fps / 4`` for one frame per latent."""
    return fps if vae == "cvvae" else fps / 4


def decode_cvvae(vae, latents: torch.Tensor, tiling: str | None = None) -> torch.Tensor:
    """Diffusion latents ``[B, C, n, h, w]`` -> float video ``[B, 3, 1 + 4 (n - 1), H, W]`` in [-1, 1].

    ``tiling`` is a tiling choice for this call only (``cvvae.tiling.tiling_changes``); the shared
    model is not modified.
    """
    z = from_diffusion(latents, LatentScaling.of(vae))
    return vae.decode(z.to(device=vae.device, dtype=vae.dtype), tiling=tiling_changes(tiling)).sample.float()


def decode_native(native_vae, latents: torch.Tensor, tiling: str | None = None) -> torch.Tensor:
    """Diffusion latents ``[B, C, n, h, w]`` -> ``[B, 3, n, H, W]`` with the backbone's own VAE, one frame per latent.

    A tiling choice of ``N`` frames decodes ``N`` latents (= ``N`` frames here) at a time.
    """
    if native_vae is None:
        raise InputError("vae='native' needs the backbone's own VAE, which this pipeline was built without")
    z = latents.permute(0, 2, 1, 3, 4) / native_vae.config.scaling_factor  # [B, n, C, h, w]
    z = z.to(device=native_vae.device, dtype=native_vae.dtype)
    chunk = tiling_changes(tiling).get("frames_per_window") or z.shape[1]
    temporal = isinstance(native_vae, AutoencoderKLTemporalDecoder)  # SVD's decoder needs the clip length
    clips = []
    for clip in z:  # [n, C, h, w]: one video at a time, so chunks never mix videos
        pieces = []
        for part in clip.split(chunk):
            kwargs = {"num_frames": len(part)} if temporal else {}
            pieces.append(native_vae.decode(part, **kwargs).sample)
        clips.append(torch.cat(pieces))  # [n, 3, H, W]
    return torch.stack(clips).permute(0, 2, 1, 3, 4).float()  # [B, n, 3, H, W] -> [B, 3, n, H, W]


class CVVAEDecodingMixin:
    """The decoding step of a diffusers pipeline that denoised in CV-VAE latent space.

    ``frames_first`` says whether the backbone's latents are ``[B, n, C, h, w]`` (SVD) rather than
    ``[B, C, n, h, w]`` (AnimateDiff); ``vae`` is CV-VAE and ``native_vae`` the backbone's own.
    """

    frames_first = False

    def decode_video(self, latents: torch.Tensor, vae: str = "cvvae", tiling: str | None = None) -> torch.Tensor:
        """Denoised latents -> float video ``[B, 3, T, H, W]`` in [-1, 1] (``T = 1 + 4 (n - 1)``, or ``n``
        with ``vae="native"``); ``tiling`` is a tiling choice for this call (``cvvae.tiling.tiling_changes``)."""
        if self.frames_first:
            latents = latents.permute(0, 2, 1, 3, 4)  # [B, n, C, h, w] -> [B, C, n, h, w]
        if vae == "native":
            return decode_native(self.native_vae, latents, tiling)
        return decode_cvvae(self.vae, latents, tiling)

    def finish(self, denoised: torch.Tensor, output_type: str, vae: str, tiling: str | None):
        """The frames of ``output_type`` from the denoised latents (decoded unless ``latent``)."""
        if output_type == "latent":
            return denoised
        video = self.decode_video(denoised, vae, tiling)
        frames = self.video_processor.postprocess_video(video=video, output_type=output_type)
        self.maybe_free_model_hooks()
        return frames
