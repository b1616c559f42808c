"""Tiny RANDOM-weight configs of every diffusers video-VAE class the adapters know, built in-process.

For tests and offline trials of the mechanics (frame arithmetic, shapes, tiling, the comparison's
plumbing): their reconstructions are noise and say nothing of the real models. Registered as VAE specs
``tiny-wan``, ``tiny-hunyuan``, ``tiny-ltx``, ``tiny-cogvideox``, ``tiny-mochi``, ``tiny-cosmos`` and
``tiny-allegro`` when this module is imported (``cvvae.compare`` imports it).
"""

from __future__ import annotations

import torch

from .vaes import DiffusersVideoVAE, register_vae

_FLAT4 = dict(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "tiny-wan": (
        "AutoencoderKLWan",
        dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
        | _FLAT4,
    ),
    "tiny-hunyuan": (
        "AutoencoderKLHunyuanVideo",
        dict(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
    ),
    "tiny-ltx": (
        "AutoencoderKLLTXVideo",
        dict(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
        ),
    ),
    "tiny-cogvideox": (
        "AutoencoderKLCogVideoX",
        dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4),
    ),
    "tiny-mochi": (  # Mochi's GroupNorm has 32 groups: 32 channels at least
        "AutoencoderKLMochi",
        dict(
            encoder_block_out_channels=(32,) * 4,
            decoder_block_out_channels=(32,) * 4,
            latent_channels=4,
            layers_per_block=(1, 1, 1, 1, 1),
            add_attention_block=(False,) * 5,
        )
        | _FLAT4,
    ),
    "tiny-cosmos": (
        "AutoencoderKLCosmos",
        dict(
            latent_channels=4,
            encoder_block_out_channels=(8,) * 4,
            decode_block_out_channels=(8,) * 4,
            attention_resolutions=(),
            resolution=64,
            num_layers=1,
            latents_mean=None,
            latents_std=None,
        ),
    ),
    # Allegro only encodes and decodes tiled, in blocks of 24 frames x sample_size pixels: clips need that much
    "tiny-allegro": (
        "AutoencoderKLAllegro",
        dict(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=128),
    ),
}


def build_tiny_video_vae(name: str, seed: int = 0, device=None, dtype=None, tiling: bool = True) -> DiffusersVideoVAE:
    """The tiny random ``name`` (a key of ``TINY_CONFIGS``) as a :class:`DiffusersVideoVAE`."""
    import diffusers

    cls_name, config = TINY_CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = getattr(diffusers, cls_name)(**config).eval()
    torch.nn.Module.to(module, device=device, dtype=dtype)
    return DiffusersVideoVAE(module, name, tiling=tiling, random_weights=True)


def _register() -> None:
    for name, (cls_name, _) in TINY_CONFIGS.items():

        def load(device=None, dtype=None, tiling=True, _name=name, **_):
            return build_tiny_video_vae(_name, device=device, dtype=dtype, tiling=tiling)

        register_vae(name, load, f"tiny {cls_name} with RANDOM weights (mechanics only)")


_register()
