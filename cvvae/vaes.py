"""The video-VAE interface every consumer uses, with adapters, and the one loader of every VAE.

A :class:`VideoVAE` says what reconstruction, metrics, benchmarks, comparisons and the pipelines' decoding
need of a VAE: its temporal and spatial factors and latent channels (so frame arithmetic comes from the
VAE, never from a constant), the latent boundary to a diffusion model (``cvvae.latents``), and encode /
decode of uint8 frames (``[T, H, W, 3]``), streamed window by window where the model can.

Adapters: :class:`CVVAE` (both CV-VAE variants), :class:`ImageVAEFrames` (SD's image VAE frame by frame),
:class:`SVDTemporalDecoder` (SVD's VAE: image encoder, temporal decoder), :class:`DiffusersVideoVAE`
(diffusers' 3-D video VAEs: Wan, HunyuanVideo, LTX-Video, CogVideoX, Mochi, Cosmos, Allegro).

:func:`load_video_vae` turns a spec into one: a registered name (``VAE_SPECS``: ``cvvae``, ``nano``,
``sd21-vae``, ...), ``Class:model`` for a diffusers class (``AutoencoderKLWan:Wan-AI/...``), or a CV-VAE
folder / hub id. :func:`register_vae` adds a name; nothing else in the project dispatches on VAE names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .errors import InputError, ModelLoadError
from .frames import frames_to_tensor, tensor_to_frames
from .latents import LatentScaling, from_diffusion, to_diffusion


class VideoVAE:
    """A video VAE as consumers see it. Subclasses set the attributes and implement ``encode``/``decode``.

    Latents are raw ``[B, C, n, h, w]`` (no diffusion scaling: :meth:`to_diffusion` applies it).
    ``causal``: the first frame has a latent of its own, so ``T = 1 + f (n - 1)``; else ``T = f n``.
    """

    name: str = "vae"
    temporal_factor: int = 1
    spatial_factor: int = 8
    latent_channels: int = 4
    causal: bool = True
    scaling: LatentScaling | None = None
    random_weights: bool = False
    image_vae: str | None = None  # spec of the image VAE whose latents these match (SD compatibility), if any
    module: torch.nn.Module

    # ---- frame arithmetic -------------------------------------------------------------------------
    def latent_frames(self, frames: int) -> int:
        """Latent frames that ``frames`` video frames encode to (after padding)."""
        f = self.temporal_factor
        return 1 + -(-(frames - 1) // f) if self.causal else -(-frames // f)

    def video_frames(self, latents: int) -> int:
        """Video frames that ``latents`` latent frames decode to."""
        return 1 + self.temporal_factor * (latents - 1) if self.causal else self.temporal_factor * latents

    def padded_frames(self, frames: int) -> int:
        return self.video_frames(self.latent_frames(frames))

    def compression(self) -> float:
        """Input values per latent value (3 colour channels in, ``latent_channels`` out; causal frame ignored)."""
        return 3 * self.temporal_factor * self.spatial_factor**2 / self.latent_channels

    # ---- where it runs ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in this VAE's dtype, moved to its device only from the CPU (under CPU offload the inputs are
        already on the execution device, where the offload hook brings the model)."""
        return x.to(device=self.device if x.device.type == "cpu" else x.device, dtype=self.dtype)

    def to(self, device=None, dtype=None) -> VideoVAE:
        torch.nn.Module.to(self.module, device=device, dtype=dtype)
        return self

    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> dict:
        """What a sidecar or a comparison table records of this VAE."""
        return {
            "name": self.name,
            "class": type(self.module).__name__,
            "temporal_factor": self.temporal_factor,
            "spatial_factor": self.spatial_factor,
            "latent_channels": self.latent_channels,
            "random_weights": self.random_weights,
        }

    # ---- the latent boundary ------------------------------------------------------------------------
    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return to_diffusion(z, self._scaling())

    def from_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return from_diffusion(z, self._scaling())

    def _scaling(self) -> LatentScaling:
        if self.scaling is None:
            raise InputError(f"{self.name} states no latent scaling, so it has no diffusion-model boundary")
        return self.scaling

    # ---- tensors ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """Video ``[1, 3, T, H, W]`` in [-1, 1] (any T, H, W: padded here) -> raw latents ``[1, C, n, h, w]``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents ``[1, C, n, h, w]`` -> float video ``[1, 3, T, f h, f w]`` in [-1, 1]."""
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video ``[1, 3, T, H, W]`` in [-1, 1] -> the Gaussian posterior's raw mean and log-variance, each
        ``[1, C, n, h, w]`` (what a latent cache stores, to sample latents from at every training step)."""
        raise InputError(f"{self.name} does not expose its posterior distribution")

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame up to a length the VAE takes and edge pixels up to its spatial factor."""
        t, h, w = x.shape[2:]
        t_pad, s = self.padded_frames(t) - t, self.spatial_factor
        if t_pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, t_pad, -1, -1)], dim=2)
        if h % s or w % s:
            x = F.pad(x, (0, -w % s, 0, -h % s, 0, 0), mode="replicate")
        return x

    # ---- uint8 frames -------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray, sample: bool = False, generator=None) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> raw latents ``[1, C, n, h, w]`` of the padded clip."""
        return self.encode(frames_to_tensor(frames, self.device, self.dtype), sample, generator)

    @torch.inference_mode()
    def decode_frames(self, z: torch.Tensor, size: tuple[int, int, int] | None = None) -> np.ndarray:
        """Raw latents ``[1, C, n, h, w]`` -> uint8 ``[T, H, W, 3]``, trimmed to ``size`` (T, H, W)."""
        x = self.decode(self.place(z))
        t, h, w = size or x.shape[2:]
        return tensor_to_frames(x[:, :, :t, :h, :w])

    @torch.inference_mode()
    def reconstruct(self, frames: np.ndarray, sample: bool = False, generator=None) -> np.ndarray:
        """uint8 frames in, the same shape out."""
        return self.decode_frames(self.encode_frames(frames, sample, generator), frames.shape[:3])


