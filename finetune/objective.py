"""SVD's EDM training objective, written to match diffusers' ``EulerDiscreteScheduler`` as SVD configures it.

With ``prediction_type="v_prediction"`` and ``timestep_type="continuous"`` the scheduler feeds the UNet
``c_in * x`` (``scale_model_input``) and the timestep ``0.25 * ln(sigma)``, and turns the UNet output ``F``
into the clean sample as ``c_out * F + c_skip * x`` (``step``). Training samples ``ln(sigma)`` from a normal
distribution (``p_mean``, ``p_std``) and weights the squared error of that clean sample by
``(sigma^2 + 1) / sigma^2``, as the usual SVD fine-tuning scripts do.
"""

from __future__ import annotations

import torch

from .config import TrainConfig

SCALING_FACTOR = 0.18215  # SD / SVD latent scaling, applied at the UNet boundary only


def unet_fps_id(video_fps: torch.Tensor) -> torch.Tensor:
    """The UNet fps conditioning of clips at ``video_fps``: the pipelines' rule, as at generation."""
    from cvvae.pipelines.svd import fps_conditioning

    return torch.tensor([float(fps_conditioning(float(f))) for f in video_fps])


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


def edm_loss(unet, batch: dict, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """One EDM loss on a batch of cached clips; all randomness comes from ``generator`` (on the CPU)."""
    mean, logvar = batch["latents_mean"], batch["latents_logvar"]  # [B, 4, n, h, w]
    device, b = mean.device, mean.shape[0]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    latents = (mean + (0.5 * logvar).exp() * randn(mean.shape)) * SCALING_FACTOR
    latents = latents.permute(0, 2, 1, 3, 4)  # [B, 4, n, h, w] -> [B, n, 4, h, w] (SVD UNet layout)
    sigma = (cfg.p_mean + cfg.p_std * randn(b)).exp()
    pre = {k: v.view(b, 1, 1, 1, 1) for k, v in precondition(sigma).items()}
    noisy = latents + sigma.view(b, 1, 1, 1, 1) * randn(latents.shape)

    # conditioning: noise-augmented image latent (unscaled, as the pipeline passes it) and CLIP embedding
    aug = (cfg.noise_aug_mean + cfg.noise_aug_std * randn(b)).exp() if cfg.noise_aug_std > 0 else torch.zeros(b)
    aug = aug.to(device)
    cond = batch["cond_latent"] + aug.view(b, 1, 1, 1) * randn(batch["cond_latent"].shape)  # [B, 4, h, w]
    embeds = batch["image_embeds"]  # [B, 1, D]
    keep = (torch.rand(b, generator=generator) >= cfg.conditioning_dropout).float().to(device)
    cond, embeds = cond * keep.view(b, 1, 1, 1), embeds * keep.view(b, 1, 1)  # CFG: zeros = unconditional
    cond = cond.unsqueeze(1).expand(-1, latents.shape[1], -1, -1, -1)  # [B, 4, h, w] -> [B, n, 4, h, w]

    time_ids = torch.stack(
        [unet_fps_id(batch["fps"].float().cpu()).to(device), torch.full_like(aug, cfg.motion_bucket_id), aug], dim=1
    )  # [B, 3]: fps, motion bucket, noise augmentation
    inp = torch.cat([pre["c_in"] * noisy, cond.to(noisy.dtype)], dim=2)  # [B, n, 8, h, w]
    pred = unet(inp, pre["c_noise"].flatten(), encoder_hidden_states=embeds, added_time_ids=time_ids).sample
    denoised = pre["c_out"] * pred.float() + pre["c_skip"] * noisy
    return (pre["weight"] * (denoised - latents) ** 2).mean()
