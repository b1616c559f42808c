"""Text -> image -> video: SD 2.1 makes a keyframe latent, CV-VAE decodes it in image mode, SVD animates it.

The keyframe shows CV-VAE's image compatibility: SD 2.1's UNet latent crosses the latent boundary
(``cvvae.latents``) and one latent frame decodes into one image. That image then conditions
:class:`~cvvae.pipelines.svd.CVVAEVideoPipeline`. Both stages share this pipeline's components, so
``to()``, ``enable_model_cpu_offload()`` and ``save_pretrained()`` act on all of them.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from .animatediff import check_prompt
from .decoding import CVVAEDecodingMixin, CVVAEVideoOutput, check_frames_and_size
from .defaults import SVD_XT
from .svd import CVVAEVideoPipeline


class CVVAETextImageVideoPipeline(CVVAEDecodingMixin, DiffusionPipeline):
    """SD 2.1 (``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``) for the keyframe, SVD
    (``image_encoder``, ``feature_extractor``, ``video_unet``, ``video_scheduler``) for the video, and
    CV-VAE (``vae``) for both; ``native_vae`` is SVD's own VAE (optional, for comparisons)."""

    model_cpu_offload_seq = "text_encoder->unet->image_encoder->video_unet->vae->native_vae"
    _optional_components = ["native_vae"]
    frames_first = True  # the video stage is SVD's

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        image_encoder,
        feature_extractor,
        video_unet,
        video_scheduler,
        native_vae=None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            video_unet=video_unet,
            video_scheduler=video_scheduler,
            native_vae=native_vae,
        )

    def _stage(self, pipe: DiffusionPipeline) -> DiffusionPipeline:
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def text_to_image_pipeline(self) -> StableDiffusionPipeline:
        """The keyframe stage: SD 2.1 sampling that stops at its latent (no image VAE needed)."""
        pipe = StableDiffusionPipeline(
            vae=None,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        return self._stage(pipe)

    def image_to_video_pipeline(self) -> CVVAEVideoPipeline:
        """The video stage, sharing this pipeline's modules."""
        pipe = CVVAEVideoPipeline(
            vae=self.vae,
            image_encoder=self.image_encoder,
            unet=self.video_unet,
            scheduler=self.video_scheduler,
            feature_extractor=self.feature_extractor,
            native_vae=self.native_vae,
        )
        return self._stage(pipe)

    @torch.no_grad()
    def text_to_image(self, prompt, negative_prompt, height, width, steps, guidance_scale, generator):
        """SD 2.1 latent ``[1, 4, h, w]`` -> CV-VAE image-mode decode -> PIL keyframe."""
        latent = self.text_to_image_pipeline()(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="latent",
        ).images  # [B, 4, h, w]
        image = self.decode_video(latent)[:, :, 0]  # [B, 3, 1, H, W] -> [B, 3, H, W] in [-1, 1]
        return self.image_to_video_pipeline().video_processor.postprocess(image, output_type="pil")[0]

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        guidance_scale: float = SVD_XT.guidance,
        num_inference_steps: int = SVD_XT.steps,
        height: int = SVD_XT.height,
        width: int = SVD_XT.width,
        num_latent_frames: int = SVD_XT.num_latent_frames,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **video_kwargs,
    ):
        """1. check, 2. text -> keyframe, 3. keyframe -> video (SVD controls in ``video_kwargs``, see
        :meth:`CVVAEVideoPipeline.__call__`). The output's ``keyframe`` is the conditioning image."""
        check_prompt(prompt)  # 1
        check_frames_and_size(num_latent_frames, height, width)
        keyframe = self.text_to_image(  # 2
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, generator
        )
        out = self.image_to_video_pipeline()(  # 3
            keyframe,
            num_latent_frames=num_latent_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            generator=generator,
            **video_kwargs,
        )
        self.maybe_free_model_hooks()
        out = CVVAEVideoOutput(
            frames=out.frames, fps=out.fps, conditioning_fps=out.conditioning_fps, keyframe=keyframe
        )
        return out if return_dict else (out.frames,)
