"""Where weights come from: local folders and hub ids, with errors that say how to get them."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError

PICKLE_GLOBS = ("*.ckpt", "*.bin", "*.pt", "*.pth")


def check_local_weights(folder: Path, allow_pickle: bool) -> None:
    """Fail early and clearly on a local folder that holds no loadable model."""
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} holds no config.json, so it is not a model folder "
            "(for the released weights use AILab-CVC/CV-VAE with subfolder vae3d_v1-1, "
            "or a folder saved by save_pretrained)"
        )
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for g in PICKLE_GLOBS for p in folder.glob(g)]
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{folder} only has pickle weights ({', '.join(pickles)}); unpickling can run arbitrary code, so it is "
            "refused. Convert them to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust the file"
        )
    if not pickles:
        raise ModelLoadError(f"{folder} holds no weights (*.safetensors) next to its config.json")


def hub_error(model_id: str, subfolder: str | None, err: Exception) -> ModelLoadError:
    """An actionable message for weights that could not be found locally or on the hub."""
    where = model_id + (f" (subfolder {subfolder})" if subfolder else "")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    hint = ("HF_HUB_OFFLINE is set, so nothing is downloaded: " if offline else "it could not be downloaded: ") + (
        f"run `huggingface-cli download {model_id}` on a machine with network access and copy the cache to {cache}, "
        "or pass a local folder that holds config.json and the safetensors weights"
    )
    return ModelLoadError(f"could not load {where}: {hint} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")


# A CV-VAE small enough for CPU tests and machines without weights, with the released structure.
TINY_VAE_CONFIG = dict(ch=8, ch_mult=(1, 1, 2, 2), norm_num_groups=4, num_res_blocks=1)
RANDOM_WEIGHTS_NOTICE = "outputs come from RANDOM weights (the 'tiny' preset): they show the mechanics, not quality"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Named models shipped in the repository (folders with config.json + safetensors).
NAMED_MODELS = {"nano": REPO_ROOT / "assets" / "nano" / "cvvae"}


def build_tiny_vae(seed: int = 0):
    """A random tiny ``CVVAEModel`` built in-process (no download), in eval mode."""
    import torch

    from .model import CVVAEModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CVVAEModel(**TINY_VAE_CONFIG).eval()


def load_vae(
    model: str | Path,
    subfolder: str | None = None,
    device: str | None = None,
    dtype=None,
    allow_pickle: bool = False,
    **config_overrides,
):
    """Load a CV-VAE by name (``tiny``, ``nano``), local folder or hub id, onto ``device``."""
    import torch

    from .model import CVVAEModel

    name = str(model)
    if name == "tiny":
        vae = build_tiny_vae()
    else:
        path = NAMED_MODELS.get(name, model)
        if name in NAMED_MODELS and not Path(path).is_dir():
            raise ModelLoadError(f"the '{name}' model is not in this checkout ({path} is missing)")
        vae = CVVAEModel.from_pretrained(
            path, subfolder=subfolder, torch_dtype=dtype, allow_pickle=allow_pickle, **config_overrides
        )
    if dtype is not None:
        torch.nn.Module.to(vae, dtype=dtype)  # (ModelMixin.to warns about casts; none matter here)
    return vae.to(device=device).eval()
