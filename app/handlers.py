"""What the buttons of the web demo do: plain functions over the library, no widgets and no model code.

Every handler takes and returns plain values (paths, numbers, strings), so tests call them directly.
Bad input becomes ``gr.Error`` with an actionable message; nothing shows a stack trace to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from cvvae.errors import InputError, UserError
from cvvae.hub import CVVAE_HUB_ID, DEFAULT_SUBFOLDER, SD3_SUBFOLDER, model_label
from cvvae.loading import RANDOM_WEIGHTS_NOTICE
from cvvae.pipelines.presets import PRESETS
from cvvae.tiling import tiling_changes

NANO_NOTICE = (
    "reconstructed by 'nano', a small CV-VAE trained on a CPU (blurry: about 21 dB on unseen clips); "
    f"real weights: python -m app --cvvae {CVVAE_HUB_ID}"
)

NANO_PRESET_NOTICE = PRESETS["nano"].notice
# adapters that ship with a preset: preset -> (menu name, folder), offered when the folder holds adapter.json
GROUP_FRAMES = 4  # frames per CV-VAE latent: the period of the latent-group seam and pulse measures

log = logging.getLogger(__name__)

ADAPTER_NONE = "none"
VAE_VARIANTS = {"sd21": "CV-VAE (SD 2.1 / SVD, 4 latent channels)", "sd3": "CV-VAE-SD3 (16 latent channels)"}
DEFAULT_SIZE = "preset default"
# Width x height choices offered in the UI (multiples of 64; SVD was trained at 1024x576).
RESOLUTIONS = (DEFAULT_SIZE, "1024x576", "576x1024", "768x448", "512x512", "512x320", "256x256", "128x128", "64x64")
SHORT_SIDES = ("original", "576", "480", "360", "256", "128")
MAX_SEED = 2**31 - 1
# frames x height x width a CPU may take in one job before the demo refuses (about 17 x 512 x 512).
CPU_PIXEL_BUDGET = 17 * 512 * 512


@dataclass
class AppConfig:
    """How the demo runs: preset, folders, device and the per-job size budget."""

    preset: str = "tiny"
    outputs: Path = Path("outputs")
    adapters: Path | None = None
    device: str | None = None
    cvvae: str | None = None  # CV-VAE for the Reconstruct tab; None = the preset's
    pixel_budget: int | None = None  # max frames*H*W per job; None = no limit
    notice: str = ""  # shown at the top of the page (random weights, CPU, ...)
    components: dict = field(default_factory=dict)  # local folders / hub ids replacing the preset's models
    cpu_offload: bool = False
    cvvae_subfolder: str = DEFAULT_SUBFOLDER  # of the released repository (generation and Reconstruct)

    def __post_init__(self):
        self.outputs = Path(self.outputs).resolve()
        self.adapters = Path(self.adapters).resolve() if self.adapters else None
        if self.pixel_budget is not None and self.pixel_budget <= 0:
            raise InputError(f"pixel_budget must be positive, got {self.pixel_budget}")
        if not self.notice and self.random_weights:
            self.notice = RANDOM_WEIGHTS_NOTICE

    @property
    def random_weights(self) -> bool:
        return self.preset == "tiny"


MODE_NAMES = {"i2v": "image to video", "t2v": "text to video", "t2i": "SD3 text to image"}


def missing_mode(preset: str, mode: str) -> str:
    """What to say where ``preset`` has no backbone for ``mode``: which presets have one."""
    from cvvae.pipelines.presets import PRESETS

    having = [(n, p.random_weights) for n, p in PRESETS.items() if mode in p.backbones]
    real = ", ".join(f"`--preset {n}`" for n, random in having if not random)
    random = " or ".join(f"`--preset {n}`" for n, random in having if random)
    return (
        f"The **{preset}** preset has no {MODE_NAMES[mode]}. Start the app with {random} to see the mechanics "
        f"on random models, or with {real} for real weights (GPU)."
    )


def refuse(message: str) -> gr.Error:
    """A bad-input message for the page; the server log gets no traceback for it."""
    return gr.Error(message, print_exception=False)


class Cancelled(Exception):
    """Raised inside the denoising loop once the job's event was cancelled."""