def _mode_or_sample(dist, sample: bool, generator) -> torch.Tensor:
    if sample and hasattr(dist, "sample"):
        return dist.sample(generator)
    return dist.mode() if hasattr(dist, "mode") else dist.sample()


# ----------------------------------------------------------------------------- CV-VAE


class CVVAE(VideoVAE):
    """Either CV-VAE variant (``CVVAEModel``, ``CVVAESD3Model``); uint8 frames stream through its tiling.

    ``tiling``: changes to the model's tiling for every call of this adapter (a dict, ``{"enabled": False}``
    for whole clips) or ``None`` for the model's own settings.
    """

    def __init__(self, model, name: str = "cvvae", tiling: dict | None = None, random_weights: bool = False):
        self.module, self.name, self.tiling, self.random_weights = model, name, tiling, random_weights
        self.temporal_factor = int(model.config.time_n_compress)
        self.spatial_factor = int(model.config.spatial_n_compress)
        self.latent_channels = int(model.latent_channels)
        self.scaling = LatentScaling.of(model)

    def encode(self, x, sample=False, generator=None):
        dist = self.module.encode(self.place(x), tiling=self.tiling).latent_dist
        return _mode_or_sample(dist, sample, generator)

    def decode(self, z):
        return self.module.decode(self.place(z), tiling=self.tiling).sample

    def posterior(self, x):
        dist = self.module.encode(self.place(x), tiling=self.tiling).latent_dist
        return dist.mean, dist.logvar

    @torch.inference_mode()
    def encode_frames(self, frames, sample=False, generator=None):
        return _mode_or_sample(self.module.encode_frames(frames, self.tiling), sample, generator)

    @torch.inference_mode()
    def decode_frames(self, z, size=None):
        return self.module.decode_frames(self.place(z), size, self.tiling)

    def describe(self) -> dict:
        from .tiling import tiling_report

        tiling = dataclasses.asdict(self.tiling_settings())
        return {**super().describe(), "tiling": tiling, "tiling_choice": tiling_report(self.module)}

    def tiling_settings(self):
        return self.module._tiling(self.tiling)


# ----------------------------------------------------------------------------- image VAEs, frame by frame


