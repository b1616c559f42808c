"""Losses: reconstruction, KL, GAN (hinge or vanilla) with adaptive weight, and CV-VAE's latent regularisation.

Reductions: pixel losses are means over pixels; the KL is summed over latent elements and divided by
the number of pixel elements of a sample (``kl_loss``), so ``kl_weight`` means what it means in LDM
(where both terms are sums divided by the batch) and the balance does not move with clip size.

Frame mappings (latent 0 <-> frame 0; latent k >= 1 <-> frames 4k-3 .. 4k):
``first`` (latent 0 only), ``slice`` (frame 4k), ``average`` (mean of the group) and ``random``
(one frame of the group, drawn per sample and per latent; the release shares one draw across the
batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAPPINGS = ("first", "slice", "average", "random")


def map_frames(x: torch.Tensor, mapping: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Target frames for the latent frames: ``[B, C, T, H, W] -> [B, C, m, H, W]``.

    ``m = 1`` for ``first``, else ``1 + (T - 1) // 4`` (trailing frames beyond ``1 + 4k`` are unused).
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    b, _, t = x.shape[:3]
    groups = (t - 1) // 4
    if mapping == "first" or groups == 0:
        return x[:, :, :1]
    first = x[:, :, :1]
    grouped = x[:, :, 1 : 1 + 4 * groups].unflatten(2, (groups, 4))  # (B, C, G, 4, H, W)
    if mapping == "slice":
        rest = grouped[:, :, :, 3]
    elif mapping == "average":
        rest = grouped.mean(dim=3)
    else:
        pick = torch.randint(0, 4, (b, groups), generator=generator, device="cpu").to(x.device)  # (B, G)
        index = pick.view(b, 1, groups, 1, 1, 1).expand(-1, x.shape[1], -1, 1, *x.shape[3:])
        rest = grouped.gather(3, index).squeeze(3)
    return torch.cat([first, rest], dim=2)


def pixel_loss(a: torch.Tensor, b: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return (a - b).abs().mean()
    if kind == "l2":
        return (a - b).pow(2).mean()
    raise ValueError(f"loss kind must be 'l1' or 'l2', got {kind!r}")


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor, pixels_per_sample: int) -> torch.Tensor:
    """KL to N(0, I) in nats per pixel element: summed over a sample's latent, divided by its pixel count.

    With reconstruction losses that are means over pixels, ``kl_weight * kl_loss`` keeps LDM's balance
    (sums divided by the batch, both terms divided by the same pixel count), for images and clips of
    any size alike; a 4x temporally compressed clip simply carries fewer nats per pixel.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean() / pixels_per_sample


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W] -> [(B T), C, H, W]``."""
    return x.transpose(1, 2).flatten(0, 1)


def batch_to_frames(x: torch.Tensor, t: int) -> torch.Tensor:
    """``[(B T), C, H, W] -> [B, C, T, H, W]``."""
    return x.unflatten(0, (-1, t)).transpose(1, 2)


def decoder_side_reg(vae2d, z: torch.Tensor, x: torch.Tensor, mapping: str, kind: str = "l1", generator=None):
    """Frozen 2-D decoder on every mapped latent frame of the 3-D latent ``z`` vs the mapped frames.

    Gradients flow through the frozen decoder into ``z`` (and the 3-D encoder). Returns
    ``(loss, decoded [B, 3, m, H, W])``.
    """
    target = map_frames(x, mapping, generator)
    m = target.shape[2]
    zz = z[:, :, :m]
    decoded = batch_to_frames(vae2d.decode(frames_to_batch(zz)).sample, m)
    return pixel_loss(decoded, target, kind), decoded


def encoder_side_reg(vae2d, decoder3d, x: torch.Tensor, mapping: str, kind: str = "l1", generator=None):
    """The 3-D decoder reconstructs the clip from the frozen 2-D encoder's latents of the mapped frames.

    The frames covered are ``1 + 4 (m - 1)`` (just frame 0 for ``first``). Returns ``(loss, recon)``.
    """
    target = map_frames(x, mapping, generator)
    m = target.shape[2]
    with torch.no_grad():
        post = vae2d.encode(frames_to_batch(target)).latent_dist
        z2d = batch_to_frames(post.sample(generator=generator), m)
    recon = decoder3d(z2d)
    return pixel_loss(recon, x[:, :, : 1 + 4 * (m - 1)], kind), recon


GAN_LOSSES = ("hinge", "vanilla")


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def vanilla_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating (logistic) GAN loss of the discriminator."""
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``hinge`` or ``vanilla`` (both in the release's training code)."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"GAN loss must be one of {GAN_LOSSES}, got {kind!r}")
    return hinge_d_loss(real, fake) if kind == "hinge" else vanilla_d_loss(real, fake)


def generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """The generator's GAN loss, ``-mean(D(x_hat))`` for both kinds (as LDM and the release do)."""
    return -fake.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4):
    """``||grad nll|| / (||grad g|| + 1e-4)`` w.r.t. the decoder's last layer, clamped, no grad.

    ``nll`` is every reconstruction term the decoder serves, the latent regularisation included (as the
    release does): the decoder-side term has no gradient at the 3-D decoder's last layer, the
    encoder-side term (the 3-D decoder reconstructing from 2-D latents) has, and the GAN should be
    weighed against it too.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
