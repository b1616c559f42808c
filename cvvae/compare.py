"""Any set of video VAEs measured on the same clips by the same protocol (``python -m cvvae compare``).

The literature's protocol by default: the first 17 and 33 frames of each clip, scaled and centre-cropped to
256x256, encoded (posterior mode) and decoded whole or with each VAE's own tiling. Per (clip, VAE, frames):
per-frame PSNR / SSIM means, LPIPS, the flicker measures with the input's motion beside them, latent shape,
compression, parameters, encode / decode seconds and peak memory; for a VAE whose latents claim to match an
image VAE (``VideoVAE.image_vae``), how its latents decode through that image VAE and back.

Every finished (clip, VAE, frames) is a JSON row under ``OUT/rows/`` (its reconstruction under ``OUT/recon/``),
written atomically, so an interrupted comparison continues where it stopped; a VAE that fails to load or to
run is a row with its error. ``cvvae.compare_report`` turns the rows into tables, a plot and grid videos.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import tiny_vaes  # noqa: F401 (registers the tiny random diffusers VAEs: tiny-wan, ...)
from .errors import InputError
from .vaes import CVVAE, VAE_SPECS, DiffusersVideoVAE, VideoVAE, load_video_vae

# dtype each family's own diffusers documentation loads its VAE in (on CUDA; fp32 on CPU); else fp16
RECOMMENDED_DTYPES = {
    "AutoencoderKLWan": "fp32",
    "AutoencoderKLAllegro": "fp32",
    "AutoencoderKLMochi": "bf16",
    "AutoencoderKLCosmos": "bf16",
    "AutoencoderKLLTXVideo": "bf16",
    "AutoencoderKLCogVideoX": "bf16",
    "AutoencoderKLHunyuanVideo": "fp16",
}


@dataclass(frozen=True)
class Protocol:
    """How every clip is measured; every field but ``frames`` must match for rows to be resumed."""

    frames: tuple[int, ...] = (17, 33)
    size: tuple[int, int] | None = (256, 256)  # (height, width); None: the clips' own (one size for all)
    resize: str = "crop"
    start: int = 0
    stride: int = 1
    sample: bool = False  # sample the posterior (seeded) instead of taking its mode
    seed: int = 0
    tiling: bool = True  # each VAE's own tiling; False: whole clips
    dtype: str | None = None  # None: each VAE's recommended dtype
    device: str = "cpu"

    def validate(self) -> Protocol:
        if not self.frames or min(self.frames) < 2:
            raise InputError(f"frame counts must be at least 2 (flicker needs two frames), got {list(self.frames)}")
        if self.size is not None and min(self.size) < 8:
            raise InputError(f"the size must be at least 8x8 pixels, got {self.size[0]}x{self.size[1]}")
        if self.start < 0:
            raise InputError(f"start must be >= 0, got {self.start}")
        return self

    def settings(self) -> dict:
        """The fields resumed rows must share."""
        return {k: v for k, v in asdict(self).items() if k != "frames"} | {"size": self._size_list()}

    def _size_list(self):
        return list(self.size) if self.size else None


def parse_size(text: str) -> tuple[int, int] | None:
    """``256x256`` (height x width) or ``native``."""
    if text.strip().lower() == "native":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"a size is HEIGHTxWIDTH (e.g. 256x256) or 'native', got {text!r}")
    return int(m[1]), int(m[2])


def parse_frames(text: str) -> tuple[int, ...]:
    """``17,33`` -> (17, 33)."""
    try:
        counts = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise InputError(f"frame counts are whole numbers separated by commas (e.g. 17,33), got {text!r}") from None
    if not counts:
        raise InputError("no frame count given (e.g. --frames 17,33)")
    return counts


def check_spec(spec: str) -> str:
    """Refuse a VAE spec the loader cannot even interpret (before any work); loading errors come later, as rows."""
    from .hub import looks_local

    spec = str(spec).strip()
    cls_name, sep, model = spec.partition(":")
    if spec in VAE_SPECS or (sep and cls_name.startswith("Autoencoder") and model):
        return spec
    if spec and (looks_local(spec) or spec.count("/") == 1):
        return spec
    raise InputError(
        f"unknown VAE {spec!r}: name one of {', '.join(VAE_SPECS)}, Class:model for a diffusers VAE "
        "(e.g. AutoencoderKLWan:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae), or a CV-VAE folder"
    )


def slug(text: str, length: int = 40, unique: str | None = None) -> str:
    """A file-name-safe form of ``text`` with a short hash of ``unique`` (default ``text``): distinct, readable."""
    digest = hashlib.sha1((unique or text).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', text).strip('-')[:length]}-{digest}"


# ----------------------------------------------------------------------------- clips


@dataclass
class Clip:
    path: str
    key: str
    frames: np.ndarray  # uint8 [T, H, W, 3]: the longest selection; shorter ones are its first frames
    fps: float
    reference: dict = field(default_factory=dict)  # frames -> the input's own flicker and motion


def read_clips(paths: list[str], protocol: Protocol) -> list[Clip]:
    """Every clip at the protocol's size and longest frame count; refuses short clips and mixed sizes."""
    from .video import read_video

    need, clips = max(protocol.frames), []
    for path in paths:
        frames, fps = read_video(path, protocol.start, need, protocol.stride, protocol.size, protocol.resize)
        if len(frames) < need:
            raise InputError(
                f"{path} is too short: {len(frames)} frames from frame {protocol.start} with stride "
                f"{protocol.stride}, and the protocol needs {need} (--frames)"
            )
        resolved = str(Path(path).resolve())
        clips.append(Clip(str(path), slug(Path(path).stem, 30, resolved), frames, fps))
    if len({c.key for c in clips}) < len(clips):
        raise InputError("a clip is given twice")
    sizes = {c.frames.shape[1:3] for c in clips}
    if len(sizes) > 1:
        shown = ", ".join(f"{Path(c.path).name}: {c.frames.shape[1]}x{c.frames.shape[2]}" for c in clips)
        raise InputError(f"the clips have different sizes ({shown}); pass --size HxW to measure them at one size")
    return clips