class ImageVAEFrames(VideoVAE):
    """An image VAE (``AutoencoderKL``: SD 1.5 / 2.1 / SDXL / SD3) applied frame by frame: one latent per frame,
    ``frames_per_batch`` frames at a time (memory flat in the clip's length)."""

    temporal_factor = 1

    frames_per_batch: int | None = 8  # None: the whole clip at once

    def __init__(self, model, name: str = "image-vae", random_weights: bool = False):
        self.module, self.name, self.random_weights = model, name, random_weights
        self.spatial_factor = 2 ** (len(model.config.block_out_channels) - 1)
        self.latent_channels = int(model.config.latent_channels)
        self.scaling = LatentScaling.of(model.config)

    def _per_frame(self, x: torch.Tensor, fn) -> torch.Tensor:
        """``fn`` over the frames of ``[1, C, T, H, W]``, a batch of frames at a time."""
        frames = x[0].transpose(0, 1)  # [C, T, H, W] -> [T, C, H, W]
        out = torch.cat([fn(part) for part in frames.split(self.frames_per_batch or len(frames))])
        return out.transpose(0, 1).unsqueeze(0)  # [T, C', H', W'] -> [1, C', T, H', W']

    def encode(self, x, sample=False, generator=None):
        x = self.pad(self.place(x))
        return self._per_frame(x, lambda f: _mode_or_sample(self.module.encode(f).latent_dist, sample, generator))

    def decode(self, z):
        return self._per_frame(self.place(z), self._decode_images)

    def posterior(self, x):
        x = self.pad(self.place(x))
        params = self._per_frame(x, lambda f: self.module.encode(f).latent_dist.parameters)  # [1, 2C, T, h, w]
        mean, logvar = params.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the clamp diffusers' distribution applies

    def _decode_images(self, z: torch.Tensor) -> torch.Tensor:
        return self.module.decode(z).sample


class SVDTemporalDecoder(ImageVAEFrames):
    """SVD's own VAE (``AutoencoderKLTemporalDecoder``): frame-by-frame encoder, a decoder that sees
    ``frames_per_batch`` frames together (default: the whole clip, as SVD's pipeline decodes by default)."""

    frames_per_batch = None

    def _decode_images(self, z):
        return self.module.decode(z, num_frames=len(z)).sample


# ----------------------------------------------------------------------------- diffusers' video VAEs


@dataclass(frozen=True)
class VideoVAEKind:
    """How to read a diffusers video VAE class's factors from its config."""

    temporal: Callable[[dict], int]
    spatial: Callable[[dict], int]
    channels: Callable[[dict], int]
    causal: bool = True
    frames_first: bool = False  # decode returns [B, T, C, H, W] (Allegro's tiled decode; its pipeline permutes)


def _levels(key: str = "block_out_channels") -> Callable[[dict], int]:
    return lambda c: 2 ** (len(c[key]) - 1)


def _get(key: str, default=None) -> Callable[[dict], int]:
    return lambda c: int(c.get(key, default) if c.get(key) is not None else default)


VIDEO_VAE_KINDS = {
    "AutoencoderKLWan": VideoVAEKind(_get("scale_factor_temporal", 4), _get("scale_factor_spatial", 8), _get("z_dim")),
    "AutoencoderKLHunyuanVideo": VideoVAEKind(
        _get("temporal_compression_ratio", 4), _get("spatial_compression_ratio", 8), _get("latent_channels")
    ),
    "AutoencoderKLLTXVideo": VideoVAEKind(
        _get("temporal_compression_ratio", 8), _get("spatial_compression_ratio", 32), _get("latent_channels")
    ),
    "AutoencoderKLCogVideoX": VideoVAEKind(_get("temporal_compression_ratio", 4), _levels(), _get("latent_channels")),
    "AutoencoderKLMochi": VideoVAEKind(
        lambda c: math.prod(c["temporal_expansions"]),
        lambda c: math.prod(c["spatial_expansions"]),
        _get("latent_channels"),
    ),  # fmt: skip
    "AutoencoderKLCosmos": VideoVAEKind(
        _get("temporal_compression_ratio", 8), _get("spatial_compression_ratio", 8), _get("latent_channels")
    ),
    "AutoencoderKLAllegro": VideoVAEKind(
        _get("temporal_compression_ratio", 4), _levels(), _get("latent_channels"), causal=False, frames_first=True
    ),
}


