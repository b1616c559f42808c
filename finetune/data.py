"""Training data: videos -> clips of 1 + 4(n-1) frames -> a CV-VAE latent cache on disk.

Cache layout (``data.cache_dir``)::

    cache.json               settings the cache was built with (a resume must match them)
    shard-00000.safetensors  latents_mean/latents_logvar [K,4,n,h,w] (raw CV-VAE latents, no scaling),
                             cond_latent [K,4,h,w] (first frame encoded as an image, latent_dist.mode()),
                             image_embeds [K,1,D] (CLIP image embedding of the first frame), fps [K]
    manifest.json            every clip (source, start, frames, stride, fps, size, shard, index) + model ids
    report.json              videos and clips that were skipped, with the reason

Shards are written atomically and skipped when present, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cvvae.errors import InputError
from cvvae.outputs import atomic_path, write_json_atomic

from .config import DataConfig

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}
MANIFEST, SETTINGS, REPORT = "manifest.json", "cache.json", "report.json"
CACHE_VERSION = 1


@dataclass
class Source:
    path: str
    fps: float | None = None  # the true frame rate of the file, overriding what its container says


@dataclass
class Clip:
    source: str
    start: int
    frames: int
    stride: int
    fps: float  # fps of the clip (source fps / stride)
    size: tuple[int, int]  # (height, width)


def list_sources(videos: str | Path) -> list[Source]:
    """A folder (searched recursively for videos) or a .csv/.jsonl list with ``path`` and optional ``fps``."""
    videos = Path(videos)
    if videos.is_dir():
        files = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"{videos} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
        return [Source(str(p)) for p in files]
    if not videos.is_file():
        raise InputError(f"data.videos={videos} is neither a folder of videos nor a .csv/.jsonl list")
    rows = _read_list(videos)
    if not rows:
        raise InputError(f"{videos} lists no videos")
    sources = []
    for i, row in enumerate(rows, 1):
        if not row.get("path"):
            raise InputError(f"{videos}: entry {i} has no 'path'")
        path = Path(row["path"])
        path = path if path.is_absolute() else videos.parent / path
        fps = row.get("fps")
        try:
            fps = float(fps) if fps not in (None, "") else None
        except ValueError as err:
            raise InputError(f"{videos}: entry {i} has a bad fps {row['fps']!r}") from err
        if fps is not None and fps <= 0:
            raise InputError(f"{videos}: entry {i} has fps {fps}; it must be > 0")
        sources.append(Source(str(path), fps))
    return sources


def _read_list(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}: line {n} is not JSON: {err}") from err
        return rows
    raise InputError(f"{path}: a video list must be .csv or .jsonl")


def plan_clips(sources: list[Source], cfg: DataConfig) -> tuple[list[Clip], list[dict]]:
    """Cut every source into up to ``clips_per_video`` non-overlapping clips; unreadable/short ones are skipped."""
    from cvvae.video import probe

    clips, skipped = [], []
    for src in sources:
        try:
            info = probe(src.path)
        except InputError as err:
            skipped.append({"source": src.path, "reason": str(err)})
            continue
        fps = src.fps or info.fps
        stride = max(1, round(fps / cfg.fps)) if cfg.fps else cfg.stride
        span = (cfg.num_frames - 1) * stride + 1  # source frames one clip covers
        count = min(cfg.clips_per_video, info.frames // span)
        if count < 1:
            reason = f"too short: {info.frames} frames, a clip needs {span} ({cfg.num_frames} frames, stride {stride})"
            skipped.append({"source": src.path, "reason": reason})
            continue
        for k in range(count):
            clips.append(Clip(src.path, k * span, cfg.num_frames, stride, fps / stride, (cfg.height, cfg.width)))
    return clips, skipped


def cache_settings(cfg: DataConfig, model_ids: dict) -> dict:
    keys = ("height", "width", "num_latent_frames", "stride", "fps", "clips_per_video", "shard_size", "resize")
    return {"version": CACHE_VERSION, **{k: getattr(cfg, k) for k in keys}, "models": model_ids}


def _check_settings(cache_dir: Path, settings: dict, videos: str) -> None:
    path = cache_dir / SETTINGS
    wanted = {**settings, "videos": str(videos)}
    if path.is_file():
        have = json.loads(path.read_text(encoding="utf-8"))
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise InputError(
                f"{cache_dir} was built with other settings ({', '.join(diff)} differ); "
                "use a new data.cache_dir or delete the old cache"
            )
    else:
        write_json_atomic(path, wanted)


@torch.no_grad()
def clip_embedding(image_encoder, feature_extractor, frame: np.ndarray) -> torch.Tensor:
    """CLIP image embedding ``[1, 1, D]`` of a uint8 ``[H, W, 3]`` frame, preprocessed as the SVD pipeline does."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    param = next(image_encoder.parameters())
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1  # [H,W,3] -> [1,3,H,W] in [-1,1]
    x = (_resize_with_antialiasing(x, (224, 224)) + 1) / 2
    pixels = feature_extractor(
        images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt"
    ).pixel_values
    return image_encoder(pixels.to(param.device, param.dtype)).image_embeds.unsqueeze(1).float().cpu()


