"""Generation in CV-VAE latent space: SVD image->video, SD-based text->video, presets, adapters.

Submodules import diffusers/transformers lazily; import what you need, e.g.
``from cvvae.pipelines.api import GenerationSettings, generate``.
"""
