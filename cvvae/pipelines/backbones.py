"""The backbone registry: one record per diffusion backbone, which every front end looks up.

A record says how to build the backbone's pipeline (a builder taking the pipeline bundle), what it
generates (``mode``), its defaults, which CV-VAE variant it decodes with, whether it takes an image and
whether SVD UNet adapters apply, and how resolved settings become its call arguments. Adding a backbone
is its pipeline file plus one :func:`register_backbone` call; nothing else dispatches on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InputError
from . import builders
from .defaults import ANIMATEDIFF, SD3, SVD_XT, TINY_IMAGE, TINY_TEXT, TINY_VIDEO, Defaults

MODES = ("i2v", "t2v", "t2i")  # image -> video, text -> video, text -> image


@dataclass(frozen=True)
class Backbone:
    name: str
    mode: str
    label: str  # how menus name it
    build: Callable  # (PipelineBundle) -> pipeline
    call_kwargs: Callable  # (resolved GenerationSettings, generator, callback) -> the pipeline's arguments
    defaults: Defaults
    tiny_defaults: Defaults  # the random 'tiny' preset's
    components: dict = field(default_factory=dict)  # component key -> the released model's hub id
    vae_variant: str = "sd21"  # sd21: 4 latent channels (SD 1.5 / 2.1, SVD); sd3: 16
    takes_image: bool = False
    adapters: bool = False  # fine-tuned SVD UNet adapters apply
    video: bool = True  # False: one image (t2i)
    max_latent_frames: int | None = None  # what its temporal layers can hold (AnimateDiff's motion module: 32)


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    if backbone.mode not in MODES:
        raise InputError(f"backbone {backbone.name!r}: mode must be one of {', '.join(MODES)}, got {backbone.mode!r}")
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbones_for(mode: str) -> list[str]:
    return [name for name, b in BACKBONES.items() if b.mode == mode]


def output_suffix(mode: str) -> str:
    """Videos are written as ``.mp4``, text -> image results as ``.png``."""
    return ".png" if mode == "t2i" else ".mp4"


def component_keys() -> tuple[str, ...]:
    """Every model a preset or ``--component`` can name: CV-VAE and what the backbones load."""
    return ("cvvae", *dict.fromkeys(k for b in BACKBONES.values() for k in b.components))


# ----------------------------------------------------------------------------- call arguments


def _text(s) -> dict:
    return dict(prompt=s.prompt, negative_prompt=s.negative_prompt, guidance_scale=s.guidance)


def _video(s, generator) -> dict:
    return dict(
        num_latent_frames=s.num_latent_frames,
        height=s.height,
        width=s.width,
        num_inference_steps=s.steps,
        fps=s.fps,
        generator=generator,
    )


def _svd_controls(s) -> dict:
    return dict(
        conditioning_fps=s.conditioning_fps,
        motion_bucket_id=s.motion_bucket_id,
        noise_aug_strength=s.noise_aug_strength,
        min_guidance_scale=s.min_guidance,
        max_guidance_scale=s.max_guidance,
    )


def svd_kwargs(s, generator, callback) -> dict:
    return {**_video(s, generator), **_svd_controls(s), "callback_on_step_end": callback}


def animatediff_kwargs(s, generator, callback) -> dict:
    return {**_video(s, generator), **_text(s), "callback_on_step_end": callback}


def sd21_kwargs(s, generator, callback) -> dict:
    return {**svd_kwargs(s, generator, callback), **_text(s)}


def sd3_kwargs(s, generator, callback) -> dict:
    image = dict(height=s.height, width=s.width, num_inference_steps=s.steps, generator=generator)
    return {**_text(s), **image, "callback_on_step_end": callback}


_SVD_XT = "stabilityai/stable-video-diffusion-img2vid-xt"
for _b in (
    Backbone(
        "svd", "i2v", "Stable Video Diffusion", builders.build_svd, svd_kwargs, SVD_XT, TINY_VIDEO,
        {"svd": _SVD_XT}, takes_image=True, adapters=True,
    ),
    Backbone(
        "animatediff", "t2v", "AnimateDiff", builders.build_animatediff, animatediff_kwargs, ANIMATEDIFF, TINY_TEXT,
        {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
         "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2"}, max_latent_frames=32,
    ),
    Backbone(
        "sd21", "t2v", "SD 2.1 image -> SVD video", builders.build_sd21, sd21_kwargs, SVD_XT, TINY_VIDEO,
        {"svd": _SVD_XT, "sd21": "stabilityai/stable-diffusion-2-1-base"}, adapters=True,
    ),
    Backbone(
        "sd3", "t2i", "SD3 text -> image", builders.build_sd3, sd3_kwargs, SD3, TINY_IMAGE,
        {"sd3": "stabilityai/stable-diffusion-3-medium-diffusers"}, vae_variant="sd3", video=False,
    ),
):  # fmt: skip
    register_backbone(_b)