# ----------------------------------------------------------------------------- the results store


class ResultStore:
    """One JSON row per (clip, VAE, frames) under ``OUT/rows``, its reconstruction under ``OUT/recon``."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.rows_dir, self.recon_dir = self.out / "rows", self.out / "recon"

    def open(self, protocol: Protocol) -> ResultStore:
        """Check (or record) the protocol: rows measured otherwise cannot be mixed in (exit 2, nothing touched)."""
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"the output {self.out} is a file; give a folder for the comparison")
        path = self.out / "protocol.json"
        wanted = json.loads(json.dumps(protocol.settings()))
        if path.is_file():
            try:
                found = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read {path} ({err}); use another output folder") from None
            differ = [f"{k} {found.get(k)!r} (now {v!r})" for k, v in wanted.items() if found.get(k) != v]
            if differ:
                raise InputError(
                    f"{self.out} holds results measured with other settings: {'; '.join(differ)}; "
                    "use the same settings to resume, or another output folder"
                )
        else:
            from .outputs import write_json_atomic

            write_json_atomic(path, wanted)
        return self

    def name(self, clip: Clip, spec: str, frames: int) -> str:
        return f"{clip.key}__{slug(spec)}__{frames}f"

    def recon_path(self, clip: Clip, spec: str, frames: int) -> Path:
        return self.recon_dir / f"{self.name(clip, spec, frames)}.mp4"

    def done(self, clip: Clip, spec: str, frames: int) -> bool:
        row = self.get(clip, spec, frames)
        return bool(row) and row["status"] == "ok" and self.recon_path(clip, spec, frames).is_file()

    def get(self, clip: Clip, spec: str, frames: int) -> dict | None:
        path = self.rows_dir / f"{self.name(clip, spec, frames)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, row: dict, clip: Clip, recon: np.ndarray | None = None) -> None:
        """The reconstruction first, then the row: a row marked ok always has its video."""
        from .outputs import write_json_atomic
        from .video import write_video_and_sidecar

        spec, frames = row["vae"], row["frames"]
        if recon is not None:
            path = self.recon_path(clip, spec, frames)
            meta = {"kind": "compare-reconstruction", "input": clip.path, "vae": spec, "frames": frames}
            write_video_and_sidecar(path, recon, clip.fps, meta)
            row["recon"] = str(path.relative_to(self.out))
        write_json_atomic(self.rows_dir / f"{self.name(clip, spec, frames)}.json", row)

    def rows(self) -> list[dict]:
        out = []
        for path in sorted(self.rows_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a row being written by another run; it comes back next time
        return out


# ----------------------------------------------------------------------------- measuring


def _rss() -> int | None:
    """Anonymous resident memory of this process in bytes (Linux ``/proc``: resident minus file-backed and
    shared pages, which the kernel may drop at any time), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            resident, shared = (int(v) for v in f.read().split()[1:3])
            return (resident - shared) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory above the level at entry, in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else the
    process's anonymous resident memory sampled every 2 ms (``kind`` says which; ``mib`` is None if unmeasurable)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = torch.device(device), None
        self.kind = "cuda max allocated" if self.device.type == "cuda" else "cpu rss"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if self.base is not None:  # no /proc: nothing to sample, ``mib`` stays None
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, _rss() or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
            return False
        self.stop.set()
        if self.base is not None:
            self.thread.join()
            self.mib = (max(self.peak, _rss() or 0) - self.base) / 2**20
        return False


