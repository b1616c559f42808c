"""Build a CV-VAE from a diffusers ``AutoencoderKL``: a ``CVVAEModel`` from SD 1.x/2.x's layout (4 latent
channels, quant convs), a ``CVVAESD3Model`` from SD3's (16 latent channels, no quant convs, a shift), any width.

What happens to the 2-D weights (see the reference facts, section 1.10):

- diffusers key names are mapped to the released (CompVis/ldm) names (``down_blocks.i.resnets.j``
  -> ``down.i.block.j``; the decoder's ``up_blocks.k`` -> ``up.{L-1-k}``; attention
  ``to_q/to_k/to_v/to_out.0`` Linear -> ``q/k/v/proj_out`` 1x1 conv);
- ``quant_conv`` is folded into ``encoder.conv_out`` (exact: both are linear) and
  ``post_quant_conv`` into ``decoder.conv_in`` (exact away from the border; at the one-pixel border
  the folded bias also covers zero-padded taps);
- 2-D kernels become 3-D: the encoder's causal convs and the samplers (replicate-padded in time)
  put the 2-D kernel in the **last** temporal tap (the current frame), the decoder's zero-padded
  convs in the **centre** tap (the only one a single image reaches); the time upsamplers emit
  both channel halves with the 2-D conv (each input frame is repeated);
- the decoder's temporal attention (``*_t``) is new: ``temporal_init="zero"`` (default, measured
  best, see ``tests/test_training.py``) zeroes ``proj_out_t`` so the temporal branch contributes
  nothing at the start.

The SD3 layout keeps diffusers' key names and has no quant convs and no temporal attention; its 2-D
kernels become 3-D the same way (its samplers pad symmetrically where SD3's 2-D VAE pads right and
bottom, so the encoder cannot be exact on images either).

Consequences on a single image (SD 1.x/2.x layout): the encoder gives the 2-D encoder's latents up to the GroupNorm
eps difference (1e-5 here, 1e-6 in diffusers). The decoder cannot be exact: the released block
has one residual around spatial *then* temporal attention, so zeroing the temporal output also
removes the spatial attention's contribution (the LayerNorm in the temporal path makes an exact
identity impossible).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..hub import check_local_weights
from ..model import CVVAEModel, CVVAESD3Model, _CVVAEFamily

TEMPORAL_INITS = ("zero", "identity", "default")


def cvvae_config_for(vae2d) -> dict:
    """``CVVAEModel`` keyword arguments with the width and depth of a diffusers ``AutoencoderKL``."""
    cfg = vae2d.config
    widths = list(cfg.block_out_channels)
    ch = widths[0]
    if len(widths) != 4 or any(w % ch for w in widths):
        raise ValueError(f"need 4 levels whose widths are multiples of the first, got {widths}")
    if any("Down" not in t for t in cfg.down_block_types) or any("Up" not in t for t in cfg.up_block_types):
        raise ValueError("only plain Down/UpEncoderBlock2D stacks (SD's VAE layout) can be inflated")
    return dict(
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=cfg.layers_per_block,
        z_channels=cfg.latent_channels,
        in_channels=cfg.in_channels,
        out_ch=cfg.out_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=cfg.scaling_factor,
    )


def is_sd3_layout(vae2d) -> bool:
    """SD3's image VAE: no quant convs (and 16 latent channels)."""
    return not getattr(vae2d.config, "use_quant_conv", True)


def sd3_config_for(vae2d) -> dict:
    """``CVVAESD3Model`` keyword arguments with the width, depth and latent convention of an SD3-style VAE."""
    cfg = vae2d.config
    if len(cfg.block_out_channels) != 4:
        raise ValueError(f"need 4 levels, got {list(cfg.block_out_channels)}")
    return dict(
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        in_channels=cfg.in_channels,
        out_channels=cfg.latent_channels,
        scaling_factor=cfg.scaling_factor,
        shift_factor=cfg.shift_factor or 0.0,
    )


def map_key(key: str, levels: int = 4) -> str:
    """A diffusers ``AutoencoderKL`` state-dict key -> the released CV-VAE name."""
    k = key
    k = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)", r"down.\1.block.\2", k)
    k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0", r"down.\1.downsample", k)
    k = re.sub(r"up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"up.{levels - 1 - int(m[1])}.block.{m[2]}", k)
    k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"up.{levels - 1 - int(m[1])}.upsample", k)
    k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
    k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
    k = k.replace("attn_1.group_norm", "attn_1.norm").replace("attn_1.to_out.0", "attn_1.proj_out")
    for a in "qkv":
        k = k.replace(f"attn_1.to_{a}.", f"attn_1.{a}.")
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    return k


