"""SVD's conditioning, defined once for generation and fine-tuning alike.

The fine-tuning objective (``finetune.objective``) builds its conditioning with these functions, and
:class:`~cvvae.pipelines.svd.CVVAEVideoPipeline` routes diffusers' SVD sampling through them, so a
fine-tuned UNet sees at inference exactly what it saw in training:

- the CLIP image embedding of the conditioning frame (:func:`clip_image_embeds`);
- the image latent: the conditioning frame *in pixels* plus ``noise_aug_strength`` times Gaussian
  noise, encoded by CV-VAE as one latent frame, posterior mode, raw (unscaled), as SVD was trained
  (:func:`augment_image`, :func:`image_latent`);
- the added time ids ``[fps id, motion bucket, noise_aug_strength]`` (:func:`fps_id`, :func:`time_ids`).
"""

from __future__ import annotations

import torch

from ..errors import InputError

CLIP_SIZE = 224


def fps_id(output_fps: float, temporal_factor: int) -> float:
    """The frame-rate id the SVD UNet is conditioned on, for a video played at ``output_fps`` whose VAE
    decodes each latent frame into ``temporal_factor`` frames (CV-VAE: 4, ``config.time_n_compress``).

    SVD was trained with ``fps - 1`` of its own frames. The latents run at ``output_fps / temporal_factor``:
    the id is that minus 1 (a float, as the UNet's time embedding accepts), floored at 0. For CV-VAE, 28 fps
    gives 6, SVD's default.
    """
    if not isinstance(output_fps, (int, float)) or not output_fps > 0 or output_fps != output_fps:
        raise InputError(f"fps must be a positive number, got {output_fps!r}")
    return max(float(output_fps) / temporal_factor - 1.0, 0.0)


def time_ids(fps: float | torch.Tensor, motion_bucket_id: float | torch.Tensor, noise_aug: torch.Tensor):
    """``[B, 3]`` added time ids (fps id, motion bucket, noise augmentation strength)."""
    noise_aug = torch.as_tensor(noise_aug, dtype=torch.float32).reshape(-1)
    b = noise_aug.shape[0]

    def column(v):
        return torch.as_tensor(v, dtype=torch.float32).reshape(-1).expand(b)

    return torch.stack([column(fps), column(motion_bucket_id), noise_aug], dim=1)


def augment_image(pixels: torch.Tensor, strength: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SVD's noise augmentation, in pixels: ``pixels + strength * noise`` (``strength`` per sample or one)."""
    strength = torch.as_tensor(strength, dtype=pixels.dtype, device=pixels.device)
    if strength.dim() == 1:
        strength = strength.view(-1, *([1] * (pixels.dim() - 1)))
    return pixels + strength * noise


def image_latent(vae, pixels: torch.Tensor) -> torch.Tensor:
    """CV-VAE encoding of images ``[B, 3, H, W]`` in [-1, 1]: raw mode latents ``[B, C, H/8, W/8]``."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    latent = vae.encode(pixels).latent_dist.mode()
    return latent[:, :, 0] if latent.dim() == 5 else latent  # [B, C, 1, h, w] -> [B, C, h, w]


def clip_pixels(pixels: torch.Tensor, feature_extractor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> CLIP input ``[B, 3, 224, 224]`` (antialiased resize, CLIP norm)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    x = (_resize_with_antialiasing(pixels.float(), (CLIP_SIZE, CLIP_SIZE)) + 1.0) / 2.0
    return feature_extractor(
        images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt"
    ).pixel_values


def clip_image_embeds(image_encoder, feature_extractor, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP image embeddings ``[B, 1, D]`` of images ``[B, 3, H, W]`` in [-1, 1]."""
    param = next(image_encoder.parameters())
    x = clip_pixels(pixels, feature_extractor).to(device=param.device, dtype=param.dtype)
    return image_encoder(x).image_embeds.unsqueeze(1)