def motion(frames: np.ndarray, max_side: int = 512) -> float:
    """Mean optical-flow magnitude between consecutive frames, in pixels of the clip per frame (DIS on luma)."""
    import cv2

    h, w = frames.shape[1:3]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grays = [cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    mags = [np.linalg.norm(dis.calc(a, b, None), axis=-1).mean() for a, b in zip(grays[:-1], grays[1:])]
    return float(np.mean(mags) / scale) if mags else 0.0


def reference_measures(clip: Clip, frames: int) -> dict:
    """The input's own flicker and motion (what a VAE's flicker is read against), cached per clip."""
    from . import metrics

    if frames not in clip.reference:
        x = clip.frames[:frames]
        clip.reference[frames] = {
            "input_warping_error": metrics.warping_error(x),
            "input_frame_difference": metrics.frame_difference(x),
            "motion_px": motion(x),
        }
    return clip.reference[frames]


def lpips_distance(lpips, a: np.ndarray, b: np.ndarray, batch: int = 8) -> float | None:
    """Mean per-frame LPIPS of two uint8 clips (None without an LPIPS network)."""
    if lpips is None:
        return None
    from .frames import frames_to_tensor

    device = next(lpips.parameters()).device
    values = []
    for i in range(0, len(a), batch):
        x = frames_to_tensor(a[i : i + batch], device)[0].transpose(0, 1)  # [1, 3, t, H, W] -> [t, 3, H, W]
        y = frames_to_tensor(b[i : i + batch], device)[0].transpose(0, 1)
        with torch.inference_mode():
            values.append(lpips(x, y).float().cpu())
    return float(torch.cat(values).mean())


def quality(x: np.ndarray, y: np.ndarray, lpips=None) -> dict:
    """Reconstruction ``y`` of ``x``: per-frame PSNR / SSIM means, LPIPS, flicker (flow from the input)."""
    from . import metrics

    return {
        "psnr": metrics.psnr(x, y),
        "ssim": metrics.ssim(x, y),
        "psnr_clip": metrics.psnr_clip(x, y),
        "lpips": lpips_distance(lpips, x, y),
        "warping_error": metrics.warping_error(y, reference=x),
        "frame_difference": metrics.frame_difference(y),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_decode(vae: VideoVAE, frames: np.ndarray, protocol: Protocol) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Latents, reconstruction and the cost of each half (seconds, peak memory)."""
    device = vae.device
    generator = torch.Generator(device).manual_seed(protocol.seed) if protocol.sample else None
    with PeakMemory(device) as enc_mem:
        t0 = time.perf_counter()
        z = vae.encode_frames(frames, protocol.sample, generator)
        _sync(device)
        encode_s = time.perf_counter() - t0
    with PeakMemory(device) as dec_mem:
        t0 = time.perf_counter()
        recon = vae.decode_frames(z, frames.shape[:3])
        _sync(device)
        decode_s = time.perf_counter() - t0
    if recon.shape != frames.shape:
        raise InputError(f"{vae.name} returned frames of shape {recon.shape} for an input of {frames.shape}")
    cost = {"encode_s": encode_s, "decode_s": decode_s, "encode_peak_mib": enc_mem.mib}
    return z, recon, cost | {"decode_peak_mib": dec_mem.mib, "memory_measure": enc_mem.kind}


def sd_compatibility(vae: VideoVAE, image_vae: VideoVAE, frames: np.ndarray, z: torch.Tensor, lpips=None) -> dict:
    """The video latents through the image VAE's decoder and the image VAE's latents through the video decoder.

    Latent frame k stands for frame ``k * temporal_factor`` (the paper's ``slice`` mapping; frame 0 for the
    first latent): those frames are the image decoder's targets, and the image encoder's input.
    """
    f = vae.temporal_factor
    index = np.minimum(np.arange(z.shape[2]) * f, len(frames) - 1)
    targets = frames[index]
    size = targets.shape[:3]
    image_decoded = image_vae.decode_frames(z, size)  # [m, H, W, 3]
    z_image = image_vae.encode_frames(targets)  # [1, C, m, h, w]
    video_decoded = vae.decode_frames(z_image, (vae.video_frames(z_image.shape[2]), *frames.shape[1:3]))
    n = min(len(video_decoded), len(frames))
    own = image_vae.decode_frames(z_image, size)

    def pick(q):
        return {k: q[k] for k in ("psnr", "ssim", "lpips")}

    return {
        "image_vae": image_vae.name,
        "mapped_frames": index.tolist(),
        "image_decoder_on_video_latents": pick(quality(targets, image_decoded, lpips)),
        "video_decoder_on_image_latents": pick(quality(frames[:n], video_decoded[:n], lpips)),
        "image_vae_own": pick(quality(targets, own, lpips)),
    }


def describe(vae: VideoVAE, frames: np.ndarray, z: torch.Tensor) -> dict:
    return {
        "name": vae.name,
        "class": type(vae.module).__name__,
        "random_weights": bool(vae.random_weights),
        "latent_shape": list(z.shape[1:]),
        "latent_channels": vae.latent_channels,
        "temporal_factor": vae.temporal_factor,
        "spatial_factor": vae.spatial_factor,
        "compression": vae.compression(),
        "compression_of_clip": float(frames.size / z[0].numel()),  # with the causal frame and padding
        "parameters": vae.parameters(),
        "dtype": str(vae.dtype).removeprefix("torch."),
        "device": str(vae.device),
    }


# ----------------------------------------------------------------------------- running


def dtype_for(spec: str, protocol: Protocol) -> torch.dtype:
    """The protocol's dtype, else the VAE family's recommended one on CUDA (fp16 by default), fp32 elsewhere."""
    from .devices import resolve_dtype

    if protocol.dtype or torch.device(protocol.device).type != "cuda":
        return resolve_dtype(protocol.dtype or "fp32", protocol.device)
    return resolve_dtype(RECOMMENDED_DTYPES.get(spec.partition(":")[0], "fp16"), protocol.device)


def load_for_comparison(spec: str, protocol: Protocol) -> tuple[VideoVAE, float]:
    """The VAE at its dtype, with its own tiling (or none when the protocol says so), and the seconds it took."""
    t0 = time.perf_counter()
    vae = load_video_vae(spec, device=protocol.device, dtype=dtype_for(spec, protocol))
    if not protocol.tiling and isinstance(vae, CVVAE):
        vae.tiling = {"enabled": False}
    elif not protocol.tiling and isinstance(vae, DiffusersVideoVAE) and hasattr(vae.module, "disable_tiling"):
        vae.module.disable_tiling()
    return vae, time.perf_counter() - t0


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]


def _base_row(spec: str, clip: Clip, frames: int, protocol: Protocol) -> dict:
    return {
        "vae": spec,
        "clip": Path(clip.path).name,
        "clip_path": clip.path,
        "frames": frames,
        "size": list(clip.frames.shape[1:3]),
        "tiling": protocol.tiling,
    }


def measure(vae: VideoVAE, image_vae, clip: Clip, frames: int, protocol: Protocol, lpips=None):
    """One (clip, VAE, frames) row and its reconstruction."""
    x = clip.frames[:frames]
    z, recon, cost = encode_decode(vae, x, protocol)
    row = {"status": "ok", **describe(vae, x, z), **quality(x, recon, lpips), **reference_measures(clip, frames)}
    row |= cost
    if isinstance(image_vae, VideoVAE):
        try:
            row["sd"] = sd_compatibility(vae, image_vae, x, z, lpips)
        except Exception as err:  # a mismatch of the two VAEs is reported, not fatal
            row["sd"] = {"image_vae": image_vae.name, "error": _error(err)}
    elif image_vae is not None:
        row["sd"] = {"image_vae": vae.image_vae, "error": image_vae}
    return row, recon


def run_vae(spec: str, clips: list[Clip], protocol: Protocol, store: ResultStore, lpips=None, bar=None) -> None:
    """Every missing (clip, frames) row of one VAE; a load or run failure becomes that row's error."""
    todo = [(c, n) for c in clips for n in protocol.frames if not store.done(c, spec, n)]
    if bar is not None:
        bar.update(len(clips) * len(protocol.frames) - len(todo))
    if not todo:
        return
    try:
        vae, load_s = load_for_comparison(spec, protocol)
    except Exception as err:  # missing weights, an unknown class, no memory: a row, not a crash
        for clip, n in todo:
            failed = {"status": "error", "stage": "load", "error": _error(err)}
            store.put(_base_row(spec, clip, n, protocol) | failed, clip)
            bar is not None and bar.update(1)
        return
    image_vae = None
    if vae.image_vae:
        try:
            image_vae, _ = load_for_comparison(vae.image_vae, protocol)
        except Exception as err:
            image_vae = _error(err)
    try:
        vae.reconstruct(todo[0][0].frames[: min(protocol.frames)])  # warm-up: timings without first-call costs
    except Exception:
        pass  # the measured call below reports the error
    for clip, n in todo:
        if bar is not None:
            bar.set_postfix_str(f"{vae.name} on {Path(clip.path).name} ({n} frames)")
        row = _base_row(spec, clip, n, protocol) | {"load_s": load_s}
        try:
            measured, recon = measure(vae, image_vae, clip, n, protocol, lpips)
            store.put(row | measured, clip, recon)
        except Exception as err:
            store.put(row | {"status": "error", "stage": "run", "error": _error(err)}, clip)
        bar is not None and bar.update(1)
    del vae, image_vae
    gc.collect()
    if torch.device(protocol.device).type == "cuda":
        torch.cuda.empty_cache()


def load_lpips_or_none(path: str | None, device) -> tuple[object | None, str]:
    """The LPIPS network from ``path`` (else ``$CVVAE_LPIPS_WEIGHTS``), or None and why."""
    path = path or os.environ.get("CVVAE_LPIPS_WEIGHTS")
    if not path:
        return None, "not measured: no LPIPS weights (pass --lpips or set CVVAE_LPIPS_WEIGHTS, see docs/metrics.md)"
    if not Path(path).is_file():
        raise InputError(f"the LPIPS weights {path} do not exist")
    from .lpips import load_lpips

    return load_lpips(path).to(device), f"AlexNet LPIPS v0.1 from {Path(path).name}"


def compare(
    clips: list[str], specs: list[str], out: str | os.PathLike, protocol: Protocol, lpips_path=None, progress=True
) -> dict:
    """Measure every VAE in ``specs`` on every clip by ``protocol`` into ``out`` (resuming what is there);
    writes the report (``comparison.md``, ``.json``, ``.png``, grid videos) and returns its summary."""
    from tqdm.auto import tqdm

    from .compare_report import write_report

    protocol.validate()
    specs = [check_spec(s) for s in specs]
    if len(set(specs)) < len(specs):
        raise InputError("a VAE is given twice")
    read = read_clips(clips, protocol)
    lpips, lpips_note = load_lpips_or_none(lpips_path, protocol.device)
    store = ResultStore(out).open(protocol)  # the first write of a run: after every check of the input
    total = len(read) * len(specs) * len(protocol.frames)
    with tqdm(total=total, desc="compare", unit="row", disable=not progress) as bar:
        for spec in specs:
            run_vae(spec, read, protocol, store, lpips, bar)
    return write_report(store, read, specs, protocol, lpips_note)
