"""What every front end calls: settings, cached pipelines, and ``generate`` (mp4 + JSON sidecar)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..loading import RANDOM_WEIGHTS_NOTICE
from .presets import BACKBONES, PRESETS, Preset, default_device, default_dtype, get_preset
from .svd import MAX_LATENT_FRAMES, VAE_CHOICES, check_frames_and_size

__all__ = ["PRESETS", "GenerationResult", "GenerationSettings", "PipelineBundle", "generate", "get_pipelines"]

MODES = ("i2v", "t2v")
T2V_BACKBONES = ("animatediff", "sd21")


@dataclass
class GenerationSettings:
    """One clip to generate. ``None`` means the preset's default for the chosen backbone."""

    mode: str = "i2v"
    image: str | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    t2v_backbone: str | None = None  # "animatediff" | "sd21" (text -> image -> video); None: the preset's
    num_latent_frames: int | None = None
    steps: int | None = None
    seed: int = 0
    fps: float | None = None  # output fps; the SVD UNet is conditioned on round(fps / 4) - 1
    conditioning_fps: int | None = None  # overrides that conditioning value
    motion_bucket_id: int = 127
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    guidance: float = 7.5  # text guidance (AnimateDiff, SD 2.1)
    noise_aug_strength: float = 0.02
    height: int | None = None
    width: int | None = None
    adapter: str | None = None
    vae: str = "cvvae"
    decode_frames_per_window: int | None = None
    decode_tile_size: int | None = None

    def validate(self) -> GenerationSettings:
        """Raise InputError on any value that cannot work; returns self."""
        _check(self.mode in MODES, f"mode must be 'i2v' or 't2v', got {self.mode!r}")
        if self.mode == "i2v":
            _check(bool(self.image) and isinstance(self.image, str), "image-to-video needs an image (--image)")
        else:
            _check(
                isinstance(self.prompt, str) and bool(self.prompt.strip()), "text-to-video needs a non-empty prompt"
            )
        _check(
            self.t2v_backbone in (None, *T2V_BACKBONES),
            f"t2v_backbone must be animatediff or sd21, got {self.t2v_backbone!r}",
        )
        _check(self.vae in VAE_CHOICES, f"vae must be 'cvvae' or 'native', got {self.vae!r}")
        n = self.num_latent_frames
        _check(
            n is None or (_is_int(n) and 2 <= n <= MAX_LATENT_FRAMES),
            f"num_latent_frames must be in 2..{MAX_LATENT_FRAMES} (n latents give 1 + 4(n-1) frames), got {n!r}",
        )
        _check(
            self.steps is None or (_is_int(self.steps) and 1 <= self.steps <= 1000),
            f"steps must be in 1..1000, got {self.steps!r}",
        )
        _check(
            _is_int(self.seed) and 0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed!r}"
        )
        _check(
            self.fps is None or (_is_num(self.fps) and 0 < self.fps <= 240),
            f"fps must be in (0, 240], got {self.fps!r}",
        )
        cf = self.conditioning_fps
        _check(cf is None or (_is_int(cf) and 0 <= cf <= 240), f"conditioning_fps must be in 0..240, got {cf!r}")
        _check(
            _is_int(self.motion_bucket_id) and 0 <= self.motion_bucket_id <= 1023,
            "motion_bucket_id must be in 0..1023",
        )
        _check(
            _is_num(self.min_guidance) and _is_num(self.max_guidance) and 0 <= self.min_guidance <= self.max_guidance,
            f"need 0 <= min_guidance <= max_guidance, got {self.min_guidance!r}, {self.max_guidance!r}",
        )
        _check(_is_num(self.guidance) and self.guidance >= 0, f"guidance must be >= 0, got {self.guidance!r}")
        _check(
            _is_num(self.noise_aug_strength) and 0 <= self.noise_aug_strength <= 1,
            "noise_aug_strength must be in [0, 1]",
        )
        for name in ("height", "width"):
            v = getattr(self, name)
            _check(
                v is None or (_is_int(v) and 64 <= v <= 4096 and v % 64 == 0),
                f"{name} must be a multiple of 64 in 64..4096, got {v!r}",
            )
        w = self.decode_frames_per_window
        _check(
            w is None or (_is_int(w) and w >= 4 and w % 4 == 0),
            f"decode_frames_per_window must be a multiple of 4, got {w!r}",
        )
        t = self.decode_tile_size
        _check(
            t is None or (_is_int(t) and t >= 64 and t % 8 == 0),
            f"decode_tile_size must be a multiple of 8 >= 64, got {t!r}",
        )
        return self

    def backbone(self, preset: Preset) -> str:
        """``svd`` for image->video, else the text->video backbone (this setting or the preset's)."""
        return "svd" if self.mode == "i2v" else (self.t2v_backbone or preset.t2v_backbone)

    def resolved(self, preset: Preset) -> GenerationSettings:
        """A copy with every ``None`` default filled from ``preset`` (what the sidecar records)."""
        backbone = self.backbone(preset)
        d = preset.defaults(backbone)
        return replace(
            self,
            t2v_backbone=None if self.mode == "i2v" else backbone,
            num_latent_frames=self.num_latent_frames or d.num_latent_frames,
            steps=self.steps or d.steps,
            fps=float(self.fps or d.fps),
            height=self.height or d.height,
            width=self.width or d.width,
        )

    @classmethod
    def from_dict(cls, data: dict) -> GenerationSettings:
        """Build from a dict (a batch job); InputError names unknown keys."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**data)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


# ----------------------------------------------------------------------------- pipelines


class PipelineBundle:
    """The pipelines of one preset on one device, each loaded on first use; a lock serialises use."""

    def __init__(
        self, preset: Preset, device: str, dtype: torch.dtype, cpu_offload: bool, components: dict, subfolder
    ):
        self.preset, self.device, self.dtype, self.cpu_offload = preset, device, dtype, cpu_offload
        self.components = {**preset.components, **components}
        self.cvvae_subfolder = subfolder
        self.lock = threading.RLock()
        self.load_seconds: dict[str, float] = {}
        self._pipes: dict[str, object] = {}
        self._vae = None
        self._adapter: str | None = None

    @property
    def vae(self):
        if self._vae is None:
            from .presets import load_cvvae

            t0 = time.perf_counter()
            self._vae = load_cvvae(self.components["cvvae"], self.cvvae_subfolder, self.dtype)
            self.load_seconds["cvvae"] = time.perf_counter() - t0
        return self._vae

    def _place(self, pipe):
        if self.cpu_offload and torch.device(self.device).type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        return pipe

    def pipeline(self, backbone: str):
        """The pipeline for ``backbone`` (``svd``, ``animatediff`` or ``sd21``), loading it once."""
        from . import presets

        if backbone not in BACKBONES:
            raise InputError(f"unknown backbone {backbone!r}")
        with self.lock:
            if backbone not in self._pipes:
                if backbone == "sd21":
                    video = self.pipeline("svd")
                    t0 = time.perf_counter()
                    t2v = presets.build_sd21(self.components, video, self.dtype)
                    self._place(t2v.t2i)
                else:
                    vae = self.vae
                    t0 = time.perf_counter()
                    build = presets.build_svd if backbone == "svd" else presets.build_animatediff
                    t2v = self._place(build(self.components, vae, self.dtype))
                self.load_seconds[backbone] = time.perf_counter() - t0
                self._pipes[backbone] = t2v
            return self._pipes[backbone]

    def set_adapter(self, folder: str | None) -> dict | None:
        """Put the adapter in ``folder`` (or none) on the SVD UNet; returns its description."""
        from .adapters import apply_adapter, load_adapter_info, remove_adapter

        with self.lock:
            unet = self.pipeline("svd").unet
            if folder and self._adapter == str(Path(folder).resolve()):
                return asdict(load_adapter_info(folder))
            info = load_adapter_info(folder) if folder else None  # fail before touching the UNet
            if self._adapter is not None:
                remove_adapter(unet)
                self._adapter = None
            if info is None:
                return None
            apply_adapter(unet, folder)
            self._adapter = str(Path(folder).resolve())
            return asdict(info)


_BUNDLES: dict[tuple, PipelineBundle] = {}
_BUNDLES_LOCK = threading.Lock()


def get_pipelines(
    preset: str = "tiny",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    cvvae_subfolder: str = "vae3d_v1-1",
    components: dict | None = None,
) -> PipelineBundle:
    """The cached :class:`PipelineBundle` of ``preset`` on ``device`` (fp16 on CUDA, fp32 on CPU).

    ``components`` replaces models of the preset by hub ids or local folders (keys: cvvae, svd,
    sd21, sd15, motion_adapter). Pipelines load lazily, once per (preset, device, dtype, ...).
    """
    from .presets import COMPONENT_KEYS

    p = get_preset(preset)
    components = dict(components or {})
    bad = sorted(set(components) - set(COMPONENT_KEYS))
    if bad:
        raise InputError(f"unknown component(s) {', '.join(bad)}; known: {', '.join(COMPONENT_KEYS)}")
    device = str(device or default_device())
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was requested but CUDA is not available here; use --device cpu")
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


def check_output_path(out_path) -> Path:
    out = Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"the output {out} must end in .mp4")
    if out.is_dir():
        raise InputError(f"the output {out} is a folder; give a file name ending in .mp4")
    return out


def load_conditioning_image(path: str, height: int, width: int):
    """Read ``path`` as RGB and scale + centre-crop it to ``height`` x ``width`` (no distortion)."""
    from PIL import Image

    from ..video import read_image, resize_frame

    image = np.asarray(read_image(path))
    return Image.fromarray(resize_frame(image, (height, width), "crop"))


def _call_kwargs(s: GenerationSettings, backbone: str, generator, callback) -> dict:
    """The pipeline arguments for ``backbone`` from resolved settings."""
    common = dict(
        num_latent_frames=s.num_latent_frames,
        height=s.height,
        width=s.width,
        num_inference_steps=s.steps,
        fps=s.fps,
        generator=generator,
        output_type="np",
        vae=s.vae,
        decode_frames_per_window=s.decode_frames_per_window,
        decode_tile_size=s.decode_tile_size,
    )
    svd = dict(
        conditioning_fps=s.conditioning_fps,
        motion_bucket_id=s.motion_bucket_id,
        noise_aug_strength=s.noise_aug_strength,
        min_guidance_scale=s.min_guidance,
        max_guidance_scale=s.max_guidance,
        callback_on_step_end=callback,
    )
    if backbone == "svd":
        return {**common, **svd}
    text = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, guidance_scale=s.guidance)
    if backbone == "animatediff":
        return {**common, **text, "callback_on_step_end": callback}
    return {**common, **svd, **text}  # sd21: text -> image -> SVD


def _run(bundle: PipelineBundle, s: GenerationSettings, backbone: str, image, progress: bool, callback):
    """Run the pipeline under the bundle's lock; returns (frames uint8 [T, H, W, 3], output, info, timings)."""
    with bundle.lock:
        if s.adapter and backbone == "animatediff":
            raise InputError("adapters fine-tune the SVD UNet: use them with i2v or with t2v_backbone sd21")
        adapter = bundle.set_adapter(s.adapter) if backbone != "animatediff" else None
        pipe = bundle.pipeline(backbone)
        pipe.set_progress_bar_config(disable=not progress, desc=f"denoising ({backbone})")
        generator = torch.Generator("cpu").manual_seed(s.seed)
        kwargs = _call_kwargs(s, backbone, generator, callback)
        if torch.device(bundle.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(bundle.device)
        t0 = time.perf_counter()
        out = pipe(image, **kwargs) if backbone == "svd" else pipe(**kwargs)
        _sync(bundle.device)
        seconds = time.perf_counter() - t0
    frames = (np.asarray(out.frames[0]) * 255.0).round().clip(0, 255).astype(np.uint8)  # [T, H, W, 3]
    return frames, out, adapter, seconds


def generate(
    settings: GenerationSettings,
    out_path,
    preset: str = "tiny",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    cpu_offload: bool = False,
    cvvae_subfolder: str = "vae3d_v1-1",
    components: dict | None = None,
    progress: bool = True,
    callback_on_step_end=None,
) -> GenerationResult:
    """Generate one clip into ``out_path`` (H.264 mp4) and its JSON sidecar, both atomically.

    1. validate and fill defaults, 2. read the image, 3. load (cached) pipelines and run,
    4. write the video, 5. write the sidecar.
    """
    from ..outputs import write_sidecar
    from ..video import write_video

    t_start = time.perf_counter()
    p = get_preset(preset)
    s = settings.validate().resolved(p)  # 1
    out = check_output_path(out_path)
    backbone = s.backbone(p)
    check_frames_and_size(s.num_latent_frames, s.height, s.width)
    image = load_conditioning_image(s.image, s.height, s.width) if s.mode == "i2v" else None  # 2
    bundle = get_pipelines(preset, device, dtype, cpu_offload, cvvae_subfolder, components)  # 3
    frames, result, adapter, seconds = _run(bundle, s, backbone, image, progress, callback_on_step_end)
    t0 = time.perf_counter()
    write_video(out, frames, result.fps)  # 4
    meta = {
        "preset": preset,
        "mode": s.mode,
        "backbone": backbone,
        "settings": asdict(s),
        "frames": int(frames.shape[0]),
        "latent_frames": s.num_latent_frames,
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": result.fps,
        "conditioning_fps": result.conditioning_fps if backbone != "animatediff" else None,
        "models": {**bundle.components, "cvvae_subfolder": bundle.cvvae_subfolder},
        "adapter": adapter,
        "device": bundle.device,
        "dtype": str(bundle.dtype).replace("torch.", ""),
        "cpu_offload": bundle.cpu_offload,
        "random_weights": p.random_weights,
        "timings": {
            "load_seconds": dict(bundle.load_seconds),
            "generate_seconds": round(seconds, 3),
            "write_seconds": round(time.perf_counter() - t0, 3),
        },
    }
    if torch.device(bundle.device).type == "cuda":
        meta["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if p.random_weights:
        meta["notice"] = RANDOM_WEIGHTS_NOTICE
    meta["timings"]["total_seconds"] = round(time.perf_counter() - t_start, 3)
    side = write_sidecar(out, meta)  # 5
    total = time.perf_counter() - t_start
    return GenerationResult(out, side, int(frames.shape[0]), float(result.fps), total, meta)
