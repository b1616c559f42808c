"""CV-VAE: a 3-D video VAE whose latents stay compatible with the Stable Diffusion image VAE.

Names load on first use, so ``python -m cvvae --help`` answers without importing torch or diffusers.
"""

from __future__ import annotations

import importlib

from . import quiet
from .errors import InputError, ModelLoadError, UserError
from .version import __version__

_LAZY = {
    "CVVAEModel": "model",
    "CVVAEPosterior": "model",
    "CVVAESD3Model": "model",
    "TilingSettings": "tiling",
    "latent_frames": "frames",
    "padded_length": "frames",
    "video_frames": "frames",
}
__all__ = ["InputError", "ModelLoadError", "UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


quiet.install()
