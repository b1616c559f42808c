"""CV-VAE: a 3-D video VAE whose latents stay compatible with the Stable Diffusion image VAE."""

from . import quiet
from .errors import InputError, ModelLoadError, UserError
from .model import CVVAEModel, CVVAEPosterior, CVVAESD3Model, latent_frames, padded_length, video_frames
from .tiling import TilingSettings

__all__ = [
    "CVVAEModel",
    "CVVAEPosterior",
    "CVVAESD3Model",
    "InputError",
    "ModelLoadError",
    "TilingSettings",
    "UserError",
    "latent_frames",
    "padded_length",
    "video_frames",
]
__version__ = "0.1.0"
quiet.install()