def fold_quant_convs(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold ``quant_conv`` into ``encoder.conv_out`` and ``post_quant_conv`` into ``decoder.conv_in`` (2-D)."""
    sd = dict(sd)
    if "quant_conv.weight" in sd:
        a, b = sd.pop("quant_conv.weight")[:, :, 0, 0], sd.pop("quant_conv.bias")  # (O, M), (O,)
        w, c = sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"]  # (M, I, k, k), (M,)
        sd["encoder.conv_out.weight"] = torch.einsum("om,mikl->oikl", a, w)
        sd["encoder.conv_out.bias"] = a @ c + b
    if "post_quant_conv.weight" in sd:
        a, b = sd.pop("post_quant_conv.weight")[:, :, 0, 0], sd.pop("post_quant_conv.bias")  # (Z, Z), (Z,)
        w, c = sd["decoder.conv_in.weight"], sd["decoder.conv_in.bias"]  # (O, Z, k, k), (O,)
        sd["decoder.conv_in.weight"] = torch.einsum("ozkl,zy->oykl", w, a)
        sd["decoder.conv_in.bias"] = c + torch.einsum("ozkl,z->o", w, b)
    return sd


def _inflate(w2d: torch.Tensor, taps: int, where: str) -> torch.Tensor:
    """``[O, I, k, k] -> [O, I, taps, k, k]`` with the 2-D kernel in the ``last`` or ``centre`` tap."""
    w = w2d.new_zeros(w2d.shape[0], w2d.shape[1], taps, *w2d.shape[2:])
    w[:, :, taps - 1 if where == "last" else taps // 2] = w2d
    return w


def _init_temporal(model: CVVAEModel, how: str) -> None:
    attn = model.decoder.mid.attn_1
    with torch.no_grad():
        if how == "zero":
            attn.proj_out_t.weight.zero_()
            attn.proj_out_t.bias.zero_()
        elif how == "identity":
            for lin in (attn.v_t, attn.proj_out_t):
                lin.weight.copy_(torch.eye(lin.weight.shape[0]))
                lin.bias.zero_()


def inflate_state_dict(
    sd2d: dict[str, torch.Tensor], target: dict[str, torch.Tensor], sd3: bool = False
) -> dict[str, torch.Tensor]:
    """Map, fold and inflate a diffusers state dict to the shapes of ``target`` (a CV-VAE state dict);
    ``sd3``: SD3's layout, whose names the SD3 variant keeps."""
    sd = dict(sd2d) if sd3 else {map_key(k): v for k, v in fold_quant_convs(sd2d).items()}
    out = {}
    for key, ref in target.items():
        if key not in sd:
            continue  # new parameters (temporal attention) keep the target's initialisation
        w = sd[key]
        if ref.dim() == 5 and w.dim() == 4:
            where = "last" if key.startswith("encoder.") or ".downsample." in key else "centre"
            w = _inflate(w, ref.shape[2], where)
            if ref.shape[0] == 2 * w.shape[0]:  # time upsampler: both halves carry the 2-D conv
                w = torch.cat([w, w], dim=0)
        elif ref.dim() == 1 and w.dim() == 1 and ref.shape[0] == 2 * w.shape[0]:
            w = torch.cat([w, w])
        elif ref.dim() == 4 and w.dim() == 2:
            w = w[:, :, None, None]  # Linear -> 1x1 conv
        if w.shape != ref.shape:
            raise ValueError(f"{key}: cannot turn a {tuple(w.shape)} weight into {tuple(ref.shape)}")
        out[key] = w.to(ref.dtype)
    unused = sorted(set(sd) - set(out))
    if unused:
        raise ValueError(f"2-D weights with no place in the 3-D model: {unused[:5]}")
    return out


def inflate_vae(vae2d, temporal_init: str = "zero", seed: int = 0, **config_overrides) -> _CVVAEFamily:
    """A CV-VAE initialised from a diffusers ``AutoencoderKL`` (see the module docstring): the SD3 variant
    for SD3's layout, else ``CVVAEModel``."""
    if temporal_init not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {temporal_init!r}")
    sd3 = is_sd3_layout(vae2d)
    cls, config = (CVVAESD3Model, sd3_config_for(vae2d)) if sd3 else (CVVAEModel, cvvae_config_for(vae2d))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(**{**config, **config_overrides})
    target = model.state_dict()
    weights = inflate_state_dict(vae2d.state_dict(), target, sd3)
    missing = set(target) - set(weights)
    new = {k for k in missing if ".attn_1." in k and k.split(".attn_1.")[1].split(".")[0].endswith("_t")}
    if missing - new:
        raise ValueError(f"3-D parameters with no 2-D source: {sorted(missing - new)[:5]}")
    model.load_state_dict(weights, strict=False)
    if not sd3:
        _init_temporal(model, temporal_init)
    return model


def load_frozen_vae2d(folder: str):
    from diffusers import AutoencoderKL

    if not Path(folder).is_dir():
        raise ModelLoadError(f"2-D VAE folder {folder} does not exist")
    check_local_weights(Path(folder), allow_pickle=False, can_allow=False)  # never unpickled
    vae2d = AutoencoderKL.from_pretrained(folder, use_safetensors=True).eval()
    return vae2d.requires_grad_(False)
