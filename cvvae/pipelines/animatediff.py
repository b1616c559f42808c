"""Text -> video with AnimateDiff (SD 1.5 UNet + motion adapter) in CV-VAE latent space.

diffusers' AnimateDiff sampling runs with ``output_type="latent"``; the ``n`` denoised latents cross the
latent boundary once (``cvvae.latents``) and CV-VAE decodes them into ``1 + 4 (n - 1)`` frames (16
latents -> 61 frames), or SD's image VAE into ``n`` frames (``vae="native"``).

AnimateDiff has no fps conditioning: the output fps only sets playback.
"""

from __future__ import annotations

import torch
from diffusers import AnimateDiffPipeline
from diffusers.video_processor import VideoProcessor

from ..errors import InputError
from .decoding import CVVAEDecodingMixin, CVVAEVideoOutput, check_frames_and_size, check_output_choices
from .defaults import ANIMATEDIFF


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("text-to-video needs a non-empty prompt")
    return prompt


class CVVAEAnimateDiffPipeline(CVVAEDecodingMixin, AnimateDiffPipeline):
    """AnimateDiff with CV-VAE as ``vae`` and SD's own image VAE as the optional ``native_vae``."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae->native_vae"
    _optional_components = ["feature_extractor", "image_encoder", "motion_adapter", "native_vae"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        motion_adapter,
        scheduler,
        native_vae=None,
        feature_extractor=None,
        image_encoder=None,
    ):
        # The parent reads vae.config.block_out_channels, which CV-VAE's released config does not have:
        # build it without a VAE, then register both VAEs.
        super().__init__(
            vae=None,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            motion_adapter=motion_adapter,
            scheduler=scheduler,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self.register_modules(vae=vae, native_vae=native_vae)
        self.vae_scale_factor = vae.config.spatial_n_compress
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_latent_frames: int = ANIMATEDIFF.num_latent_frames,
        height: int = ANIMATEDIFF.height,
        width: int = ANIMATEDIFF.width,
        num_inference_steps: int = ANIMATEDIFF.steps,
        guidance_scale: float = ANIMATEDIFF.guidance,
        fps: float = ANIMATEDIFF.fps,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vae: str = "cvvae",
        decode_tiling: dict | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ):
        """Generate ``1 + 4 (n - 1)`` frames (``n`` with ``vae="native"``) from a prompt.

        Steps: 1. check inputs, 2. AnimateDiff's own sampling in latent space, 3. decode with the
        chosen VAE (``decode_tiling``: changes to its tiling for this call, ``cvvae.tiling.tiling_changes``).
        """
        check_prompt(prompt)  # 1
        check_frames_and_size(num_latent_frames, height, width)
        check_output_choices(output_type, vae)
        denoised = super().__call__(  # 2
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            num_frames=num_latent_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
            output_type="latent",
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            return_dict=False,
        )[0]
        frames = self.finish(denoised, output_type, vae, decode_tiling)  # 3
        out = CVVAEVideoOutput(frames=frames, fps=self.frame_rate(fps, vae))
        return out if return_dict else (frames,)
