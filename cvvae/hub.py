"""Where weights come from: the released repository, local folders, and errors that say how to get them.

This module knows no model class, so the model, the loaders and every front end can import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError
from .weights import SHIPPED

CVVAE_HUB_ID = "AILab-CVC/CV-VAE"
CVVAE_SUBFOLDERS = ("vae3d_v1-1", "vae3d")  # the SD 2.1 / SVD-compatible releases, newest first
DEFAULT_SUBFOLDER = CVVAE_SUBFOLDERS[0]
SD3_SUBFOLDER = "vae3d_sd3"  # the SD3-compatible release (16 latent channels)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def default_subfolder(model: str, subfolder: str | None) -> str | None:
    """The released repository without a subfolder means its newest SD 2.1 / SVD model."""
    return subfolder or (DEFAULT_SUBFOLDER if str(model) == CVVAE_HUB_ID else None)


def resolve_subfolder(model: str, subfolder: str | None, variant: str | None = None) -> str | None:
    """The subfolder that holds the CV-VAE of ``variant`` (``sd21`` or ``sd3``; None: whatever ``subfolder`` says).

    The released repository keeps its SD3 model (``vae3d_sd3``) beside the SD 2.1 ones, so ``sd3`` with an
    SD 2.1 subfolder (or none) means ``vae3d_sd3``; a local folder that is the model itself needs no subfolder.
    """
    if model in SHIPPED:
        return None  # the shipped folder is the model itself
    if variant == "sd3" and (subfolder in CVVAE_SUBFOLDERS or (subfolder is None and model == CVVAE_HUB_ID)):
        subfolder = SD3_SUBFOLDER
    subfolder = default_subfolder(model, subfolder)
    if subfolder and looks_local(model) and not (Path(model) / subfolder / "config.json").is_file():
        subfolder = None if (Path(model) / "config.json").is_file() else subfolder
    return subfolder


def model_label(model: str, subfolder: str | None = None) -> str:
    """How outputs name a model: ``AILab-CVC/CV-VAE/vae3d_v1-1``, ``nano``, ``/models/cvvae``."""
    subfolder = default_subfolder(model, subfolder)
    return str(model) + (f"/{subfolder}" if subfolder else "")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_local(name: str | os.PathLike) -> bool:
    """A path rather than a hub id (``name`` or ``owner/name``): absolute, relative with ``./``/``../``/``~``,
    more than one ``/`` deep (``runs/x/final``), or existing on disk. (A ``Path`` has lost its ``./``.)"""
    text = os.fspath(name)
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or Path(text).exists()


# What the loaders read of the shipped pipelines' repositories (model_index.json and the components'
# configs, tokenizer files, fp16 weights), not their single-file checkpoints of several GB (as in the README).
_SVD_FILES = ("*.json", "*.fp16.safetensors")
_SD_FILES = ("*.json", "*.txt", "*.fp16.safetensors")
DOWNLOAD_FILTERS = {
    "stabilityai/stable-video-diffusion-img2vid-xt": _SVD_FILES,
    "stabilityai/stable-video-diffusion-img2vid": _SVD_FILES,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": _SD_FILES,
    "stabilityai/stable-diffusion-2-1-base": _SD_FILES,
}


def download_hint(model_id: str, subfolder: str | None = None) -> str:
    """The command that fetches what is loaded of ``model_id`` into the Hugging Face cache (``hf`` ships
    with huggingface_hub): one subfolder, or the files the pipeline loads, rather than the whole repository."""
    patterns = [f"{subfolder}/*"] if subfolder else DOWNLOAD_FILTERS.get(model_id, ())
    return f"hf download {model_id}" + "".join(f' --include "{p}"' for p in patterns)


def check_local_weights(folder: Path, allow_pickle: bool, can_allow: bool = True) -> None:
    """Fail early and clearly on a local folder that holds no loadable model (``can_allow``: the caller has
    an ``allow_pickle`` switch to suggest)."""
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} holds no config.json, so it is not a model folder "
            f"(for the released weights use {CVVAE_HUB_ID} with subfolder {DEFAULT_SUBFOLDER}, "
            "or a folder saved by save_pretrained)"
        )
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{folder} only has pickle weights ({', '.join(pickles)}); unpickling can run arbitrary code, so it is "
            "refused. Convert them to safetensors"
            + (", or pass allow_pickle=True (--allow-pickle) if you trust the file" if can_allow else "")
        )
    if not pickles:
        raise ModelLoadError(f"{folder} holds no weights (*.safetensors) next to its config.json")


def hub_error(model_id: str, subfolder: str | None, err: Exception) -> ModelLoadError:
    """An actionable message for weights that could not be found in the cache or on the hub."""
    where = model_id + (f" (subfolder {subfolder})" if subfolder else "")
    reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
    if looks_local(model_id):
        if not Path(model_id).expanduser().is_dir():
            return ModelLoadError(f"model folder {model_id} does not exist: check the path")
        return ModelLoadError(f"could not load {where}: the folder does not hold a loadable model ({reason})")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    if is_offline():
        how = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    elif _HUB_ANSWERS and not all(_HUB_ANSWERS.values()):
        how = "it is not in the local cache and the hub cannot be reached"
    else:
        how = "it could not be downloaded"
    return ModelLoadError(
        f"could not load {where}: {how}. Run `{download_hint(model_id, subfolder)}` on a machine with network "
        f"access (the cache is {cache}), or pass a local folder that holds config.json and the safetensors "
        f"weights ({reason})"
    )


_HUB_ANSWERS: dict[str, bool] = {}  # endpoint -> reachable, remembered for the rest of the process


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers at all (one quick request, remembered: a batch asks once)."""
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _HUB_ANSWERS:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/api/whoami-v2", method="HEAD"), timeout=timeout)
            _HUB_ANSWERS[endpoint] = True
        except urllib.error.HTTPError:
            _HUB_ANSWERS[endpoint] = True  # it answered (401 without a token)
        except (OSError, ValueError):
            _HUB_ANSWERS[endpoint] = False
    return _HUB_ANSWERS[endpoint]


