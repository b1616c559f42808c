"""Image -> video with Stable Video Diffusion in CV-VAE latent space.

The SVD UNet runs unchanged; only the VAE differs. diffusers' own SVD sampling loop runs with
``output_type="latent"``; this pipeline routes its conditioning through ``cvvae.pipelines.conditioning``
(the functions the fine-tuning objective uses) and decodes the denoised latents itself:

- the conditioning image gets SVD's noise augmentation in pixels, is encoded by CV-VAE as one
  latent frame (posterior mode) and enters the UNet **unscaled**, as SVD was trained;
- the ``n`` denoised latents cross the latent boundary once (``cvvae.latents``) and CV-VAE decodes
  them into ``1 + 4 (n - 1)`` frames, or SVD's temporal decoder into ``n`` frames (``vae="native"``).

Frame rate: the user sets the *output* fps; the UNet is conditioned on ``fps / 4 - 1``
(``conditioning.fps_id``), which ``conditioning_fps`` overrides.
"""

from __future__ import annotations

import torch
from diffusers import StableVideoDiffusionPipeline
from diffusers.video_processor import VideoProcessor

from ..errors import InputError
from ..vaes import as_video_vae
from . import conditioning
from .decoding import CVVAEDecodingMixin, CVVAEVideoOutput, check_frames_and_size, check_output_choices
from .defaults import MAX_GUIDANCE, MIN_GUIDANCE, MOTION_BUCKET_ID, NOISE_AUG_STRENGTH, SVD_XT


class CVVAEVideoPipeline(CVVAEDecodingMixin, StableVideoDiffusionPipeline):
    """diffusers' SVD pipeline with CV-VAE as ``vae`` and SVD's own VAE as the optional ``native_vae``."""

    model_cpu_offload_seq = "image_encoder->unet->vae->native_vae"
    _optional_components = ["native_vae"]
    frames_first = True  # the SVD UNet's latents are [B, n, C, h, w]

    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor, native_vae=None):
        # The parent reads vae.config.block_out_channels, which CV-VAE's released config does not have:
        # build it without a VAE, then register both VAEs.
        super().__init__(
            vae=None, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
        )
        self.register_modules(vae=vae, native_vae=native_vae)
        self.vae_scale_factor = as_video_vae(vae).spatial_factor
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.vae_scale_factor)

    # ----------------------------------------------------------------------------- conditioning

    def _encode_image(self, image, device, num_videos_per_prompt, do_classifier_free_guidance):
        """CLIP embedding of the conditioning image through ``conditioning.clip_image_embeds``."""
        if not isinstance(image, torch.Tensor):
            image = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(image)) * 2.0 - 1.0
        embeds = conditioning.clip_image_embeds(self.image_encoder, self.feature_extractor, image.to(device))
        embeds = embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        return embeds

    def _encode_vae_image(self, image, device, num_videos_per_prompt, do_classifier_free_guidance):
        """The noise-augmented conditioning image -> raw CV-VAE latent through ``conditioning.image_latent``."""
        latents = conditioning.image_latent(self.vae, image.to(device))
        latents = latents.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance:
            latents = torch.cat([torch.zeros_like(latents), latents])
        return latents

    # ----------------------------------------------------------------------------- call

    def check_call(self, image, num_latent_frames, height, width, output_type, vae) -> None:
        if image is None:
            raise InputError("image-to-video needs a conditioning image")
        check_frames_and_size(num_latent_frames, height, width)
        check_output_choices(output_type, vae)

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_latent_frames: int = SVD_XT.num_latent_frames,
        height: int = SVD_XT.height,
        width: int = SVD_XT.width,
        num_inference_steps: int = SVD_XT.steps,
        fps: float = SVD_XT.fps,
        conditioning_fps: float | None = None,
        motion_bucket_id: int = MOTION_BUCKET_ID,
        noise_aug_strength: float = NOISE_AUG_STRENGTH,
        min_guidance_scale: float = MIN_GUIDANCE,
        max_guidance_scale: float = MAX_GUIDANCE,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vae: str = "cvvae",
        decode_tiling: dict | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ):
        """Generate ``1 + 4 (n - 1)`` frames (``n`` with ``vae="native"``) from one image.

        Steps: 1. check inputs, 2. fps id, 3. SVD's own sampling in latent space (CLIP embedding,
        noise-augmented CV-VAE image latent, Euler loop with per-frame guidance), 4. decode with the
        chosen VAE (``decode_tiling``: changes to its tiling for this call, ``cvvae.tiling.tiling_changes``).
        """
        self.check_call(image, num_latent_frames, height, width, output_type, vae)  # 1
        cond_fps = (
            conditioning.fps_id(fps, as_video_vae(self.vae).temporal_factor)
            if conditioning_fps is None
            else float(conditioning_fps)
        )  # 2
        denoised = super().__call__(  # 3 (diffusers subtracts 1 from fps: pass the id + 1)
            image,
            height=height,
            width=width,
            num_frames=num_latent_frames,
            num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale,
            max_guidance_scale=max_guidance_scale,
            fps=cond_fps + 1,
            motion_bucket_id=motion_bucket_id,
            noise_aug_strength=noise_aug_strength,
            generator=generator,
            latents=latents,
            output_type="latent",
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            return_dict=False,
        )
        frames = self.finish(denoised, output_type, vae, decode_tiling)  # 4
        out = CVVAEVideoOutput(frames=frames, fps=self.frame_rate(fps, vae), conditioning_fps=cond_fps)
        return out if return_dict else (frames,)
