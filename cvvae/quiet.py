"""Library messages that are not the user's to act on, filtered out once when ``cvvae`` is imported.

Only exact, known messages are dropped; every other warning of the libraries still shows.
"""

from __future__ import annotations

import logging
import warnings

# logger name -> substrings of the messages dropped from it
NOT_ACTIONABLE = {
    # transformers' image processors need torchvision by default and fall back to their PIL versions
    # (which are what this project uses) with advice to install torchvision: this stack must not have
    # torchvision (it breaks diffusers and transformers imports), so the advice only misleads.
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    # diffusers warns on every ``.to(dtype)`` of a model, even when no module must stay in float32.
    "diffusers.models.modeling_utils": ("that should be kept in float32: []",),
    # SVD's pipeline class is annotated with SVD's temporal VAE; the nano SVD's world (and SVD run frame by
    # frame in an image VAE's latents) passes an image VAE on purpose, and the pipeline runs with it.
    "diffusers.pipelines.pipeline_utils": (
        "AutoencoderKLTemporalDecoder'>,), got <class 'diffusers.models.autoencoders.autoencoder_kl.AutoencoderKL'>",
    ),
}


class _DropKnown(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def install() -> None:
    """Add the filters (idempotent); the loggers are the libraries' own, so this imports neither library."""
    # huggingface_hub's deprecation of an argument that diffusers' loader passes: not the user's call
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    for name, fragments in NOT_ACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))