@torch.no_grad()
def encode_clip(frames: np.ndarray, vae, image_encoder, feature_extractor) -> dict[str, torch.Tensor]:
    """Encode uint8 ``[T, H, W, 3]`` frames into the tensors one cache entry holds."""
    from cvvae.video import frames_to_tensor

    param = next(vae.parameters())
    x = frames_to_tensor(frames).to(param.device, param.dtype)  # [1, 3, T, H, W]
    dist = vae.encode(x).latent_dist
    cond = vae.encode(x[:, :, 0]).latent_dist.mode()  # first frame as an image
    if cond.dim() == 5:
        cond = cond[:, :, 0]  # [1, 4, 1, h, w] -> [1, 4, h, w]
    return {
        "latents_mean": dist.mean[0].float().cpu(),
        "latents_logvar": dist.logvar[0].float().cpu(),
        "cond_latent": cond[0].float().cpu(),
        "image_embeds": clip_embedding(image_encoder, feature_extractor, frames[0])[0],
    }


def _write_shard(path: Path, clips: list[Clip], cfg: DataConfig, encoders: dict, pbar) -> list[dict]:
    """Encode ``clips`` into one shard file; returns the clips that failed (with reasons)."""
    from safetensors.torch import save_file

    from cvvae.video import read_video

    rows, failed, kept = [], [], []
    for clip in clips:
        try:
            frames, _ = read_video(clip.source, clip.start, clip.frames, clip.stride, clip.size, cfg.resize)
            if len(frames) != clip.frames:
                raise InputError(f"only {len(frames)} of {clip.frames} frames could be read")
        except InputError as err:
            failed.append({"source": clip.source, "start": clip.start, "reason": str(err)})
            pbar.update(1)
            continue
        rows.append(encode_clip(frames, encoders["vae"], encoders["image_encoder"], encoders["feature_extractor"]))
        kept.append({**asdict(clip), "size": list(clip.size)})
        pbar.update(1)
    tensors = {k: torch.stack([r[k] for r in rows]).contiguous() for k in rows[0]} if rows else {}
    if rows:
        tensors["fps"] = torch.tensor([c["fps"] for c in kept], dtype=torch.float32)
    else:
        tensors["empty"] = torch.zeros(0)
    meta = {"clips": json.dumps(kept), "skipped": json.dumps(failed)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return failed


def shard_meta(path: Path) -> tuple[list[dict], list[dict]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("clips", "[]")), json.loads(meta.get("skipped", "[]"))


def build_cache(cfg: DataConfig, encoders: dict, model_ids: dict, limit_shards: int | None = None) -> dict:
    """Build (or resume) the latent cache of ``cfg.videos`` in ``cfg.cache_dir``; returns the manifest.

    ``encoders`` holds ``vae`` (CV-VAE), ``image_encoder`` and ``feature_extractor`` (SVD's CLIP).
    ``limit_shards`` stops after writing that many new shards (for tests of resumption).
    """
    cache_dir = Path(cfg.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = list_sources(cfg.videos)
    _check_settings(cache_dir, cache_settings(cfg, model_ids), cfg.videos)
    clips, skipped = plan_clips(sources, cfg)
    for item in skipped:
        log.warning("skipping %s: %s", item["source"], item["reason"])
    shards = [clips[i : i + cfg.shard_size] for i in range(0, len(clips), cfg.shard_size)]
    written = 0
    with tqdm(total=len(clips), desc="caching clips", unit="clip") as pbar:
        for i, group in enumerate(shards):
            path = cache_dir / f"shard-{i:05d}.safetensors"
            if path.is_file():
                pbar.update(len(group))
                continue
            if limit_shards is not None and written >= limit_shards:
                return {}
            _write_shard(path, group, cfg, encoders, pbar)
            written += 1
    return _write_manifest(cache_dir, len(shards), skipped, model_ids, cfg)


def _write_manifest(cache_dir: Path, num_shards: int, skipped: list, model_ids: dict, cfg: DataConfig) -> dict:
    entries, failed = [], list(skipped)
    for i in range(num_shards):
        name = f"shard-{i:05d}.safetensors"
        kept, bad = shard_meta(cache_dir / name)
        entries += [{**c, "shard": name, "index": j} for j, c in enumerate(kept)]
        failed += bad
    write_json_atomic(cache_dir / REPORT, {"skipped": failed, "num_skipped": len(failed)})
    if not entries:
        raise InputError(f"no usable clips in {cfg.videos}: see {cache_dir / REPORT}")
    manifest = {
        "version": CACHE_VERSION,
        "models": model_ids,
        "settings": cache_settings(cfg, model_ids),
        "num_clips": len(entries),
        "clips": entries,
        "skipped": failed,
    }
    write_json_atomic(cache_dir / MANIFEST, manifest)
    return manifest


def load_manifest(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{cache_dir} holds no {MANIFEST}: build the cache first (python -m finetune cache ...)")
    return json.loads(path.read_text(encoding="utf-8"))


class LatentCache(torch.utils.data.Dataset):
    """The cached clips as a map-style dataset; shards are read lazily (memory-mapped by safetensors)."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(cache_dir)
        self.clips = self.manifest["clips"]
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._open:
            self._open[name] = safe_open(str(self.cache_dir / name), framework="pt")
        return self._open[name]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = self.clips[i]
        f, j = self._shard(clip["shard"]), clip["index"]
        keys = ("latents_mean", "latents_logvar", "cond_latent", "image_embeds", "fps")
        return {k: f.get_slice(k)[j : j + 1][0] for k in keys}

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_open": {}}

    def summary(self) -> dict:
        m = self.manifest
        return {"cache_dir": str(self.cache_dir), "num_clips": len(self), "settings": m["settings"]}
