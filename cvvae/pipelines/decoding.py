"""What every generation pipeline shares: checks, the output type, and decoding through a :class:`VideoVAE`.

A pipeline denoises in CV-VAE latent space; :meth:`CVVAEDecodingMixin.decoder` gives the VAE that turns
those latents into frames (``cvvae``: CV-VAE, ``1 + 4 (n - 1)`` frames; ``native``: the backbone's own
VAE, one frame per latent, for comparisons), and :meth:`~CVVAEDecodingMixin.raw_latents` carries the
denoised latents across the one latent boundary (``cvvae.latents``) into that VAE's raw space. Frame and
frame-rate arithmetic come from the VAEs' temporal factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput

from ..errors import InputError
from ..frames import video_frames
from ..model import CVVAEModel
from ..vaes import CVVAE, ImageVAEFrames, VideoVAE, as_video_vae
from .defaults import LIMITS, VAE_CHOICES

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class CVVAEVideoOutput(BaseOutput):
    """``frames`` as ``output_type`` says; ``fps`` the rate they play at; ``conditioning_fps`` the SVD
    UNet's fps id (None without SVD); ``keyframe`` the generated conditioning image (text->image->video)."""

    frames: Any
    fps: float
    conditioning_fps: float | None = None
    keyframe: Any = None


def check_frames_and_size(num_latent_frames: int, height: int, width: int) -> None:
    """InputError for latent counts and sizes outside ``defaults.LIMITS``."""
    r = LIMITS["num_latent_frames"]
    if not _is_int(num_latent_frames) or num_latent_frames not in r:
        raise InputError(
            f"num_latent_frames must be an integer in {r.low:g}..{r.high:g} "
            f"(n latents give 1 + 4(n-1) frames), got {num_latent_frames!r}"
        )
    for name, v in (("height", height), ("width", width)):
        r = LIMITS[name]
        if not _is_int(v) or v not in r or v % r.step:
            raise InputError(f"{name} must be a multiple of {r.step:g} between {r.low:g} and {r.high:g}, got {v!r}")


def check_output_choices(output_type: str, vae: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if vae not in VAE_CHOICES:
        raise InputError(f"vae must be one of {', '.join(VAE_CHOICES)}, got {vae!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def planned_frames(num_latent_frames: int, vae: str = "cvvae") -> int:
    """Frames a generation of ``num_latent_frames`` latents decodes to with ``vae`` (``cvvae``, ``native``),
    known before any model loads (from the VAE classes' temporal factors), for budgets and labels."""
    check_output_choices("latent", vae)
    factor = CVVAEModel.temporal_factor if vae == "cvvae" else ImageVAEFrames.temporal_factor
    return video_frames(num_latent_frames, factor)


def output_fps(fps: float, latent_vae: VideoVAE, decoder: VideoVAE) -> float:
    """The rate ``decoder``'s frames play at when ``fps`` is the rate of ``latent_vae``'s frames (the
    latents run at ``fps / latent_vae.temporal_factor``): ``fps`` for CV-VAE, ``fps / 4`` for one frame
    per latent."""
    return fps * decoder.temporal_factor / latent_vae.temporal_factor


class CVVAEDecodingMixin:
    """The decoding step of a diffusers pipeline that denoised in CV-VAE latent space.

    ``frames_first`` says whether the backbone's latents are ``[B, n, C, h, w]`` (SVD) rather than
    ``[B, C, n, h, w]`` (AnimateDiff); ``vae`` is CV-VAE and ``native_vae`` the backbone's own.
    """

    frames_first = False

    def decoder(self, vae: str = "cvvae", tiling: dict | None = None) -> VideoVAE:
        """The VAE that decodes this pipeline's latents: ``cvvae`` or ``native``; ``tiling`` (changes to the
        model's tiling, from ``cvvae.tiling.tiling_changes``) applies to this decoder only: CV-VAE's windows
        and tiles, or the native VAE's frames per batch (``frames_per_window``)."""
        check_output_choices("latent", vae)
        tiling = tiling or {}
        if vae == "cvvae":  # the VAE of the latent space (CV-VAE; an image VAE in SVD's own world)
            own = as_video_vae(self.vae, "cvvae")
            if isinstance(own, CVVAE):
                own.tiling = tiling or None
            return own
        if getattr(self, "native_vae", None) is None:
            raise InputError("vae='native' needs the backbone's own VAE, which this pipeline was built without")
        native = as_video_vae(self.native_vae, "native")
        if tiling.get("frames_per_window"):
            native.frames_per_batch = tiling["frames_per_window"]
        return native

    def raw_latents(self, denoised: torch.Tensor, decoder: VideoVAE) -> torch.Tensor:
        """Denoised latents -> ``decoder``'s raw latents ``[B, C, n, h, w]`` (images: ``n = 1``)."""
        if denoised.dim() == 4:
            denoised = denoised[:, :, None]  # [B, C, h, w] -> [B, C, 1, h, w]
        elif self.frames_first:
            denoised = denoised.permute(0, 2, 1, 3, 4)  # [B, n, C, h, w] -> [B, C, n, h, w]
        return decoder.place(decoder.from_diffusion(denoised))

    def decode_video(self, latents: torch.Tensor, vae: str = "cvvae", tiling: dict | None = None) -> torch.Tensor:
        """Denoised latents -> float video ``[B, 3, T, H, W]`` in [-1, 1] (``T = 1 + 4 (n - 1)``, or ``n``
        with ``vae="native"``), one clip at a time."""
        decoder = self.decoder(vae, tiling)
        z = self.raw_latents(latents, decoder)
        return torch.cat([decoder.decode(clip[None]) for clip in z]).float()

    def finish(self, denoised: torch.Tensor, output_type: str, vae: str, tiling: dict | None):
        """The frames of ``output_type`` from the denoised latents (decoded unless ``latent``)."""
        if output_type == "latent":
            return denoised
        video = self.decode_video(denoised, vae, tiling)
        frames = self.video_processor.postprocess_video(video=video, output_type=output_type)
        self.maybe_free_model_hooks()
        return frames

    def frame_rate(self, fps: float, vae: str) -> float:
        """The output rate of ``vae``'s frames for an output ``fps`` of CV-VAE's."""
        return output_fps(fps, as_video_vae(self.vae), self.decoder(vae))
