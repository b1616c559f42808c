"""Image -> video with Stable Video Diffusion in CV-VAE latent space.

The SVD UNet runs unchanged; only the VAE differs:

- the conditioning image is encoded by CV-VAE in single-frame mode (one latent frame), after SVD's
  noise augmentation, and enters the UNet **unscaled**, as SVD was trained (diffusers does the same);
- ``num_latent_frames`` latents are denoised in the UNet's scaled space and divided by
  ``vae.config.scaling_factor`` exactly once before CV-VAE decodes them into ``1 + 4 (n - 1)`` frames.

Frame rate rule: the user sets the *output* fps of the decoded video. Each latent frame stands
for 4 video frames, so the latents run at ``fps / 4``; SVD conditions on its frame rate minus one,
hence the UNet's fps conditioning is ``max(round(fps / 4), 1) - 1`` (``conditioning_fps`` overrides
that value directly). With ``vae="native"`` the same latents are decoded by SVD's own temporal
decoder, one frame per latent, which plays at ``fps / 4`` for the same duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableVideoDiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.video_processor import VideoProcessor

from ..errors import InputError
from ..model import video_frames

TEMPORAL_FACTOR = 4  # video frames per latent frame
MAX_LATENT_FRAMES = 64  # 253 video frames; more is almost surely a typo
SIZE_MULTIPLE = 64
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
VAE_CHOICES = ("cvvae", "native")


def fps_conditioning(output_fps: float, override: int | None = None) -> int:
    """The fps value the SVD UNet is conditioned on for a video played at ``output_fps``."""
    if override is not None:
        if override < 0:
            raise InputError(f"conditioning_fps must be >= 0, got {override}")
        return int(override)
    if not output_fps or output_fps <= 0:
        raise InputError(f"fps must be positive, got {output_fps}")
    return max(round(output_fps / TEMPORAL_FACTOR), 1) - 1


def check_frames_and_size(num_latent_frames: int, height: int, width: int) -> None:
    """InputError for latent counts outside 2..MAX_LATENT_FRAMES and sizes not multiples of 64."""
    if not isinstance(num_latent_frames, int) or not 2 <= num_latent_frames <= MAX_LATENT_FRAMES:
        raise InputError(
            f"num_latent_frames must be an integer in 2..{MAX_LATENT_FRAMES} "
            f"(n latents give 1 + 4(n-1) frames), got {num_latent_frames!r}"
        )
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v < SIZE_MULTIPLE or v % SIZE_MULTIPLE or v > 4096:
            raise InputError(f"{name} must be a multiple of {SIZE_MULTIPLE} between 64 and 4096, got {v!r}")


@dataclass
class CVVAEVideoOutput(BaseOutput):
    """``frames`` as ``output_type`` says; ``fps`` the rate they play at; ``conditioning_fps`` the UNet's."""

    frames: Any
    fps: float
    conditioning_fps: int


