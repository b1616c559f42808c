"""Loading a CV-VAE by name (``tiny``, ``nano``), local folder or hub id, onto a device and dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ModelLoadError
from .hub import default_subfolder
from .model import CVVAEModel

# A CV-VAE small enough for CPU tests and machines without weights, with the released structure.
TINY_VAE_CONFIG = dict(ch=8, ch_mult=(1, 1, 2, 2), norm_num_groups=4, num_res_blocks=1)
RANDOM_WEIGHTS_NOTICE = "outputs come from RANDOM weights (the 'tiny' preset): they show the mechanics, not quality"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Named models shipped in the repository (folders with config.json + safetensors).
NAMED_MODELS = {"nano": REPO_ROOT / "assets" / "nano" / "cvvae"}


def build_tiny_vae(seed: int = 0) -> CVVAEModel:
    """A random tiny ``CVVAEModel`` built in-process (no download), in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CVVAEModel(**TINY_VAE_CONFIG).eval()


def load_vae(
    model: str | Path,
    subfolder: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    **config_overrides,
) -> CVVAEModel:
    """Load a CV-VAE by name (``tiny``, ``nano``), local folder or hub id, onto ``device`` in ``dtype``.

    The released repository without a subfolder loads its newest SD 2.1 / SVD model.
    """
    name = str(model)
    if name == "tiny":
        vae = build_tiny_vae()
    else:
        path = NAMED_MODELS.get(name, model)
        if name in NAMED_MODELS and not Path(path).is_dir():
            raise ModelLoadError(f"the '{name}' model is not in this checkout ({path} is missing)")
        vae = CVVAEModel.from_pretrained(
            path, subfolder=default_subfolder(name, subfolder), allow_pickle=allow_pickle, **config_overrides
        )
    if dtype is not None:
        torch.nn.Module.to(vae, dtype=dtype)  # (ModelMixin.to warns about casts; none matter here)
    return vae.to(device=device).eval()
