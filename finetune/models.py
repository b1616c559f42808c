"""Base models for fine-tuning (``tiny`` or real SVD + CV-VAE) and the trainable set of each mode."""

from __future__ import annotations

import torch
from torch import nn

from cvvae.errors import ModelLoadError
from cvvae.hub import load_model, model_label

from .config import FinetuneConfig, LoraSettings, ModelConfig

ATTN_PROJ = r"(attn1|attn2)\.({mods})"
LAYER_PATTERNS = {
    "spatial": r".*\.transformer_blocks\.\d+\.",  # "temporal_transformer_blocks" does not match "\.transformer"
    "temporal": r".*\.temporal_transformer_blocks\.\d+\.",
    "all": r".*transformer_blocks\.\d+\.",
}


def model_ids(cfg: ModelConfig) -> dict:
    """How the cache and the adapter name the models they belong to."""
    from cvvae.vaes import VAE_SPECS

    cvvae = cfg.cvvae if cfg.cvvae in VAE_SPECS else model_label(cfg.cvvae, cfg.cvvae_subfolder)
    return {"base_unet": cfg.base, "cvvae": cvvae}


def load_cvvae(cfg: ModelConfig, device=None, dtype=None, tiling: dict | None = None):
    """The frozen video VAE whose latents the UNet learns, as a :class:`cvvae.vaes.VideoVAE`: a VAE spec
    (``tiny``, ``nano``, ``nano-2d``, ...: ``cvvae.vaes.VAE_SPECS``) or a CV-VAE hub id / folder (with
    ``cvvae_subfolder``). An image VAE (``nano-2d``) gives SVD's own world: one latent per frame."""
    from cvvae.vaes import VAE_SPECS, load_video_vae

    options = {"tiling": tiling} if tiling is not None else {}
    if cfg.cvvae not in VAE_SPECS:
        options["subfolder"] = cfg.cvvae_subfolder
    vae = load_video_vae(cfg.cvvae, device=device, dtype=dtype, **options)
    vae.module.requires_grad_(False)
    return vae


def load_encoders(cfg: ModelConfig, device=None, dtype=None) -> dict:
    """CV-VAE + SVD's CLIP image encoder and feature extractor (what the latent cache needs)."""
    if cfg.base == "tiny":
        from cvvae.pipelines.tiny import build_tiny_svd

        parts = build_tiny_svd()
        enc = {k: parts[k] for k in ("image_encoder", "feature_extractor")}
    else:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        enc = {
            "image_encoder": load_model(
                CLIPVisionModelWithProjection.from_pretrained, cfg.base, "image_encoder", revision=cfg.revision
            ),
            "feature_extractor": load_model(
                CLIPImageProcessor.from_pretrained, cfg.base, "feature_extractor", revision=cfg.revision
            ),
        }
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    enc["image_encoder"] = enc["image_encoder"].to(**kwargs).eval().requires_grad_(False)
    enc["vae"] = load_cvvae(cfg, device, dtype)
    return enc


def load_unet(cfg: ModelConfig):
    """The SVD UNet (``tiny``: the random tiny UNet of the ``tiny`` preset)."""
    if cfg.base == "tiny":
        from cvvae.pipelines.tiny import tiny_svd_unet

        return tiny_svd_unet(seed=0)
    from diffusers import UNetSpatioTemporalConditionModel

    return load_model(UNetSpatioTemporalConditionModel.from_pretrained, cfg.base, "unet", revision=cfg.revision)


def lora_config(settings: LoraSettings):
    """A ``peft.LoraConfig`` on the attention projections of the chosen (spatial/temporal) blocks."""
    from peft import LoraConfig

    mods = "|".join(m.replace(".", r"\.") for m in settings.target_modules)
    pattern = LAYER_PATTERNS[settings.layers] + ATTN_PROJ.format(mods=mods)
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=pattern,  # a regex: peft full-matches it against module names
        init_lora_weights="gaussian",
    )


def setup_trainable(unet: nn.Module, mode: str, lora: LoraSettings, seed: int = 0) -> dict | None:
    """Freeze ``unet`` and make the parameters of ``mode`` trainable (fp32); returns the PEFT config dict."""
    from cvvae.pipelines.adapters import add_lora, lora_config_dict

    unet.requires_grad_(mode == "full")  # full: every weight (training from scratch, e.g. the nano SVD)
    peft_config = None
    if "lora" in mode:
        config = lora_config(lora)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # LoRA init is part of the run's seed
            add_lora(unet, config)
        peft_config = lora_config_dict(config)
        found = [n for n, _ in unet.named_parameters() if "lora_" in n]
        if not found:
            raise ModelLoadError(f"lora.target_modules {lora.target_modules} matched no layer of the UNet")
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    if "conv_out" in mode:
        unet.conv_out.requires_grad_(True)
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # trainable parameters stay fp32 under bf16 mixed precision
    return peft_config


def trainable_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def count_parameters(unet_config: dict | None = None, lora: LoraSettings | None = None) -> dict:
    """Trainable parameter counts per mode, on the meta device (no memory; default: the SVD(-XT) UNet config)."""
    from accelerate import init_empty_weights
    from diffusers import UNetSpatioTemporalConditionModel

    lora = lora or LoraSettings()
    counts = {}
    for mode in ("conv_out", "lora", "lora+conv_out"):
        with init_empty_weights():
            unet = UNetSpatioTemporalConditionModel(**(unet_config or {}))
            setup_trainable(unet, mode, lora)
        counts[mode] = sum(p.numel() for p in trainable_parameters(unet).values())
    counts["total_unet"] = sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n)
    return counts


def adapter_info(cfg: FinetuneConfig, peft_config, data: dict, step: int, base_signature: dict | None = None):
    """The description an adapter folder of this run carries (``cvvae.pipelines.adapters.AdapterInfo``)."""
    from cvvae.pipelines.adapters import AdapterInfo

    ids = model_ids(cfg.model)
    extra = {"train": {k: v for k, v in cfg.to_dict()["train"].items() if k != "output_dir"}}
    return AdapterInfo(
        mode=cfg.train.mode,
        peft_config=peft_config,
        base_unet=ids["base_unet"],
        cvvae=ids["cvvae"],
        step=step,
        data=data,
        extra=extra,
        base_signature=base_signature or {},
    )
