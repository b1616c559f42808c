"""Model presets (hub ids of the released models, or ``tiny``) and loading of pipeline components.

Every component can be replaced by a local folder: ``components={"svd": "/models/svd-xt",
"cvvae": "/models/cv-vae/vae3d_v1-1"}``. Loading never hangs on a missing model: offline or absent
weights raise :class:`~cvvae.errors.ModelLoadError` naming the model and how to provide it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, ModelLoadError
from ..loading import hub_error, load_vae

CVVAE_HUB_ID = "AILab-CVC/CV-VAE"
CVVAE_SUBFOLDERS = ("vae3d_v1-1", "vae3d")
COMPONENT_KEYS = ("cvvae", "svd", "sd21", "sd15", "motion_adapter")
BACKBONES = ("svd", "animatediff", "sd21")  # sd21 = text -> image (SD 2.1) -> video (SVD)


@dataclass(frozen=True)
class Defaults:
    """What a backbone generates when the user does not say: latents, size, steps, output fps."""

    num_latent_frames: int
    height: int
    width: int
    steps: int
    fps: float  # output fps = 4 x the backbone's native fps, so the clip lasts as long as its own


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    components: dict = field(default_factory=dict)  # key in COMPONENT_KEYS -> hub id or folder ("tiny": random)
    t2v_backbone: str = "animatediff"
    svd: Defaults = Defaults(25, 576, 1024, 25, 28.0)  # SVD-XT: 25 latents -> 97 frames, 7 fps x 4
    animatediff: Defaults = Defaults(16, 512, 512, 25, 32.0)  # 16 latents -> 61 frames, 8 fps x 4

    @property
    def random_weights(self) -> bool:
        return self.name == "tiny"

    def defaults(self, backbone: str) -> Defaults:
        return self.animatediff if backbone == "animatediff" else self.svd


_REAL = {
    "cvvae": CVVAE_HUB_ID,
    "svd": "stabilityai/stable-video-diffusion-img2vid-xt",
    "sd21": "stabilityai/stable-diffusion-2-1-base",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2",
}
PRESETS: dict[str, Preset] = {
    "svd-xt": Preset("svd-xt", "SVD-XT image->video, 25 latents -> 97 frames at 576x1024", dict(_REAL)),
    "svd": Preset(
        "svd",
        "SVD image->video, 14 latents -> 53 frames at 576x1024",
        {**_REAL, "svd": "stabilityai/stable-video-diffusion-img2vid"},
        svd=Defaults(14, 576, 1024, 25, 24.0),
    ),
    "animatediff": Preset("animatediff", "AnimateDiff (SD 1.5) text->video, 16 latents -> 61 frames", dict(_REAL)),
    "sd21": Preset(
        "sd21", "SD 2.1 text->image, then SVD-XT image->video (97 frames)", dict(_REAL), t2v_backbone="sd21"
    ),
    "tiny": Preset(
        "tiny",
        "tiny RANDOM components built in-process (tests, machines without weights)",
        dict.fromkeys(COMPONENT_KEYS, "tiny"),
        svd=Defaults(3, 64, 64, 2, 28.0),
        animatediff=Defaults(3, 64, 64, 2, 32.0),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _is_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(".") or Path(name).exists()


def from_pretrained(cls, name: str, what: str, dtype: torch.dtype, **kwargs):
    """``cls.from_pretrained`` with the fp16 variant on the hub when it exists, and actionable errors."""
    if _is_local(name) and not Path(name).is_dir():
        raise ModelLoadError(f"{what} folder {name} does not exist")
    attempts = [{"variant": "fp16"}, {}] if dtype == torch.float16 and not _is_local(name) else [{}]
    err: Exception | None = None
    for extra in attempts:
        try:
            return cls.from_pretrained(name, torch_dtype=dtype, **kwargs, **extra)
        except (OSError, ValueError) as e:  # missing files, offline, no such variant
            err = e
    if _is_local(name):
        raise ModelLoadError(f"could not load {what} from {name}: {str(err).splitlines()[0][:300]}") from err
    raise hub_error(name, kwargs.get("subfolder"), err) from err


def check_tokenizer(tokenizer, name: str) -> None:
    """An offline CLIPTokenizer can come back with only 2 tokens instead of failing: refuse it."""
    if tokenizer is None or len(tokenizer) <= 2:
        raise ModelLoadError(
            f"the tokenizer of {name} is empty (its vocabulary files are missing, e.g. offline without a cache); "
            "download the model once with network access or pass a complete local folder"
        )


def load_cvvae(name: str, subfolder: str | None, dtype: torch.dtype):
    """CV-VAE from the hub (``subfolder`` vae3d_v1-1 or vae3d), a local folder or ``tiny``."""
    dtype = None if dtype == torch.float32 else dtype  # built/saved in fp32: no cast needed
    if name == "tiny":
        return load_vae("tiny", dtype=dtype)
    if subfolder not in (None, *CVVAE_SUBFOLDERS):
        raise InputError(f"cvvae subfolder must be one of {', '.join(CVVAE_SUBFOLDERS)}, got {subfolder!r}")
    if _is_local(name):
        folder = Path(name)
        subfolder = subfolder if subfolder and (folder / subfolder / "config.json").is_file() else None
    return load_vae(name, subfolder=subfolder, dtype=dtype)


def _cast(pipe, name: str, dtype: torch.dtype):
    """Tiny components are built in fp32; loaded ones already have ``dtype`` (no needless casts)."""
    return pipe.to(dtype=dtype) if name == "tiny" and dtype != torch.float32 else pipe


def build_svd(components: dict, vae, dtype: torch.dtype):
    """The SVD image->video pipeline in CV-VAE space (``native_vae``: SVD's temporal decoder)."""
    from .svd import CVVAEVideoPipeline

    name = components["svd"]
    if name == "tiny":
        from .tiny import build_tiny_svd

        parts = build_tiny_svd()
        parts["vae"] = vae
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

        parts = build_tiny_animatediff()
        parts["vae"] = vae
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
    """SD 2.1 text->image whose latent CV-VAE decodes, then ``video`` (the SVD pipeline)."""
    from diffusers import StableDiffusionPipeline

    from .animatediff import CVVAETextImageVideoPipeline

    if components["sd21"] == "tiny":
        from .tiny import build_tiny_sd21

        parts = build_tiny_sd21()
        t2i = StableDiffusionPipeline(
            vae=parts["native_vae"],
            text_encoder=parts["text_encoder"],
            tokenizer=parts["tokenizer"],
            unet=parts["unet"],
            scheduler=parts["scheduler"],
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        t2i = _cast(t2i, "tiny", dtype)
    else:
        t2i = _load_sd(components["sd21"], "SD 2.1", dtype)
    return CVVAETextImageVideoPipeline(t2i, video)