class CVVAEVideoPipeline(StableVideoDiffusionPipeline):
    """diffusers' SVD pipeline with CV-VAE as ``vae`` and SVD's own VAE as the optional ``native_vae``."""

    model_cpu_offload_seq = "image_encoder->unet->vae->native_vae"
    _optional_components = ["native_vae"]

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, native_vae=None):
        DiffusionPipeline.__init__(self)
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            native_vae=native_vae,
        )
        self.vae_scale_factor = vae.config.spatial_n_compress
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.vae_scale_factor)
        self._decode_with = "cvvae"
        self._tiling: dict = {}

    # ----------------------------------------------------------------------------- VAE boundary

    def _encode_vae_image(self, image, device, num_videos_per_prompt, do_classifier_free_guidance):
        """CV-VAE single-frame encode: [B, 3, H, W] -> raw (unscaled) mode latents [B, 4, H/8, W/8]."""
        image = image.to(device=device, dtype=self.vae.dtype)
        latents = self.vae.encode(image).latent_dist.mode()[:, :, 0]  # [B, 4, 1, h, w] -> [B, 4, h, w]
        latents = latents.repeat(num_videos_per_prompt, 1, 1, 1)
        if do_classifier_free_guidance:
            latents = torch.cat([torch.zeros_like(latents), latents])
        return latents

    def decode_latents(self, latents: torch.Tensor, num_frames: int, decode_chunk_size: int = 14):
        """UNet latents [B, n, 4, h, w] -> float video [B, 3, T, H, W] in [-1, 1] (scaling undone once)."""
        if self._decode_with == "native":
            return self._decode_native(latents)
        z = latents.permute(0, 2, 1, 3, 4) / self.vae.config.scaling_factor  # [B, n, 4, h, w] -> [B, 4, n, h, w]
        return decode_cvvae(self.vae, z, self._tiling)

    def _decode_native(self, latents: torch.Tensor) -> torch.Tensor:
        """SVD's temporal decoder, one frame per latent: [B, n, 4, h, w] -> [B, 3, n, H, W]."""
        if self.native_vae is None:
            raise InputError("vae='native' needs the backbone's own VAE, which this pipeline was built without")
        b, n = latents.shape[:2]
        z = latents.flatten(0, 1) / self.native_vae.config.scaling_factor  # [(B n), 4, h, w]
        z = z.to(self.native_vae.dtype)
        chunk = self._tiling.get("frames_per_window") or n
        pieces = [z[i : i + chunk] for i in range(0, len(z), chunk)]
        out = [self.native_vae.decode(p, num_frames=len(p)).sample for p in pieces]
        video = torch.cat(out).reshape(b, n, *out[0].shape[1:])  # [(B n), 3, H, W] -> [B, n, 3, H, W]
        return video.permute(0, 2, 1, 3, 4).float()

    # ----------------------------------------------------------------------------- call

    def output_fps(self, fps: float, vae: str) -> float:
        """The rate the decoded frames play at: ``fps`` for CV-VAE, ``fps / 4`` for the native VAE."""
        return fps if vae == "cvvae" else fps / TEMPORAL_FACTOR

    def check_call(self, image, num_latent_frames, height, width, output_type, vae) -> None:
        if image is None:
            raise InputError("image-to-video needs a conditioning image")
        check_frames_and_size(num_latent_frames, height, width)
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if vae not in VAE_CHOICES:
            raise InputError(f"vae must be 'cvvae' or 'native', got {vae!r}")

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_latent_frames: int = 25,
        height: int = 576,
        width: int = 1024,
        num_inference_steps: int = 25,
        fps: float = 28.0,
        conditioning_fps: int | None = None,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vae: str = "cvvae",
        decode_frames_per_window: int | None = None,
        decode_tile_size: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ):
        """Generate ``1 + 4 (n - 1)`` frames (``n`` with ``vae="native"``) from one image.

        Steps: 1. check inputs, 2. fps conditioning, 3. decode settings, 4. SVD's own sampling
        (CLIP embedding, noise-augmented CV-VAE image latent, Euler loop with per-frame guidance),
        whose decode goes through :meth:`decode_latents`.
        """
        self.check_call(image, num_latent_frames, height, width, output_type, vae)  # 1
        cond_fps = fps_conditioning(fps, conditioning_fps)  # 2
        self._decode_with = vae  # 3
        self._tiling = {
            k: v for k, v in (("frames_per_window", decode_frames_per_window), ("tile_size", decode_tile_size)) if v
        }
        frames = super().__call__(  # 4 (diffusers subtracts 1 from fps: pass cond_fps + 1)
            image,
            height=height,
            width=width,
            num_frames=num_latent_frames,
            num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale,
            max_guidance_scale=max_guidance_scale,
            fps=cond_fps + 1,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            generator=generator,
            latents=latents,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            return_dict=False,
        )
        out = CVVAEVideoOutput(frames=frames, fps=self.output_fps(fps, vae), conditioning_fps=cond_fps)
        return out if return_dict else (frames,)


def decode_cvvae(vae, z: torch.Tensor, tiling: dict) -> torch.Tensor:
    """Raw latents [B, 4, n, h, w] -> float video [B, 3, 1 + 4 (n - 1), H, W]; ``tiling`` overrides
    ``frames_per_window`` / ``tile_size`` for this call only."""
    saved = vae.tiling
    try:
        if tiling:
            names = ("frames_per_window", "tile_size", "overlap", "temporal_overlap", "norm")
            current = {k: getattr(saved, k) for k in names}
            if "frames_per_window" in tiling:
                current["temporal_overlap"] = None  # re-derived for the new window
            try:
                vae.enable_tiling(**{**current, **tiling})
            except ValueError as err:
                raise InputError(f"invalid decode tiling: {err}") from err
        return vae.decode(z.to(vae.dtype)).sample.float()
    finally:
        vae.tiling = saved


def expected_frames(num_latent_frames: int, vae: str = "cvvae") -> int:
    """Frames a pipeline returns for ``num_latent_frames`` latents."""
    return video_frames(num_latent_frames) if vae == "cvvae" else num_latent_frames