class DiffusersVideoVAE(VideoVAE):
    """A diffusers 3-D video VAE taking ``[B, 3, T, H, W]`` in [-1, 1]; its own tiling when ``tiling``."""

    def __init__(self, model, name: str | None = None, tiling: bool = True, random_weights: bool = False):
        cls = type(model).__name__
        if cls not in VIDEO_VAE_KINDS:
            raise InputError(f"{cls} is not a known video VAE class; known: {', '.join(VIDEO_VAE_KINDS)}")
        kind, config = VIDEO_VAE_KINDS[cls], dict(model.config)
        self.module, self.name, self.random_weights = model, name or cls, random_weights
        self.temporal_factor, self.spatial_factor = kind.temporal(config), kind.spatial(config)
        self.latent_channels, self.causal, self.frames_first = kind.channels(config), kind.causal, kind.frames_first
        scale = config.get("scaling_factor")
        self.scaling = LatentScaling(float(scale), float(config.get("shift_factor") or 0.0)) if scale else None
        if tiling and hasattr(model, "enable_tiling"):
            model.enable_tiling()
        elif hasattr(model, "disable_tiling"):
            model.disable_tiling()

    def encode(self, x, sample=False, generator=None):
        x = self.pad(self.place(x))
        return _mode_or_sample(self.module.encode(x).latent_dist, sample, generator)

    def decode(self, z):
        x = self.module.decode(self.place(z)).sample
        return x.transpose(1, 2) if self.frames_first else x  # [B, T, C, H, W] -> [B, C, T, H, W]


# ----------------------------------------------------------------------------- the one loader


@dataclass(frozen=True)
class VAESpec:
    """A named VAE: ``load(device, dtype)`` returns a :class:`VideoVAE`; ``description`` for listings."""

    load: Callable[..., VideoVAE]
    description: str
    cpu_bf16: bool = False  # tested in bf16 on a CPU, so the VAE commands default to it there (CV-VAEs)


VAE_SPECS: dict[str, VAESpec] = {}


def register_vae(name: str, load: Callable[..., VideoVAE], description: str = "", cpu_bf16: bool = False) -> None:
    """Make ``name`` a VAE spec everywhere (``compare --vae``, the API): ``load(device=..., dtype=...)``;
    ``cpu_bf16``: its operations run in bf16 on a CPU (then the VAE commands default to bf16 where the CPU has
    bf16 instructions, see :func:`default_dtype_for`)."""
    VAE_SPECS[name] = VAESpec(load, description, cpu_bf16)


def default_dtype_for(spec: str, device) -> torch.dtype:
    """The VAE commands' precision for ``spec`` when none is asked: a CV-VAE (a ``cpu_bf16`` name, a folder or a
    hub id) at :func:`cvvae.devices.default_vae_dtype` (bf16 on a CPU with bf16 instructions), any other VAE at
    :func:`cvvae.devices.default_dtype` (fp16 on CUDA, fp32 on a CPU: its operations may have no bf16 kernels
    there)."""
    from .devices import default_dtype, default_vae_dtype

    spec = str(spec).strip()
    registered = VAE_SPECS.get(spec)
    cvvae = registered.cpu_bf16 if registered else not spec.partition(":")[0].startswith("Autoencoder")
    return default_vae_dtype(device) if cvvae else default_dtype(device)


def as_video_vae(vae, name: str | None = None) -> VideoVAE:
    """A :class:`VideoVAE` for ``vae``: itself, a CV-VAE model, an image VAE or a diffusers video VAE."""
    if isinstance(vae, VideoVAE):
        return vae
    cls = type(vae).__name__
    if cls in ("CVVAEModel", "CVVAESD3Model"):
        return CVVAE(vae, name or cls)
    if cls == "AutoencoderKLTemporalDecoder":
        return SVDTemporalDecoder(vae, name or cls)
    if cls in VIDEO_VAE_KINDS:
        return DiffusersVideoVAE(vae, name)
    if cls == "AutoencoderKL":
        return ImageVAEFrames(vae, name or cls)
    raise InputError(f"{cls} is not a VAE this project can use as a video VAE")


