"""Builders of each backbone's pipeline in CV-VAE space, from hub ids, local folders or ``tiny``.

A builder takes the :class:`~cvvae.pipelines.api.PipelineBundle` (its components, dtype and loaded
CV-VAEs) and returns the pipeline; :mod:`cvvae.pipelines.backbones` names which builder a backbone uses.
Loading never hangs on a missing model: offline or absent weights raise
:class:`~cvvae.errors.ModelLoadError` naming the model and how to provide it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from ..hub import cache_first, hub_error, looks_local


def from_pretrained(cls, name: str, what: str, dtype, **kwargs):
    """``cls.from_pretrained`` with the fp16 variant on the hub when it exists, and actionable errors."""
    import torch

    local = looks_local(name)
    if local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"{what} folder {name} does not exist")
    attempts = [{"variant": "fp16"}, {}] if dtype == torch.float16 and not local else [{}]
    err: Exception | None = None
    for extra in attempts:
        try:
            if local:
                return cls.from_pretrained(name, dtype=dtype, **kwargs, **extra)
            return cache_first(cls.from_pretrained, name, dtype=dtype, **kwargs, **extra)
        except ModelLoadError:
            raise  # the hub cannot be reached: no point trying other variants
        except (OSError, ValueError) as e:  # missing files, no such variant
            err = e
    if local:
        raise ModelLoadError(f"could not load {what} from {name}: {str(err).splitlines()[0][:300]}") from err
    raise hub_error(name, kwargs.get("subfolder"), err) from err


def check_tokenizer(tokenizer, name: str) -> None:
    """An offline CLIPTokenizer can come back with only 2 tokens instead of failing: refuse it."""
    if tokenizer is None or len(tokenizer) <= 2:
        raise ModelLoadError(
            f"the tokenizer of {name} is empty (its vocabulary files are missing, e.g. offline without a cache); "
            "download the model once with network access or pass a complete local folder"
        )


def _cast(pipe, name: str, dtype):
    """Tiny components are built in fp32; loaded ones already have ``dtype`` (no needless casts)."""
    import torch

    return pipe.to(dtype=dtype) if name == "tiny" and dtype != torch.float32 else pipe


def build_svd(bundle):
    """The SVD image->video pipeline in CV-VAE space (``native_vae``: SVD's temporal decoder)."""
    components, vae, dtype = bundle.components, bundle.cvvae("sd21"), bundle.dtype
    from .svd import CVVAEVideoPipeline

    name = components["svd"]
    if name == "tiny":
        from .tiny import build_tiny_svd

        parts = {**build_tiny_svd(), "vae": vae}
    else:
        from diffusers import StableVideoDiffusionPipeline

        base = from_pretrained(StableVideoDiffusionPipeline, name, "SVD", dtype)
        parts = dict(base.components, native_vae=base.vae, vae=vae)
    return _cast(CVVAEVideoPipeline(**parts), name, dtype)


def _load_sd(name: str, what: str, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = from_pretrained(
        StableDiffusionPipeline, name, what, dtype, safety_checker=None, requires_safety_checker=False
    )
    check_tokenizer(pipe.tokenizer, name)
    return pipe


def build_animatediff(bundle):
    """AnimateDiff (SD 1.5 UNet + motion adapter) in CV-VAE space (``native_vae``: SD's image VAE)."""
    components, vae, dtype = bundle.components, bundle.cvvae("sd21"), bundle.dtype
    from .animatediff import CVVAEAnimateDiffPipeline

    if components["sd15"] == "tiny":
        from .tiny import build_tiny_animatediff

        parts = {**build_tiny_animatediff(), "vae": vae}
    else:
        from diffusers import DDIMScheduler, MotionAdapter

        sd = _load_sd(components["sd15"], "SD 1.5", dtype)
        adapter = from_pretrained(MotionAdapter, components["motion_adapter"], "AnimateDiff motion adapter", dtype)
        scheduler = DDIMScheduler.from_config(  # the scheduler AnimateDiff was trained with
            sd.scheduler.config, beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
        )
        parts = dict(
            unet=sd.unet,
            motion_adapter=adapter,
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            scheduler=scheduler,
            native_vae=sd.vae,
            vae=vae,
        )
    pipe = _cast(CVVAEAnimateDiffPipeline(**parts), components["sd15"], dtype)
    if pipe.unet.dtype != dtype:  # UNetMotionModel.from_unet2d may build in fp32
        pipe.unet.to(dtype=dtype)
    return pipe


def build_sd21(bundle):
    """SD 2.1 text->image whose latent CV-VAE decodes, then SVD; shares the modules of the bundle's SVD pipeline."""
    import torch

    components, video, dtype = bundle.components, bundle.pipeline("svd"), bundle.dtype
    from .sd21 import CVVAETextImageVideoPipeline

    if components["sd21"] == "tiny":
        from .tiny import build_tiny_sd21

        t2i = {k: v.to(dtype=dtype) if isinstance(v, torch.nn.Module) else v for k, v in build_tiny_sd21().items()}
    else:
        t2i = _load_sd(components["sd21"], "SD 2.1", dtype).components
    return CVVAETextImageVideoPipeline(
        vae=video.vae,
        text_encoder=t2i["text_encoder"],
        tokenizer=t2i["tokenizer"],
        unet=t2i["unet"],
        scheduler=t2i["scheduler"],
        image_encoder=video.image_encoder,
        feature_extractor=video.feature_extractor,
        video_unet=video.unet,
        video_scheduler=video.scheduler,
        native_vae=video.native_vae,
    )


def build_sd3(bundle):
    """SD3 text->image whose latents CV-VAE-SD3 decodes (``native_vae``: SD3's own image VAE)."""
    components, vae, dtype = bundle.components, bundle.cvvae("sd3"), bundle.dtype
    from .sd3 import CVVAESD3ImagePipeline

    name = components["sd3"]
    if name == "tiny":
        from .tiny import build_tiny_sd3

        parts = {**build_tiny_sd3(), "vae": vae}
    else:
        from diffusers import StableDiffusion3Pipeline

        base = from_pretrained(StableDiffusion3Pipeline, name, "SD3", dtype)
        check_tokenizer(base.tokenizer, name)
        parts = {k: v for k, v in base.components.items() if k not in ("vae", "image_encoder", "feature_extractor")}
        parts.update(native_vae=base.vae, vae=vae)
    return _cast(CVVAESD3ImagePipeline(**parts), name, dtype)
