"""SVD's EDM training objective, written to match diffusers' ``EulerDiscreteScheduler`` as SVD configures it.

With ``prediction_type="v_prediction"`` and ``timestep_type="continuous"`` the scheduler feeds the UNet
``c_in * x`` (``scale_model_input``) and the timestep ``0.25 * ln(sigma)``, and turns the UNet output ``F``
into the clean sample as ``c_out * F + c_skip * x`` (``step``). Training samples ``ln(sigma)`` from a normal
distribution (``p_mean``, ``p_std``) and weights the squared error of that clean sample by
``(sigma^2 + 1) / sigma^2``, as the usual SVD fine-tuning scripts do.

Conditioning is built by ``cvvae.pipelines.conditioning``, the functions generation uses: the cached first
frame gets noise in pixels and is encoded by CV-VAE, and the latents cross the boundary through
``cvvae.latents`` with the cached model's scaling.
"""

from __future__ import annotations

import numpy as np
import torch

from cvvae.latents import LatentScaling, to_diffusion
from cvvae.pipelines import conditioning

from .config import AdapterTrainConfig


def precondition(sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """EDM coefficients for v-prediction (sigma broadcastable to the latents)."""
    var = sigma**2 + 1
    return {
        "c_in": var.rsqrt(),
        "c_skip": 1 / var,
        "c_out": -sigma * var.rsqrt(),
        "c_noise": 0.25 * sigma.log(),
        "weight": var / sigma**2,
    }


def conditioning_latent(vae, cond_pixels: torch.Tensor, strength: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The image latent ``[B, C, h, w]`` of uint8 first frames ``[B, 3, H, W]``, as generation builds it
    (``vae``: a :class:`cvvae.vaes.VideoVAE`)."""
    pixels = cond_pixels.float() / 127.5 - 1.0  # uint8 -> [-1, 1]
    with torch.no_grad():
        return conditioning.image_latent(vae.module, conditioning.augment_image(pixels, strength, noise)).float()


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The random draws of one training sample: a function of the run's seed and the sample's global index
    only, so they do not depend on how samples are split over processes and batches, or on interruptions."""
    value = int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


def edm_loss(
    unet, vae, batch: dict, cfg: AdapterTrainConfig, scaling: LatentScaling, generators: list[torch.Generator]
) -> torch.Tensor:
    """One EDM loss on a batch of cached clips; sample ``i`` draws all its randomness from ``generators[i]``."""
    mean, logvar = batch["latents_mean"], batch["latents_logvar"]  # [B, C, n, h, w], raw
    device, b = mean.device, mean.shape[0]

    def draw(fn) -> torch.Tensor:
        """One draw per sample, from its own generator, stacked: [B, ...]."""
        return torch.stack([fn(g) for g in generators]).to(device)

    def randn(shape):
        return draw(lambda g: torch.randn(shape, generator=g))

    latents = to_diffusion(mean + (0.5 * logvar).exp() * randn(mean.shape[1:]), scaling)
    latents = latents.permute(0, 2, 1, 3, 4)  # [B, C, n, h, w] -> [B, n, C, h, w] (SVD UNet layout)
    sigma = (cfg.p_mean + cfg.p_std * randn(())).exp()  # [B]
    pre = {k: v.view(b, 1, 1, 1, 1) for k, v in precondition(sigma).items()}
    noisy = latents + sigma.view(b, 1, 1, 1, 1) * randn(latents.shape[1:])

    # conditioning: the noise-augmented first frame encoded by CV-VAE (unscaled) and its CLIP embedding
    aug = (cfg.noise_aug_mean + cfg.noise_aug_std * randn(())).exp() if cfg.noise_aug_std > 0 else randn(()) * 0
    cond = conditioning_latent(vae, batch["cond_pixels"], aug, randn(batch["cond_pixels"].shape[1:]))  # [B, C, h, w]
    embeds = batch["image_embeds"]  # [B, 1, D]
    keep = (draw(lambda g: torch.rand((), generator=g)) >= cfg.conditioning_dropout).float()
    cond, embeds = cond * keep.view(b, 1, 1, 1), embeds * keep.view(b, 1, 1)  # CFG: zeros = unconditional
    cond = cond.unsqueeze(1).expand(-1, latents.shape[1], -1, -1, -1)  # [B, C, h, w] -> [B, n, C, h, w]

    fps = torch.tensor([conditioning.fps_id(float(f), vae.temporal_factor) for f in batch["fps"]])
    ids = conditioning.time_ids(fps, cfg.motion_bucket_id, aug.cpu()).to(device)  # [B, 3]
    inp = torch.cat([pre["c_in"] * noisy, cond.to(noisy.dtype)], dim=2)  # [B, n, 2C, h, w]
    pred = unet(inp, pre["c_noise"].flatten(), encoder_hidden_states=embeds, added_time_ids=ids).sample
    denoised = pre["c_out"] * pred.float() + pre["c_skip"] * noisy
    return (pre["weight"] * (denoised - latents) ** 2).mean()
