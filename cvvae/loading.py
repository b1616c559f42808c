"""Loading a CV-VAE by name (``tiny``, ``nano``), local folder or hub id, onto a device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ModelLoadError
from .hub import cache_first, looks_local, resolve_subfolder
from .model import MODEL_CLASSES, CVVAEModel, CVVAESD3Model, _CVVAEFamily
from .weights import NANO_CVVAE, RANDOM_WEIGHTS_NOTICE  # noqa: F401 (re-exported)

# CV-VAEs small enough for CPU tests and machines without weights, with the released structures.
TINY_VAE_CONFIG = dict(ch=8, ch_mult=(1, 1, 2, 2), norm_num_groups=4, num_res_blocks=1)
TINY_SD3_CONFIG = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
# Named models shipped inside the package (package data: config.json + safetensors), so they work
# from a clone, an editable install and a plain ``pip install .`` alike.
NAMED_MODELS = {"nano": NANO_CVVAE}


def build_tiny_vae(seed: int = 0, variant: str = "sd21") -> _CVVAEFamily:
    """A random tiny CV-VAE built in-process (no download), in eval mode: ``sd21`` (4 latent channels) or ``sd3``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if variant == "sd3":
            return CVVAESD3Model(**TINY_SD3_CONFIG).eval()
        return CVVAEModel(**TINY_VAE_CONFIG).eval()


def model_class(model: str | Path, subfolder: str | None = None) -> type[_CVVAEFamily]:
    """The class a CV-VAE's ``config.json`` names (``_class_name``): :class:`CVVAEModel` or ``CVVAESD3Model``."""
    path = Path(model) / (subfolder or "") / "config.json"
    try:
        if path.is_file():
            config = _CVVAEFamily.load_config(path.parent)
        elif looks_local(model):
            return CVVAEModel  # from_pretrained says what is missing
        else:
            config = cache_first(_CVVAEFamily.load_config, str(model), subfolder=subfolder)
    except ModelLoadError:
        raise
    except (OSError, ValueError):
        return CVVAEModel  # from_pretrained says what is wrong
    name = config.get("_class_name", "CVVAEModel")
    if name not in MODEL_CLASSES:
        raise ModelLoadError(f"{model} holds a {name}, not a CV-VAE ({', '.join(MODEL_CLASSES)})")
    return MODEL_CLASSES[name]


def load_vae(
    model: str | Path,
    subfolder: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
    **config_overrides,
) -> _CVVAEFamily:
    """Load a CV-VAE by name (``tiny``, ``nano``), local folder or hub id, onto ``device`` in ``dtype``.

    The one CV-VAE loader of the project (command lines, pipelines, the app, fine-tuning, benchmarks).
    The class (SD 2.1 / SVD or SD3 variant) comes from the model's ``config.json``; ``variant`` (``sd21``,
    ``sd3``) picks the released repository's subfolder and the ``tiny`` model's structure. The released
    repository without a subfolder loads its newest SD 2.1 / SVD model.
    """
    name = str(model)
    if name == "tiny":
        vae = build_tiny_vae(variant=variant or "sd21")
    else:
        path = NAMED_MODELS.get(name, model)
        if name in NAMED_MODELS and not Path(path).is_dir():
            raise ModelLoadError(f"the '{name}' model is not in this installation ({path} is missing)")
        subfolder = resolve_subfolder(name, subfolder, variant)
        cls = model_class(path, subfolder)
        vae = cls.from_pretrained(path, subfolder=subfolder, allow_pickle=allow_pickle, **config_overrides)
    if dtype is not None and dtype != next(vae.parameters()).dtype:
        torch.nn.Module.to(vae, dtype=dtype)  # (ModelMixin.to warns about casts; none matter here)
    return vae.to(device=device).eval()
