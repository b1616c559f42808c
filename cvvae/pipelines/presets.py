"""Model presets (hub ids of the released models, or ``tiny``) and loading of pipeline components.

Every component can be replaced by a local folder: ``components={"svd": "/models/svd-xt",
"cvvae": "/models/cv-vae/vae3d_v1-1"}``. Loading never hangs on a missing model: offline or absent
weights raise :class:`~cvvae.errors.ModelLoadError` naming the model and how to provide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, ModelLoadError
from ..hub import CVVAE_HUB_ID, cache_first, hub_error, looks_local
from .defaults import ANIMATEDIFF, SD3, SVD, SVD_XT, TINY_IMAGE, TINY_TEXT, TINY_VIDEO, Defaults

COMPONENT_KEYS = ("cvvae", "svd", "sd21", "sd15", "motion_adapter", "sd3")
BACKBONES = ("svd", "animatediff", "sd21", "sd3")  # sd21: text -> image (SD 2.1) -> video (SVD); sd3: text -> image


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    components: dict = field(default_factory=dict)  # key in COMPONENT_KEYS -> hub id or folder ("tiny": random)
    t2v_backbone: str = "animatediff"
    svd: Defaults = SVD_XT
    animatediff: Defaults = ANIMATEDIFF
    sd3: Defaults = SD3

    @property
    def random_weights(self) -> bool:
        return self.name == "tiny"

    def defaults(self, backbone: str) -> Defaults:
        return {"animatediff": self.animatediff, "sd3": self.sd3}.get(backbone, self.svd)


_REAL = {
    "cvvae": CVVAE_HUB_ID,
    "svd": "stabilityai/stable-video-diffusion-img2vid-xt",
    "sd21": "stabilityai/stable-diffusion-2-1-base",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
}
PRESETS: dict[str, Preset] = {
    "svd-xt": Preset("svd-xt", "SVD-XT image->video, 25 latents -> 97 frames at 576x1024", dict(_REAL)),
    "svd": Preset(
        "svd",
        "SVD image->video, 14 latents -> 53 frames at 576x1024",
        {**_REAL, "svd": "stabilityai/stable-video-diffusion-img2vid"},
        svd=SVD,
    ),
    "animatediff": Preset("animatediff", "AnimateDiff (SD 1.5) text->video, 16 latents -> 61 frames", dict(_REAL)),
    "sd21": Preset(
        "sd21", "SD 2.1 text->image, then SVD-XT image->video (97 frames)", dict(_REAL), t2v_backbone="sd21"
    ),
    "sd3": Preset("sd3", "SD3 text->image decoded by CV-VAE-SD3 (16 latent channels), 1024x1024", dict(_REAL)),
    "tiny": Preset(
        "tiny",
        "tiny RANDOM components built in-process (tests, machines without weights)",
        dict.fromkeys(COMPONENT_KEYS, "tiny"),
        svd=TINY_VIDEO,
        animatediff=TINY_TEXT,
        sd3=TINY_IMAGE,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_components(items) -> dict:
    """``["svd=/models/svd-xt", ...]`` (or ``(name, value)`` pairs, or a dict) -> ``{"svd": "/models/svd-xt"}``."""
    pairs = items.items() if isinstance(items, dict) else items or ()
    out = {}
    for item in pairs:
        name, sep, value = item.partition("=") if isinstance(item, str) else (item[0], "=", item[1])
        name, value = str(name).strip(), str(value).strip()
        if not sep or not name or not value:
            raise InputError(f"a component takes NAME=PATH_OR_HUB_ID (e.g. svd=/models/svd-xt), got {item!r}")
        if name not in COMPONENT_KEYS:
            raise InputError(f"unknown component {name!r}; known: {', '.join(COMPONENT_KEYS)}")
        out[name] = value
    return out


def from_pretrained(cls, name: str, what: str, dtype: torch.dtype, **kwargs):
    """``cls.from_pretrained`` with the fp16 variant on the hub when it exists, and actionable errors."""
    local = looks_local(name)
    if local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"{what} folder {name} does not exist")
    attempts = [{"variant": "fp16"}, {}] if dtype == torch.float16 and not local else [{}]
    err: Exception | None = None
    for extra in attempts:
        try:
            if local:
                return cls.from_pretrained(name, torch_dtype=dtype, **kwargs, **extra)
            return cache_first(cls.from_pretrained, name, torch_dtype=dtype, **kwargs, **extra)
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


def _cast(pipe, name: str, dtype: torch.dtype):
    """Tiny components are built in fp32; loaded ones already have ``dtype`` (no needless casts)."""
    return pipe.to(dtype=dtype) if name == "tiny" and dtype != torch.float32 else pipe


def build_svd(components: dict, vae, dtype: torch.dtype):
    """The SVD image->video pipeline in CV-VAE space (``native_vae``: SVD's temporal decoder)."""
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


def _load_sd(name: str, what: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    pipe = from_pretrained(
        StableDiffusionPipeline, name, what, dtype, safety_checker=None, requires_safety_checker=False
    )
    check_tokenizer(pipe.tokenizer, name)
    return pipe


def build_animatediff(components: dict, vae, dtype: torch.dtype):
    """AnimateDiff (SD 1.5 UNet + motion adapter) in CV-VAE space (``native_vae``: SD's image VAE)."""
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


def build_sd21(components: dict, video, dtype: torch.dtype):
    """SD 2.1 text->image whose latent CV-VAE decodes, then SVD; shares the modules of ``video`` (the SVD pipeline)."""
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


def build_sd3(components: dict, vae, dtype: torch.dtype):
    """SD3 text->image whose latents CV-VAE-SD3 decodes (``native_vae``: SD3's own image VAE)."""
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
