"""Text -> image with Stable Diffusion 3, decoded by the SD3-compatible CV-VAE in image mode.

diffusers' SD3 sampling runs with ``output_type="latent"``; the latent crosses the latent boundary once
(``cvvae.latents``: ``latent / 1.5305 + 0.0609``, the convention SD3's own VAE uses) and one latent frame
decodes into one image. ``vae="native"`` decodes the same latent with SD3's image VAE, for comparison.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.image_processor import VaeImageProcessor

from .animatediff import check_prompt
from .decoding import CVVAEDecodingMixin, CVVAEVideoOutput, check_output_choices
from .defaults import SD3


class CVVAESD3ImagePipeline(CVVAEDecodingMixin, StableDiffusion3Pipeline):
    """diffusers' SD3 pipeline with CV-VAE-SD3 as ``vae`` and SD3's own VAE as the optional ``native_vae``."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae->native_vae"
    _optional_components = ["image_encoder", "feature_extractor", "text_encoder_3", "tokenizer_3", "native_vae"]

    def __init__(self, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer, scheduler,
                 text_encoder_3=None, tokenizer_3=None, native_vae=None, image_encoder=None,
                 feature_extractor=None):  # fmt: skip
        # The parent reads vae.config.block_out_channels for the scale factor: build it without a VAE, then
        # register both VAEs (CV-VAE-SD3 also downsamples 8x).
        super().__init__(
            transformer=transformer,
            scheduler=scheduler,
            vae=None,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_modules(vae=vae, native_vae=native_vae)
        self.vae_scale_factor = vae.config.spatial_n_compress
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def decode_image(self, latents: torch.Tensor, vae: str = "cvvae") -> torch.Tensor:
        """SD3 latents ``[B, 16, h, w]`` -> images ``[B, 3, H, W]`` in [-1, 1] (CV-VAE-SD3 or SD3's own VAE)."""
        return self.decode_video(latents, vae)[:, :, 0]  # one latent frame -> one image

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        height: int = SD3.height,
        width: int = SD3.width,
        num_inference_steps: int = SD3.steps,
        guidance_scale: float = SD3.guidance,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vae: str = "cvvae",
        callback_on_step_end=None,
        return_dict: bool = True,
    ):
        """1. check, 2. SD3's sampling in latent space, 3. decode with the chosen VAE."""
        check_prompt(prompt)  # 1
        check_output_choices(output_type, vae)
        denoised = super().__call__(  # 2
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
            output_type="latent",
            callback_on_step_end=callback_on_step_end,
            return_dict=False,
        )[0]
        if output_type == "latent":
            images = denoised
        else:
            images = self.image_processor.postprocess(self.decode_image(denoised, vae), output_type=output_type)  # 3
            self.maybe_free_model_hooks()
        out = CVVAEVideoOutput(frames=images, fps=0.0)
        return out if return_dict else (images,)
