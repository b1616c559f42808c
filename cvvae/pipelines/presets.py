"""Model presets: which backbone serves each mode, which models it loads, and defaults that differ.

A preset names models by hub id (the released ones unless it says otherwise), local folder or
``tiny`` (random components built in-process). Every component can be replaced by a local folder:
``components={"svd": "/models/svd-xt", "cvvae": "/models/cv-vae/vae3d_v1-1"}``. The backbones
themselves (builders, defaults, call arguments) are in :mod:`cvvae.pipelines.backbones`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError, ModelLoadError
from ..hub import CVVAE_HUB_ID, missing_models, resolve_subfolder
from ..weights import NANO_ADAPTER, NANO_SVD
from .backbones import BACKBONES, component_keys, get_backbone
from .defaults import NANO, SVD, Defaults


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    components: dict = field(default_factory=dict)  # component key -> hub id or folder; unnamed: the released
    backbones: dict = field(default_factory=lambda: {"i2v": "svd", "t2v": "animatediff", "t2i": "sd3"})
    overrides: dict = field(default_factory=dict)  # backbone -> Defaults that differ from the backbone's
    random_weights: bool = False  # 'tiny': every component random, built in-process
    adapters: dict = field(default_factory=dict)  # label -> adapter folder shipped for this preset (app menus)

    @property
    def t2v_backbone(self) -> str:
        return self.backbones["t2v"]

    def backbone(self, mode: str) -> str:
        """The backbone this preset uses for ``mode`` (``i2v``, ``t2v``, ``t2i``)."""
        if mode not in self.backbones:
            raise InputError(f"preset {self.name!r} has no {mode} backbone")
        return self.backbones[mode]

    def defaults(self, backbone: str) -> Defaults:
        b = get_backbone(backbone)
        return self.overrides.get(backbone) or (b.tiny_defaults if self.random_weights else b.defaults)

    def all_components(self) -> dict:
        """Every component key -> what this preset loads for it."""
        if self.random_weights:
            return dict.fromkeys(component_keys(), "tiny")
        released = {"cvvae": CVVAE_HUB_ID}
        for b in BACKBONES.values():
            released.update(b.components)
        return {**released, **self.components}


PRESETS: dict[str, Preset] = {
    "svd-xt": Preset("svd-xt", "SVD-XT image->video, 25 latents -> 97 frames at 576x1024"),
    "svd": Preset(
        "svd",
        "SVD image->video, 14 latents -> 53 frames at 576x1024",
        {"svd": "stabilityai/stable-video-diffusion-img2vid"},
        overrides={"svd": SVD, "sd21": SVD},
    ),
    "animatediff": Preset("animatediff", "AnimateDiff (SD 1.5) text->video, 16 latents -> 61 frames"),
    "sd21": Preset(
        "sd21",
        "SD 2.1 text->image, then SVD-XT image->video (97 frames)",
        backbones={"i2v": "svd", "t2v": "sd21", "t2i": "sd3"},
    ),
    "sd3": Preset("sd3", "SD3 text->image decoded by CV-VAE-SD3 (16 latent channels), 1024x1024"),
    "nano": Preset(
        "nano",
        "nano SVD (8 M parameters) and nano CV-VAE, small models trained on a CPU: image->video, 17 frames at 64x64",
        {"svd": str(NANO_SVD), "cvvae": "nano"},
        backbones={"i2v": "svd"},
        overrides={"svd": NANO},
        adapters={"nano (tuned to nano CV-VAE)": str(NANO_ADAPTER)},
    ),
    "tiny": Preset(
        "tiny", "tiny RANDOM components built in-process (tests, machines without weights)", random_weights=True
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_components(items) -> dict:
    """``["svd=/models/svd-xt", ...]`` (or ``(name, value)`` pairs, or a dict) -> ``{"svd": "/models/svd-xt"}``."""
    pairs = items.items() if isinstance(items, dict) else items or ()
    keys = component_keys()
    out = {}
    for item in pairs:
        name, sep, value = item.partition("=") if isinstance(item, str) else (item[0], "=", item[1])
        name, value = str(name).strip(), str(value).strip()
        if not sep or not name or not value:
            raise InputError(f"a component takes NAME=PATH_OR_HUB_ID (e.g. svd=/models/svd-xt), got {item!r}")
        if name not in keys:
            raise InputError(f"unknown component {name!r}; known: {', '.join(keys)}")
        out[name] = value
    return out


def check_models(preset: str, backbone: str, components: dict | None = None, cvvae_subfolder: str | None = None):
    """:class:`ModelLoadError` naming every model ``backbone`` needs that cannot load here (all at once, before
    any model code is imported); nothing for ``tiny`` or models that are there."""
    record = get_backbone(backbone)
    parts = {**get_preset(preset).all_components(), **parse_components(components)}
    cvvae = parts["cvvae"]
    subfolder = resolve_subfolder(cvvae, cvvae_subfolder, record.vae_variant) if cvvae == CVVAE_HUB_ID else None
    wanted = {"CV-VAE": (cvvae, subfolder), **{key: (parts[key], None) for key in record.components}}
    problems = missing_models(wanted)
    if problems:
        remote = any("is not in the cache" in p for p in problems)  # a hub id (not a missing local folder)
        advice = (
            "Download them on a machine with network access, or pass local folders (--component NAME=FOLDER)"
            if remote
            else "Pass folders that exist (--component NAME=FOLDER)"
        )
        raise ModelLoadError(f"{len(problems)} model(s) cannot be loaded here: " + "; ".join(problems) + f". {advice}")


def weights_cached(preset: str) -> bool:
    """Whether the preset's SVD and CV-VAE are here: local folders, or in the Hugging Face cache."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    from ..hub import DEFAULT_SUBFOLDER
    from ..weights import SHIPPED

    parts = get_preset(preset).all_components()
    wanted = [(parts["svd"], "model_index.json"), (parts["cvvae"], f"{DEFAULT_SUBFOLDER}/config.json")]
    return all(
        name in SHIPPED or Path(name).is_dir() or isinstance(try_to_load_from_cache(name, file), str)
        for name, file in wanted
    )


CPU_I2V_PRESET = "nano"


def default_i2v_preset(cuda: bool) -> tuple[str, str]:
    """Image-to-video's preset when none is named, and a note saying why when it is not ``svd-xt``: with a GPU,
    or with SVD-XT already downloaded, ``svd-xt``; on a CPU without it, ``nano`` (small models shipped here, a
    clip in seconds) rather than a 10 GB download that then takes hours per clip."""
    if cuda or weights_cached("svd-xt"):
        return "svd-xt", ""
    return CPU_I2V_PRESET, (
        "no GPU and no SVD-XT weights in the cache: using the 'nano' preset (small models trained on a CPU, "
        "64x64); pass --preset svd-xt to download and run the real model"
    )
