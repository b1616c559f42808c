"""Text -> video with SD backbones in CV-VAE latent space.

- :class:`CVVAEAnimateDiffPipeline`: diffusers' AnimateDiff (SD 1.5 UNet + motion adapter) with
  CV-VAE as its ``vae``; 16 latent frames decode into 61 frames. The SD UNet's latents are divided
  by ``scaling_factor`` once, right before CV-VAE decodes them.
- :class:`CVVAETextImageVideoPipeline`: SD 2.1 text -> image latent, decoded by CV-VAE in image mode
  (one latent frame -> one frame: the image-compatibility claim), then SVD image -> video
  (:class:`~cvvae.pipelines.svd.CVVAEVideoPipeline`).

Frame rate: the user sets the output fps; AnimateDiff has no fps conditioning, so the rate only
sets playback (``fps / 4`` for the native VAE, one frame per latent).
"""

from __future__ import annotations

import torch
from diffusers import AnimateDiffPipeline, DiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from diffusers.video_processor import VideoProcessor

from ..errors import InputError
from .svd import (
    OUTPUT_TYPES,
    VAE_CHOICES,
    CVVAEVideoOutput,
    CVVAEVideoPipeline,
    check_frames_and_size,
    decode_cvvae,
)


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("text-to-video needs a non-empty prompt")
    return prompt


def _check_common(num_latent_frames, height, width, output_type, vae) -> None:
    check_frames_and_size(num_latent_frames, height, width)
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if vae not in VAE_CHOICES:
        raise InputError(f"vae must be 'cvvae' or 'native', got {vae!r}")


class CVVAEAnimateDiffPipeline(AnimateDiffPipeline):
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
        DiffusionPipeline.__init__(self)
        if isinstance(unet, UNet2DConditionModel):
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            motion_adapter=motion_adapter,
            scheduler=scheduler,
            native_vae=native_vae,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self.vae_scale_factor = vae.config.spatial_n_compress
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        self._decode_with = "cvvae"
        self._tiling: dict = {}

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 16) -> torch.Tensor:
        """UNet latents [B, 4, n, h, w] -> video [B, 3, T, H, W] in [-1, 1] (scaling undone once)."""
        if self._decode_with == "cvvae":
            return decode_cvvae(self.vae, latents / self.vae.config.scaling_factor, self._tiling)
        if self.native_vae is None:
            raise InputError("vae='native' needs the backbone's own VAE, which this pipeline was built without")
        b, _, n = latents.shape[:3]
        z = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / self.native_vae.config.scaling_factor  # [(B n), 4, h, w]
        z = z.to(self.native_vae.dtype)
        chunk = self._tiling.get("frames_per_window") or len(z)
        frames = torch.cat([self.native_vae.decode(z[i : i + chunk]).sample for i in range(0, len(z), chunk)])
        return frames.reshape(b, n, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()  # -> [B, 3, n, H, W]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_latent_frames: int = 16,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        fps: float = 32.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        vae: str = "cvvae",
        decode_frames_per_window: int | None = None,
        decode_tile_size: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ):
        """Generate ``1 + 4 (n - 1)`` frames (``n`` with ``vae="native"``) from a prompt.

        Steps: 1. check inputs, 2. decode settings, 3. AnimateDiff's own sampling, whose decode goes
        through :meth:`decode_latents`.
        """
        check_prompt(prompt)  # 1
        _check_common(num_latent_frames, height, width, output_type, vae)
        self._decode_with = vae  # 2
        self._tiling = {
            k: v for k, v in (("frames_per_window", decode_frames_per_window), ("tile_size", decode_tile_size)) if v
        }
        frames = super().__call__(  # 3
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            num_frames=num_latent_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            return_dict=False,
        )[0]
        out_fps = fps if vae == "cvvae" else fps / 4
        out = CVVAEVideoOutput(frames=frames, fps=out_fps, conditioning_fps=-1)
        return out if return_dict else (frames,)


class CVVAETextImageVideoPipeline:
    """SD 2.1 text -> image (decoded by CV-VAE in image mode) -> SVD image -> video in CV-VAE space."""

    def __init__(self, t2i: DiffusionPipeline, video: CVVAEVideoPipeline):
        self.t2i = t2i  # a StableDiffusionPipeline whose `vae` is SD's own (used only for its config)
        self.video = video
        self.keyframe = None  # the last generated conditioning image (PIL)

    def set_progress_bar_config(self, **kwargs) -> None:
        self.t2i.set_progress_bar_config(**kwargs)
        self.video.set_progress_bar_config(**kwargs)

    @torch.no_grad()
    def text_to_image(self, prompt, negative_prompt, height, width, steps, guidance_scale, generator):
        """SD 2.1 latent [1, 4, h, w] -> CV-VAE image-mode decode -> PIL image."""
        latent = self.t2i(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="latent",
        ).images
        vae = self.video.vae
        z = latent[:, :, None] / vae.config.scaling_factor  # [B, 4, h, w] -> [B, 4, 1, h, w]
        image = vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample[:, :, 0].float()  # [B, 3, H, W]
        return self.video.video_processor.postprocess(image, output_type="pil")[0]

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 25,
        height: int = 576,
        width: int = 1024,
        generator: torch.Generator | None = None,
        **video_kwargs,
    ):
        """1. check, 2. text -> keyframe, 3. keyframe -> video (SVD controls in ``video_kwargs``)."""
        check_prompt(prompt)  # 1
        check_frames_and_size(video_kwargs.get("num_latent_frames", 25), height, width)
        self.keyframe = self.text_to_image(  # 2
            prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, generator
        )
        return self.video(  # 3
            self.keyframe,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            generator=generator,
            **video_kwargs,
        )