def _cast(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    torch.nn.Module.to(module, device=device, dtype=dtype)
    return module.eval()


def _cvvae(model: str, subfolder=None, variant=None, label=None, image_vae: str | None = None):
    def load(device=None, dtype=None, tiling: dict | None = None, allow_pickle=False, **options) -> VideoVAE:
        from .hub import model_label
        from .loading import load_vae

        where = options.get("subfolder") or subfolder
        vae = load_vae(model, where, device=device, dtype=dtype, variant=variant, allow_pickle=allow_pickle)
        out = CVVAE(vae, label or model_label(model, where), tiling, random_weights=model == "tiny")
        out.image_vae = image_vae
        return out

    return load


def _diffusers(cls_name: str, model: str, subfolder: str | None = None, label: str | None = None):
    """A loader of diffusers class ``cls_name`` from a hub id or folder (``subfolder`` inside it)."""

    def load(device=None, dtype=None, tiling=True, **_) -> VideoVAE:
        import diffusers

        from .hub import load_model

        cls = getattr(diffusers, cls_name, None)
        if cls is None or not cls_name.startswith("Autoencoder"):
            raise InputError(f"diffusers has no VAE class {cls_name!r} (this is diffusers {diffusers.__version__})")
        module = _cast(load_model(cls.from_pretrained, model, subfolder), device, dtype)
        name = label or f"{cls_name}:{model}"
        return DiffusersVideoVAE(module, name, tiling) if cls_name in VIDEO_VAE_KINDS else as_video_vae(module, name)

    return load


def _nano_2d(device=None, dtype=None, **_) -> VideoVAE:
    """The nano CV-VAE's 2-D starting point (an SD-style image VAE trained here), frame by frame."""
    from diffusers import AutoencoderKL

    from .weights import NANO_VAE2D as folder

    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"the 'nano-2d' model is not in this installation ({folder} is missing)")
    return ImageVAEFrames(_cast(AutoencoderKL.from_pretrained(folder), device, dtype), "nano-2d")


def _builtin_specs() -> None:
    from .hub import CVVAE_HUB_ID, SD3_SUBFOLDER

    sd21, svd = "stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-video-diffusion-img2vid-xt"
    cv = True  # a CV-VAE: bf16 by default on CPUs with bf16 instructions
    for name, load, text, cpu_bf16 in (
        ("cvvae", _cvvae(CVVAE_HUB_ID, "vae3d_v1-1", image_vae="sd21-vae"), "CV-VAE v1.1 (SD 2.1 / SVD latents)", cv),
        ("cvvae-v1", _cvvae(CVVAE_HUB_ID, "vae3d", image_vae="sd21-vae"), "CV-VAE v1 (the first release)", cv),
        ("cvvae-sd3", _cvvae(CVVAE_HUB_ID, SD3_SUBFOLDER, "sd3"), "CV-VAE for SD3 (16 latent channels)", cv),
        ("nano", _cvvae("nano", image_vae="nano-2d"), "nano CV-VAE trained on a CPU, shipped with the project", cv),
        ("nano-2d", _nano_2d, "the nano CV-VAE's 2-D image VAE, frame by frame", False),
        ("tiny", _cvvae("tiny"), "tiny CV-VAE with RANDOM weights (mechanics only)", cv),
        ("tiny-sd3", _cvvae("tiny", variant="sd3"), "tiny CV-VAE-SD3 with RANDOM weights (mechanics only)", cv),
        (
            "sd21-vae",
            _diffusers("AutoencoderKL", sd21, "vae", "sd21-vae"),
            "SD 2.1's image VAE, frame by frame",
            False,
        ),
        ("svd-temporal", _diffusers("AutoencoderKLTemporalDecoder", svd, "vae", "svd-temporal"), "SVD's VAE", False),
    ):
        register_vae(name, load, text, cpu_bf16)


_builtin_specs()


def load_video_vae(spec: str, device=None, dtype: torch.dtype | None = None, **options) -> VideoVAE:
    """The one loader of every VAE: a registered name (``VAE_SPECS``), ``Class:model[/subfolder]`` for a
    diffusers VAE class (``AutoencoderKLWan:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae``), or a CV-VAE folder or
    hub id. ``options`` go to the loader (``tiling``). Missing weights raise :class:`ModelLoadError`."""
    spec = str(spec).strip()
    if not spec:
        raise InputError("a VAE spec is empty; name one of " + ", ".join(VAE_SPECS) + " or Class:model")
    if spec in VAE_SPECS:
        return VAE_SPECS[spec].load(device=device, dtype=dtype, **options)
    cls_name, sep, model = spec.partition(":")
    if sep and cls_name.startswith("Autoencoder") and model:
        subfolder = None
        if model.count("/") >= 2 and not model.startswith((".", "/", "~")):  # owner/name/subfolder
            owner, name, subfolder = model.split("/", 2)
            model = f"{owner}/{name}"
        return _diffusers(cls_name, model, subfolder, spec)(device=device, dtype=dtype, **options)
    from .hub import looks_local

    if looks_local(spec) or spec.count("/") == 1:
        return _cvvae(spec)(device=device, dtype=dtype, **options)
    raise InputError(
        f"unknown VAE {spec!r}: name one of {', '.join(VAE_SPECS)}, Class:model for a diffusers VAE "
        "(e.g. AutoencoderKLWan:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae), or a CV-VAE folder"
    )