@dataclass
class Job:
    """One running event: ``cancelled`` stops its denoising at the next step; ``written`` lists its results."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    written: list[Path] = field(default_factory=list)


_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar("cvvae_app_job", default=None)


def step_callback():
    """A diffusers ``callback_on_step_end`` raising :class:`Cancelled` once the running job is cancelled."""
    job = _JOB.get()

    def callback(pipe, step, timestep, callback_kwargs):
        if job is not None and job.cancelled.is_set():
            raise Cancelled(f"cancelled at denoising step {step + 1}")
        return callback_kwargs

    return callback


def job_wrote(*paths) -> None:
    """Record files the running job saved, so that its cancellation removes them."""
    job = _JOB.get()
    if job is not None:
        job.written += [Path(p) for p in paths if p]


def cancellable(fn):
    """``fn`` (a blocking handler) as a coroutine for Gradio, whose cancellation reaches the work.

    Gradio cancels an event (the Cancel button, a client's ``job.cancel()``) by cancelling its task; a
    handler running in a thread would go on to the end and save its result. Here the cancellation
    stops the denoising at the next step, waits for the thread, and removes whatever the job saved.
    """

    @functools.wraps(fn)
    async def run(*args, **kwargs):
        job = Job()
        context = contextvars.copy_context()  # Gradio's progress tracker lives in the context
        context.run(_JOB.set, job)
        work = asyncio.get_running_loop().run_in_executor(None, functools.partial(context.run, fn, *args, **kwargs))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            job.cancelled.set()
            try:
                with contextlib.suppress(Exception):
                    await work  # stops at its next denoising step (a reconstruction runs to its end)
            finally:
                for path in job.written:
                    path.unlink(missing_ok=True)
            raise

    return run


@contextlib.contextmanager
def user_errors(what: str, upload: str | None = None):
    """Turn library errors into ``gr.Error`` messages a person can act on (no stack trace).

    ``upload`` (a server-side temporary path) is shown by its file name only.
    """
    try:
        yield
    except gr.Error:
        raise
    except Cancelled as err:
        raise gr.Error(f"{what}: {err}; nothing was saved", title="Cancelled", print_exception=False) from err
    except UserError as err:
        text = str(err).replace(str(upload), Path(upload).name) if upload else str(err)
        raise gr.Error(f"{what}: {text}", print_exception=False) from err
    except MemoryError as err:
        raise gr.Error(f"{what}: out of memory. {_smaller_hint()}", print_exception=False) from err
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
            _free_cuda()
            raise gr.Error(f"{what}: out of GPU memory. {_smaller_hint()}", print_exception=False) from err
        log.exception("%s failed", what)
        raise gr.Error(f"{what} failed unexpectedly ({type(err).__name__}: {err}); see the server log.") from err


def _smaller_hint() -> str:
    return "Lower the resolution or the number of latent frames, or turn on decode tiling."


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_resolution(text: str | None) -> tuple[int | None, int | None]:
    """``"1024x576"`` -> (height 576, width 1024); the preset default -> (None, None)."""
    if not text or text == DEFAULT_SIZE:
        return None, None
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
    except ValueError as err:
        raise refuse(f"resolution must look like 1024x576 (width x height), got {text!r}") from err
    from cvvae.pipelines.defaults import LIMITS

    step = LIMITS["height"].step
    if width <= 0 or height <= 0 or width % step or height % step:
        raise refuse(f"resolution {text}: width and height must be positive multiples of {step:g}")
    return height, width


def as_number(name: str, value, kind=int):
    """A control's value as ``kind`` (int or float); gr.Error naming the control when it is not a number."""
    try:
        number = float(value)
        if kind is int and number != int(number):
            raise ValueError
        return kind(number)
    except (TypeError, ValueError, OverflowError):
        raise refuse(f"{name} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None


def frames_label(num_latent_frames: int | float, fps: int | float, vae: str = "cvvae") -> str:
    """Live label: how many video frames and seconds a number of latent frames gives."""
    from cvvae.pipelines.decoding import planned_frames

    n = int(num_latent_frames)
    frames = planned_frames(n, vae)
    seconds = frames / float(fps) if fps else 0.0
    return f"{n} latent frames -> **{frames} video frames** ({seconds:.1f} s at {float(fps):g} fps)"


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


class Handlers:
    """The functions the UI binds, sharing one config, one model cache and one GPU lock."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.config.outputs.mkdir(parents=True, exist_ok=True)
        # Gradio runs one GPU event at a time; this lock also covers a cancelled job still finishing.
        self.gpu_lock = threading.Lock()
        self._vaes: dict[str, object] = {}  # variant -> CV-VAE for Reconstruct
        self._vae_lock = threading.Lock()

    # ---- shared helpers -------------------------------------------------------------------------
    def missing_mode(self, mode: str) -> str | None:
        """The note for a mode this preset has no backbone for (None when it has one)."""
        from cvvae.pipelines.presets import get_preset

        return None if mode in get_preset(self.config.preset).backbones else missing_mode(self.config.preset, mode)

    def require_mode(self, mode: str) -> None:
        """gr.Error before any work when the preset cannot run ``mode`` (its tab is a note, the API remains)."""
        note = self.missing_mode(mode)
        if note:
            raise refuse(note.replace("**", "").replace("`", ""))

    def shipped_adapters(self) -> dict[str, Path]:
        """The preset's shipped adapter (menu name -> folder), when it is installed."""
        from cvvae.pipelines.presets import get_preset

        shipped = get_preset(self.config.preset).adapters
        return {name: Path(f) for name, f in shipped.items() if (Path(f) / "adapter.json").is_file()}

    def default_adapter(self) -> str:
        """What the Compare tab preselects: the preset's shipped adapter, else "none"."""
        return next(iter(self.shipped_adapters()), ADAPTER_NONE)

    def list_adapters(self) -> list[str]:
        """The adapter menu: "none", the preset's shipped adapter, then the folders holding adapter.json found in
        the adapters folder."""
        root = self.config.adapters
        found = sorted(p.parent.name for p in root.glob("*/adapter.json")) if root and root.is_dir() else []
        if root and (root / "adapter.json").is_file():
            found.insert(0, root.name)
        return [ADAPTER_NONE, *self.shipped_adapters(), *found]

    def adapter_path(self, name: str | None) -> str | None:
        """The folder of an adapter listed by ``list_adapters`` (never an arbitrary path)."""
        if not name or name == ADAPTER_NONE:
            return None
        shipped = self.shipped_adapters()
        if name in shipped:
            return str(shipped[name])
        root = self.config.adapters
        if root is None:
            raise refuse("no adapters folder is configured: start the app with --adapters DIR")
        if name not in self.list_adapters():
            raise refuse(f"adapter {name!r} is not in {root}; press refresh to list the adapters found there")
        return str(root if name == root.name and (root / "adapter.json").is_file() else root / name)

    def output_path(self, kind: str, seed: int | None = None, suffix: str = ".mp4") -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = f"_s{seed}" if seed is not None else ""
        return self.config.outputs / f"{kind}_{stamp}{tag}_{uuid.uuid4().hex[:6]}{suffix}"

    def check_budget(self, frames: int, height: int | None, width: int | None) -> None:
        """Refuse jobs that would not fit this machine before any work starts."""
        budget = self.config.pixel_budget
        if budget is None or height is None or width is None:
            return
        if frames * height * width > budget:
            raise refuse(
                f"{frames} frames at {width}x{height} is too large for this machine "
                f"(limit {budget:,} frame-pixels per job). {_smaller_hint()}"
            )

    def info_text(self, result_meta: dict, extra: str = "", vae_variant: str | None = None) -> str:
        """Result lines; a warning first when they come from random (or toy) weights.

        ``vae_variant``: the lines describe a reconstruction by that CV-VAE (not a generation)."""
        lines = [f"**{k}**: {v}" for k, v in result_meta.items()]
        if extra:
            lines.append(extra)
        source = self._vae_source(vae_variant)[0] if vae_variant else None
        if source == "nano":
            lines.insert(0, f"⚠️ {NANO_NOTICE}")
        elif source is None and self.config.preset == "nano":
            lines.insert(0, f"⚠️ {NANO_PRESET_NOTICE}")
        elif self.config.random_weights or source == "tiny":
            lines.insert(0, f"⚠️ {RANDOM_WEIGHTS_NOTICE}")
        return "  \n".join(lines)

    # ---- generation -----------------------------------------------------------------------------
    def _generate(self, settings_kwargs: dict, kind: str, progress) -> tuple[str, list[str], dict]:
        """Validate, check the budget, run ``cvvae.pipelines.api.generate`` and return (video, files, meta)."""
        from cvvae.pipelines import api
        from cvvae.pipelines.decoding import planned_frames

        with user_errors("generation", upload=settings_kwargs.get("image")):
            settings = api.GenerationSettings(**settings_kwargs).validate()
            full = settings.resolved(api.PRESETS[self.config.preset])
            self.check_budget(planned_frames(full.num_latent_frames, full.vae), full.height, full.width)
            out = self.output_path(kind, settings.seed, api.output_suffix(settings.mode))
            progress(0, desc="loading models (first run only)")
            callback = step_callback()
            with self.gpu_lock:
                result = api.generate(
                    settings,
                    out,
                    preset=self.config.preset,
                    device=self.config.device,
                    cpu_offload=self.config.cpu_offload,
                    cvvae_subfolder=self.config.cvvae_subfolder,
                    components=self.config.components or None,
                    callback_on_step_end=callback,
                )
                job_wrote(result.video_path, result.sidecar_path)
        fps = None if result.fps is None else round(float(result.fps), 3)
        meta = {"frames": result.frames, "fps": fps, "seconds": round(result.seconds, 1)}
        meta["size"] = f"{result.metadata.get('width')}x{result.metadata.get('height')}"
        warning = (result.metadata.get("adapter") or {}).get("warning")
        if warning:
            meta["adapter warning"] = f"adapter {Path(settings.adapter).name}: {warning}"
        return str(result.video_path), [str(result.video_path), str(result.sidecar_path)], meta

    def image_to_video(
        self,
        image,
        seed,
        steps,
        min_guidance,
        max_guidance,
        motion_bucket_id,
        fps,
        num_latent_frames,
        resolution,
        noise_aug_strength,
        tiling,
        adapter,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio reads the default)
    ):
        """Image -> video with SVD in CV-VAE latents. Returns (video path, [mp4, json], info markdown)."""
        if not image:
            raise refuse("upload an image first (PNG, JPEG or WebP), or pick one of the examples")
        height, width = parse_resolution(resolution)
        kwargs = dict(
            mode="i2v",
            image=str(image),
            seed=as_number("seed", seed),
            steps=as_number("steps", steps),
            min_guidance=as_number("min_guidance", min_guidance, float),
            max_guidance=as_number("max_guidance", max_guidance, float),
            motion_bucket_id=as_number("motion_bucket_id", motion_bucket_id),
            fps=as_number("fps", fps, float),
            num_latent_frames=as_number("num_latent_frames", num_latent_frames),
            height=height,
            width=width,
            noise_aug_strength=as_number("noise_aug_strength", noise_aug_strength, float),
            adapter=self.adapter_path(adapter),
            decode_tiling=str(tiling or "default"),
        )
        video, files, meta = self._generate(kwargs, "i2v", progress)
        return video, files, self.info_text(meta)

    def text_to_video(
        self,
        prompt,
        negative_prompt,
        backbone,
        seed,
        steps,
        guidance,
        fps,
        num_latent_frames,
        resolution,
        tiling,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        """Text -> video (AnimateDiff, or SD 2.1 image then SVD). Returns (video, [mp4, json], info)."""
        self.require_mode("t2v")
        if not prompt or not str(prompt).strip():
            raise refuse("write a prompt first: describe the video you want")
        height, width = parse_resolution(resolution)
        kwargs = dict(
            mode="t2v",
            prompt=str(prompt).strip(),
            negative_prompt=str(negative_prompt or ""),
            t2v_backbone=str(backbone),
            seed=as_number("seed", seed),
            steps=as_number("steps", steps),
            guidance=as_number("guidance", guidance, float),
            fps=as_number("fps", fps, float),
            num_latent_frames=as_number("num_latent_frames", num_latent_frames),
            height=height,
            width=width,
            decode_tiling=str(tiling or "default"),
        )
        video, files, meta = self._generate(kwargs, "t2v", progress)
        return video, files, self.info_text(meta)

    # ---- reconstruction -------------------------------------------------------------------------
    def vae(self, variant: str = "sd21"):
        """The CV-VAE of ``variant`` (``sd21`` or ``sd3``) for reconstruction, loaded lazily once and shared."""
        if variant not in VAE_VARIANTS:
            raise refuse(f"CV-VAE variant must be one of {', '.join(VAE_VARIANTS)}, got {variant!r}")
        if variant not in self.vae_variants():
            raise refuse(
                f"the {self.config.preset!r} preset has no {VAE_VARIANTS[variant]}; start the app with "
                "--preset tiny (random) or --preset sd3 (real weights) for it"
            )
        with self._vae_lock:
            if variant not in self._vaes:
                from cvvae.devices import default_vae_dtype, resolve_device
                from cvvae.loading import load_vae

                name, subfolder = self._vae_source(variant)
                with user_errors(f"loading {VAE_VARIANTS[variant]}"):  # the command line's default dtype
                    device = resolve_device(self.config.device)
                    self._vaes[variant] = load_vae(
                        name, subfolder, device=device, dtype=default_vae_dtype(device), variant=variant
                    )
            return self._vaes[variant]

    def reconstruct(
        self,
        video,
        max_frames,
        short_side,
        tiling,
        variant="sd21",
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        """Video -> CV-VAE (``variant``) -> video. Returns (side-by-side video, [mp4, json], metrics markdown)."""
        from cvvae.api import reconstruct_file
        from cvvae.video import probe

        if not video:
            raise refuse("upload a video first (MP4, WebM or MOV), or pick the example")
        variant = variant or "sd21"
        with user_errors("reconstruction", upload=video):
            info = probe(video)
            frames = min(as_number("frames", max_frames), info.frames) if max_frames else info.frames
            size = scaled_size(info.height, info.width, short_side)
            h, w = size or (info.height, info.width)
            self.check_budget(frames, h, w)
            changes = tiling_changes(tiling)
            if variant not in self._vaes:
                progress(0, desc="loading CV-VAE (first run only)")
            vae = self.vae(variant)
            progress(None, desc=f"reconstructing {frames} frame{'s' * (frames != 1)} (encode + decode)")
            out = self.output_path("reconstruct")
            with self.gpu_lock:
                res = reconstruct_file(
                    video,
                    out,
                    vae,
                    num_frames=frames,
                    size=size,
                    side_by_side=True,
                    model_id=model_label(*self._vae_source(variant)),
                    tiling=changes,
                )
                job_wrote(*_result_paths(res, out))
        files = [str(p) for p in _result_paths(res, out)]
        extra = f"left: input, right: reconstruction by {VAE_VARIANTS[variant]}"
        return str(out), files, self.info_text(metrics_summary(res), extra, vae_variant=variant)

    def vae_variants(self) -> dict[str, str]:
        """The CV-VAE variants the Reconstruct tab offers: CV-VAE-SD3 with presets that have an SD3 backbone
        (or are random), the SD 2.1 / SVD CV-VAE always."""
        from cvvae.pipelines.backbones import get_backbone
        from cvvae.pipelines.presets import get_preset

        p = get_preset(self.config.preset)
        sd3 = p.random_weights or any(get_backbone(b).vae_variant == "sd3" for b in p.backbones.values())
        return {k: v for k, v in VAE_VARIANTS.items() if k == "sd21" or sd3}

    def _vae_source(self, variant: str = "sd21") -> tuple[str, str | None]:
        """(model, subfolder) of the Reconstruct tab's CV-VAE.

        SD 2.1 / SVD variant: --cvvae, else the CV-VAE component given, else the preset's (``nano`` for the
        ``nano`` preset), else the released model; the ``tiny`` preset reconstructs with ``nano`` (small trained
        weights shipped in ``cvvae/weights/nano``), so the tab shows a real, if blurry, reconstruction offline
        instead of noise. SD3 variant: the CV-VAE component given (its ``vae3d_sd3`` subfolder for the released
        repository), as generation loads it.
        """
        from cvvae.pipelines.presets import get_preset

        preset = get_preset(self.config.preset)
        if variant == "sd3":
            name = self.config.components.get("cvvae") or preset.all_components()["cvvae"]
            return name, (SD3_SUBFOLDER if name == CVVAE_HUB_ID else None)
        name = self.config.cvvae or self.config.components.get("cvvae") or preset.components.get("cvvae")
        if name:
            return name, None
        return ("nano", None) if self.config.random_weights else (CVVAE_HUB_ID, self.config.cvvae_subfolder)

    # ---- comparison -----------------------------------------------------------------------------
    def compare(
        self,
        image,
        seed,
        steps,
        num_latent_frames,
        resolution,
        adapter,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        """Same image and seed through the backbone's own VAE, CV-VAE, and CV-VAE + adapter.

        Returns (native video, CV-VAE video, adapter video or None, markdown table of the measures, files).
        """
        from cvvae.video import read_video

        if not image:
            raise refuse("upload an image first (PNG, JPEG or WebP), or pick one of the examples")
        height, width = parse_resolution(resolution)
        base = dict(mode="i2v", image=str(image), seed=as_number("seed", seed), height=height, width=width)
        base.update(
            steps=as_number("steps", steps), num_latent_frames=as_number("num_latent_frames", num_latent_frames)
        )
        runs = [("backbone VAE", "native", dict(vae="native")), ("CV-VAE", "cvvae", dict(vae="cvvae"))]
        adapter_dir = self.adapter_path(adapter)
        if adapter_dir:
            runs.append((f"CV-VAE + adapter {adapter}", "adapter", dict(vae="cvvae", adapter=adapter_dir)))
        videos, files, rows = [], [], []
        for i, (label, tag, extra) in enumerate(runs):
            progress(i / len(runs), desc=label)
            video, paths, meta = self._generate({**base, **extra}, f"compare-{tag}", progress)
            with user_errors("measuring flicker"):
                f = clip_measures(read_video(video)[0], grouped=tag != "native")
            videos.append(video)
            files += paths
            rows.append((label, meta, f))
        videos += [None] * (3 - len(videos))
        table = flicker_table(rows, self.config.random_weights)
        warnings = {meta["adapter warning"] for _, meta, _ in rows if meta.get("adapter warning")}
        if self.config.preset == "nano":
            warnings.add(NANO_PRESET_NOTICE)
        return (*videos, table + "".join(f"\n\n⚠️ {w}" for w in sorted(warnings)), files)

    def compare_sd3(
        self,
        prompt,
        seed,
        steps,
        resolution,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        """One prompt and seed through SD3: the same latents decoded by SD3's own VAE and by CV-VAE-SD3.

        Returns (SD3 VAE image, CV-VAE-SD3 image, markdown with their agreement, files).
        """
        import numpy as np

        from cvvae.metrics import psnr, ssim
        from cvvae.video import read_image

        self.require_mode("t2i")
        if not str(prompt or "").strip():
            raise refuse("write a prompt first")
        height, width = parse_resolution(resolution)
        base = dict(mode="t2i", prompt=str(prompt), seed=as_number("seed", seed), height=height, width=width)
        base["steps"] = as_number("steps", steps)
        images, files = [], []
        for i, (label, vae) in enumerate((("SD3 VAE", "native"), ("CV-VAE-SD3", "cvvae"))):
            progress(i / 2, desc=label)
            image, paths, _ = self._generate({**base, "vae": vae}, f"compare-sd3-{vae}", progress)
            images.append(image)
            files += paths
        a, b = (np.asarray(read_image(p))[None] for p in images)  # [1, H, W, 3] each
        table = (
            "| same SD3 latents, two decoders | PSNR (dB) | SSIM |\n|---|---|---|\n"
            f"| CV-VAE-SD3 vs SD3's VAE | {_fmt(psnr(a, b))} | {_fmt(ssim(a, b), 4)} |\n\n"
            "Higher = CV-VAE-SD3's latent space agrees better with SD3's."
        )
        if self.config.random_weights:
            table += f"\n\n⚠️ {RANDOM_WEIGHTS_NOTICE}"
        return images[0], images[1], table, files


def scaled_size(height: int, width: int, short_side) -> tuple[int, int] | None:
    """Scale so the short side is ``short_side`` (multiples of 8, aspect kept); "original" -> None."""
    if not short_side or str(short_side) == "original":
        return None
    s = as_number("short side", short_side)
    if min(height, width) <= s:
        return None
    k = s / min(height, width)
    return max(8, round(height * k / 8) * 8), max(8, round(width * k / 8) * 8)


def _result_paths(res: dict, out: Path) -> list[Path]:
    from cvvae.outputs import sidecar_path

    paths = [out, sidecar_path(out)]
    return [p for p in paths if Path(p).is_file()]


def metrics_summary(res: dict) -> dict:
    """The numbers worth showing from a reconstruction result."""
    fl = res.get("flicker") or {}
    out = {
        "frames": res.get("frames"),
        "size": f"{res.get('width')}x{res.get('height')}",
        "PSNR (dB)": _fmt(res.get("psnr")),
        "SSIM": _fmt(res.get("ssim"), 4),
    }
    before = res.get("input_flicker") or {}
    for key, value in fl.items():
        out[f"flicker {key.replace('_', ' ')} (input -> output)"] = f"{_fmt(before.get(key), 4)} -> {_fmt(value, 4)}"
    out["seconds"] = _fmt(res.get("seconds"), 1)
    return out


def clip_measures(frames, grouped: bool) -> dict:
    """``cvvae.metrics.flicker`` (warping error, frame difference, motion) and, for a clip of latent groups
    (``grouped``: CV-VAE's four frames per latent), the group seam and pulse ratios; None where undefined (a
    still clip, a clip too short for the spectrum)."""
    import numpy as np

    from cvvae import metrics

    row = {**metrics.flicker(frames), "group_seam": None, "group_pulse": None}
    if grouped and np.any(frames != frames[:1]):
        with contextlib.suppress(InputError):
            row["group_seam"] = metrics.group_seams(frames, GROUP_FRAMES)["ratio"]
        with contextlib.suppress(InputError):
            row["group_pulse"] = metrics.group_spectrum(frames, GROUP_FRAMES)["ratio"]
    return row


TABLE_COLUMNS = (  # (key, heading): motion first, so each flicker figure reads beside it
    ("motion", "motion (px/frame)"),
    ("warping_error", "warping error"),
    ("frame_difference", "frame difference"),
    ("group_seam", "group seam (1 = none)"),
    ("group_pulse", "group pulse (1 = none)"),
)


def flicker_table(rows, random_weights: bool) -> str:
    """Markdown table: one row per variant with frame count, motion and the flicker measures beside it."""
    heads = ["variant", "frames", "fps", *(h for _, h in TABLE_COLUMNS)]
    head = f"| {' | '.join(heads)} |\n|{'---|' * len(heads)}\n"
    body = "".join(
        f"| {label} | {meta['frames']} | {meta['fps']} | "
        + " | ".join(str(_fmt(f.get(k), 4)) if f.get(k) is not None else "–" for k, _ in TABLE_COLUMNS)
        + " |\n"
        for label, meta, f in rows
    )
    note = (
        "\nLower warping error and frame difference = smoother, but only at equal motion: a clip that moves "
        f"less also scores lower. Group seam and pulse: the jump at CV-VAE's {GROUP_FRAMES}-frame latent groups "
        "and the temporal spectrum's energy at their rate, 1.0 = none (– : one frame per latent, a still clip "
        f"or fewer than {2 * GROUP_FRAMES} frames)."
    )
    warning = f"\n\n⚠️ {RANDOM_WEIGHTS_NOTICE}" if random_weights else ""
    return head + body + note + warning


def _fmt(value, digits: int = 2):
    if value is None:
        return "n/a"
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return value