def cache_first(load, model_id: str, **kwargs):
    """``load(model_id, **kwargs)`` from the local Hugging Face cache; only when the model is not cached,
    from the hub, and only if it answers: otherwise a :class:`ModelLoadError` at once, instead of a long
    series of retried requests. ``load`` raises ``OSError`` when files are missing."""
    try:
        return load(model_id, local_files_only=True, **kwargs)
    except OSError as err:
        if is_offline() or not hub_reachable():
            raise hub_error(model_id, kwargs.get("subfolder"), err) from err
    return load(model_id, **kwargs)


def load_model(load, name: str, subfolder: str | None = None, **kwargs):
    """``load(name, subfolder=..., **kwargs)`` (a ``from_pretrained``) from a local folder, or for a hub id
    from the cache first (:func:`cache_first`); a missing or unloadable model is a :class:`ModelLoadError`
    saying how to get it (the one place that turns loaders' ``OSError``/``ValueError`` into advice)."""
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    local = looks_local(name)
    if local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"model folder {name} does not exist: check the path")
    try:
        return load(name, **kwargs) if local else cache_first(load, name, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as err:
        raise hub_error(name, subfolder, err) from err


def missing_models(models: dict[str, tuple[str, str | None]]) -> list[str]:
    """What of ``models`` (what -> (hub id or folder, subfolder)) cannot load here, each with how to get it;
    checked before anything heavy is imported, so every missing model is named at once. A hub id counts as
    missing only when the hub is out of reach (offline, or not answering) and it is not in the cache."""
    problems = []
    remote = []
    for what, (name, subfolder) in models.items():
        if name == "tiny":
            continue
        if name in SHIPPED:
            if not (SHIPPED[name] / "config.json").is_file():
                problems.append(f"{what}: the '{name}' model is not in this installation ({SHIPPED[name]} is missing)")
        elif looks_local(name):
            folder = Path(name).expanduser() / (subfolder or "")
            if not folder.is_dir():
                problems.append(f"{what}: folder {folder} does not exist (check the path)")
        else:
            remote.append((what, name, subfolder))
    if remote and (is_offline() or not hub_reachable()):
        from huggingface_hub import try_to_load_from_cache

        for what, name, subfolder in remote:
            prefix = f"{subfolder}/" if subfolder else ""
            files = (f"{prefix}config.json", f"{prefix}model_index.json")
            if not any(isinstance(try_to_load_from_cache(name, f), str) for f in files):
                problems.append(f"{what}: {name} is not in the cache (`{download_hint(name, subfolder)}`)")
    return problems
