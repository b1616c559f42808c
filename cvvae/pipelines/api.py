"""What every front end calls: cached pipelines per preset and device, and ``generate`` (mp4 + JSON sidecar)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..devices import default_dtype, dtype_name, resolve_device
from ..errors import InputError
from ..hub import DEFAULT_SUBFOLDER, SD3_SUBFOLDER
from ..outputs import check_output_path
from .backbones import get_backbone, output_suffix
from .presets import PRESETS, Preset, check_models, get_preset, parse_components
from .settings import GenerationSettings

log = logging.getLogger(__name__)
__all__ = [
    "PRESETS",
    "GenerationResult",
    "output_suffix",
    "GenerationSettings",
    "PipelineBundle",
    "generate",
    "get_pipelines",
]


# ----------------------------------------------------------------------------- pipelines


class PipelineBundle:
    """The pipelines of one preset on one device, each loaded on first use; a lock serialises use."""

    def __init__(
        self, preset: Preset, device: str, dtype: torch.dtype, cpu_offload: bool, components: dict, subfolder
    ):
        self.preset, self.device, self.dtype, self.cpu_offload = preset, device, dtype, cpu_offload
        self.overrides = components
        self.cvvae_subfolder = subfolder
        self.lock = threading.RLock()
        self.load_seconds: dict[str, float] = {}
        self._pipes: dict[str, object] = {}
        self._vaes: dict[str, object] = {}
        self._adapter: str | None = None
        self._adapter_info: dict | None = None

    @property
    def components(self) -> dict:
        """Every component key (of the backbones registered now) -> what this bundle loads for it."""
        return {**self.preset.all_components(), **self.overrides}

    def cvvae(self, variant: str = "sd21"):
        """The CV-VAE of ``variant`` (``sd21``: 4 latent channels, for SD 1.5/2.1 and SVD; ``sd3``), loaded once.

        A named image VAE (``nano-2d``, ``sd21-vae``: ``cvvae.vaes.VAE_SPECS``) in its place runs the
        backbone in its own world, one latent per frame (for comparisons)."""
        if variant not in self._vaes:
            from ..loading import load_vae
            from ..vaes import VAE_SPECS, load_video_vae

            t0 = time.perf_counter()
            name, dtype = self.components["cvvae"], None if self.dtype == torch.float32 else self.dtype
            if name != "tiny" and variant == "sd21" and name in VAE_SPECS:  # a named VAE: its spec says what loads
                self._vaes[variant] = load_video_vae(name, dtype=dtype).module
            else:
                self._vaes[variant] = load_vae(name, self.cvvae_subfolder, dtype=dtype, variant=variant)
            self.load_seconds["cvvae" if variant == "sd21" else f"cvvae_{variant}"] = time.perf_counter() - t0
        return self._vaes[variant]

    @property
    def vae(self):
        return self.cvvae("sd21")

    def _place(self, pipe):
        if self.cpu_offload and torch.device(self.device).type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        return pipe

    def pipeline(self, backbone: str):
        """The pipeline of a registered backbone (``cvvae.pipelines.backbones``), built once."""
        record = get_backbone(backbone)
        with self.lock:
            if backbone not in self._pipes:
                self.cvvae(record.vae_variant)  # loaded (and timed) on its own
                t0 = time.perf_counter()
                pipe = record.build(self)
                self.load_seconds[backbone] = time.perf_counter() - t0
                self._pipes[backbone] = self._place(pipe)
            return self._pipes[backbone]

    def set_adapter(self, folder: str | None) -> dict | None:
        """Put the adapter in ``folder`` (or none) on the SVD UNet; returns its description, with a
        ``warning`` when it was trained on another base UNet or VAE than the ones loaded."""
        from .adapters import apply_adapter, load_adapter_info, remove_adapter

        with self.lock:
            if folder and self._adapter == str(Path(folder).resolve()):
                return self._adapter_info
            info = load_adapter_info(folder) if folder else None  # fail before touching the UNet
            unet = self.pipeline("svd").unet
            if self._adapter is not None:
                remove_adapter(unet)
                self._adapter = self._adapter_info = None
            if info is None:
                return None
            warning = self.adapter_mismatch(info)
            apply_adapter(unet, folder)
            self._adapter = str(Path(folder).resolve())
            self._adapter_info = {**asdict(info), **({"warning": warning} if warning else {})}
            if warning:
                log.warning("adapter %s: %s", folder, warning)
            return self._adapter_info

    def adapter_mismatch(self, info) -> str | None:
        """What differs between the models ``info`` (an ``AdapterInfo``) was trained on and the SVD pipeline's
        UNet (without an adapter) and VAE; None when nothing recorded differs."""
        from .adapters import base_mismatch, remove_adapter

        with self.lock:
            pipe = self.pipeline("svd")
            if self._adapter is not None:  # compare with the base UNet itself
                remove_adapter(pipe.unet)
                self._adapter = self._adapter_info = None
            problem = base_mismatch(info, pipe.unet, pipe.vae)
        return f"it was trained for other models: {problem}" if problem else None


_BUNDLES: dict[tuple, PipelineBundle] = {}
_BUNDLES_LOCK = threading.Lock()


def get_pipelines(
    preset: str = "tiny",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    cvvae_subfolder: str = DEFAULT_SUBFOLDER,
    components: dict | None = None,
) -> PipelineBundle:
    """The cached :class:`PipelineBundle` of ``preset`` on ``device`` (fp16 on CUDA, fp32 on CPU).

    ``components`` replaces models of the preset by hub ids or local folders (keys: cvvae, svd,
    sd21, sd15, motion_adapter). Pipelines load lazily, once per (preset, device, dtype, ...).
    """
    p = get_preset(preset)
    components = parse_components(components)
    device = str(resolve_device(device))
    dtype = dtype or default_dtype(device)
    key = (preset, device, dtype, cpu_offload, cvvae_subfolder, tuple(sorted(components.items())))
    with _BUNDLES_LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = PipelineBundle(p, device, dtype, cpu_offload, components, cvvae_subfolder)
        return _BUNDLES[key]


# ----------------------------------------------------------------------------- generate


@dataclass
class GenerationResult:
    video_path: Path
    sidecar_path: Path
    frames: int
    fps: float
    seconds: float
    metadata: dict = field(default_factory=dict)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_conditioning_image(path: str, height: int, width: int):
    """Read ``path`` as RGB and scale + centre-crop it to ``height`` x ``width`` (no distortion)."""
    from PIL import Image

    from ..video import read_image, resize_frame

    image = np.asarray(read_image(path))
    return Image.fromarray(resize_frame(image, (height, width), "crop"))


def _run(bundle: PipelineBundle, s: GenerationSettings, backbone: str, image, progress: bool, callback):
    """Denoise and decode under the bundle's lock; returns (frames uint8 [T, H, W, 3], output, adapter, seconds).

    The pipeline stops at its latents; the decoding VAE turns them into 8-bit frames window by window
    (never a full-size floating-point copy of the clip on the host).
    """
    record = get_backbone(backbone)
    with bundle.lock:
        if s.adapter and not record.adapters:
            raise InputError(f"adapters fine-tune the SVD UNet, which {backbone} does not use")
        adapter = bundle.set_adapter(s.adapter) if record.adapters else None
        pipe = bundle.pipeline(backbone)
        pipe.set_progress_bar_config(disable=not progress, desc=f"denoising ({backbone})")
        generator = torch.Generator("cpu").manual_seed(s.seed)
        kwargs = record.call_kwargs(s, generator, callback)
        if torch.device(bundle.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(bundle.device)
        t0 = time.perf_counter()
        args = (image,) if record.takes_image else ()
        out = pipe(*args, **kwargs, output_type="latent")
        decoder = pipe.decoder(s.vae, s.decode_tiling_changes())
        z = pipe.raw_latents(out.frames, decoder)  # [1, C, n, h, w]
        frames = decoder.decode_frames(z)  # [T, H, W, 3] uint8
        pipe.maybe_free_model_hooks()
        _sync(bundle.device)
        seconds = time.perf_counter() - t0
    fps = pipe.frame_rate(out.fps, s.vae) if record.video else None
    return frames, out, fps, adapter, seconds


def generate(
    settings: GenerationSettings,
    out_path,
    preset: str = "tiny",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    cvvae_subfolder: str = DEFAULT_SUBFOLDER,
    components: dict | None = None,
    progress: bool = True,
    callback_on_step_end=None,
    overwrite: bool = False,
) -> GenerationResult:
    """Generate one clip into ``out_path`` (H.264 mp4) and its JSON sidecar, both atomically.

    1. validate and fill defaults (and check the output path: an existing output or sidecar is refused
    unless ``overwrite``), 2. read the image, 3. load (cached) pipelines and run, 4. write the video
    and its sidecar.
    """
    from ..video import write_video_and_sidecar

    t_start = time.perf_counter()
    p = get_preset(preset)
    out = check_output_path(out_path, output_suffix(settings.mode), settings.image, overwrite=overwrite)
    s = settings.validate().resolved(p).validate()  # 1
    backbone = s.backbone(p)
    record = get_backbone(backbone)
    check_models(preset, backbone, components, cvvae_subfolder)  # every missing model named, before loading
    image = load_conditioning_image(s.image, s.height, s.width) if record.takes_image else None  # 2
    bundle = get_pipelines(preset, device, dtype, cpu_offload, cvvae_subfolder, components)  # 3
    frames, result, fps, adapter, seconds = _run(bundle, s, backbone, image, progress, callback_on_step_end)
    meta = {
        "preset": preset,
        "mode": s.mode,
        "backbone": backbone,
        "settings": asdict(s),
        "frames": int(frames.shape[0]),
        "latent_frames": s.num_latent_frames,
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": fps,
        "conditioning_fps": result.conditioning_fps,
        "models": {
            **bundle.components,
            "cvvae_subfolder": SD3_SUBFOLDER if record.vae_variant == "sd3" else bundle.cvvae_subfolder,
        },
        "adapter": adapter,
        "device": bundle.device,
        "dtype": dtype_name(bundle.dtype),
        "cpu_offload": bundle.cpu_offload,
        "random_weights": p.random_weights,
        "timings": {
            "load_seconds": dict(bundle.load_seconds),
            "generate_seconds": round(seconds, 3),
        },
    }
    if torch.device(bundle.device).type == "cuda":
        meta["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if p.notice:
        meta["notice"] = p.notice
    meta["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 3)  # up to writing
    paths = write_video_and_sidecar(out, frames, fps, meta)  # 4
    total = time.perf_counter() - t_start
    return GenerationResult(Path(paths["video"]), Path(paths["sidecar"]), int(frames.shape[0]), fps, total, meta)
