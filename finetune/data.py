"""Training data: videos -> clips of 1 + 4(n-1) frames -> a CV-VAE latent cache on disk.

Cache layout (``data.cache_dir``)::

    cache.json               settings the cache was built with (a resume must match them)
    shard-00000.safetensors  latents_mean/latents_logvar [K,C,n,h,w] (raw CV-VAE latents, no scaling),
                             cond_pixels [K,3,H,W] uint8 (the first frame: training adds SVD's noise in
                             pixels and encodes it with CV-VAE, as generation does),
                             image_embeds [K,1,D] (CLIP image embedding of the first frame), fps [K]
    manifest.json            every clip (source, start, frames, stride, fps, size, shard, index), model ids
                             and the CV-VAE's latent scaling
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
from cvvae.latents import LatentScaling
from cvvae.outputs import atomic_path, write_json_atomic
from cvvae.pipelines.conditioning import clip_image_embeds
from cvvae.video import VIDEO_SUFFIXES, check_fps, frames_to_tensor, probe, read_video

from .config import LatentCacheConfig

log = logging.getLogger(__name__)
MANIFEST, SETTINGS, REPORT = "manifest.json", "cache.json", "report.json"
CACHE_VERSION = 2
TENSOR_KEYS = ("latents_mean", "latents_logvar", "cond_pixels", "image_embeds", "fps")


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
    if videos.suffix.lower() in VIDEO_SUFFIXES:
        return [Source(str(videos))]  # a single video
    rows = _read_list(videos)
    if not rows:
        raise InputError(f"{videos} lists no videos")
    sources = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("path"):
            raise InputError(f"{videos}: entry {i} must be an object with a 'path', got {row!r:.80}")
        path = Path(row["path"])
        path = path if path.is_absolute() else videos.parent / path
        fps = row.get("fps")
        try:
            fps = float(fps) if fps not in (None, "") else None
        except (TypeError, ValueError) as err:
            raise InputError(f"{videos}: entry {i} has a bad fps {row['fps']!r}") from err
        if fps is not None:
            check_fps(fps, f"{videos}: entry {i} has fps")
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
    raise InputError(f"{path}: data.videos must be a folder, a video, or a .csv / .jsonl list")


def plan_clips(
    sources: list[Source], cfg: LatentCacheConfig, temporal_factor: int = 4
) -> tuple[list[Clip], list[dict]]:
    """Cut every source into up to ``clips_per_video`` non-overlapping clips of ``cfg.num_frames(temporal_factor)``
    frames (the VAE's frames per latent); unreadable or short ones are skipped."""
    clips, skipped, frames = [], [], cfg.num_frames(temporal_factor)
    for src in sources:
        try:
            info = probe(src.path)
        except InputError as err:
            skipped.append({"source": src.path, "reason": str(err)})
            continue
        fps = src.fps or info.fps
        stride = max(1, round(fps / cfg.fps)) if cfg.fps else cfg.stride
        span = (frames - 1) * stride + 1  # source frames one clip covers
        count = min(cfg.clips_per_video, info.frames // span)
        if count < 1:
            reason = f"too short: {info.frames} frames, a clip needs {span} ({frames} frames, stride {stride})"
            skipped.append({"source": src.path, "reason": reason})
            continue
        for k in range(count):
            clips.append(Clip(src.path, k * span, frames, stride, fps / stride, (cfg.height, cfg.width)))
    return clips, skipped


def cache_settings(cfg: LatentCacheConfig, model_ids: dict) -> dict:
    keys = ("height", "width", "num_latent_frames", "stride", "fps", "clips_per_video", "shard_size", "resize")
    return {"version": CACHE_VERSION, **{k: getattr(cfg, k) for k in keys}, "models": model_ids}


def _check_settings(cache_dir: Path, settings: dict, videos: str) -> None:
    path = cache_dir / SETTINGS
    wanted = {**settings, "videos": str(videos)}
    if path.is_file():
        have = read_json(path, "use a new data.cache_dir or delete the damaged cache")
        if have != wanted:
            diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
            raise InputError(
                f"{cache_dir} was built with other settings ({', '.join(diff)} differ); "
                "use a new data.cache_dir or delete the old cache"
            )
    else:
        write_json_atomic(path, wanted)


@torch.no_grad()
def encode_clip(frames: np.ndarray, encoders: dict, tiling: dict | None = None) -> dict[str, torch.Tensor]:
    """Encode uint8 ``[T, H, W, 3]`` frames into the tensors one cache entry holds.

    ``encoders["vae"]`` is a :class:`cvvae.vaes.VideoVAE`; ``tiling`` the CV-VAE tiling of this encode
    (changes to the model's settings; ``{"enabled": False}`` for whole clips).
    """
    vae = encoders["vae"]
    if tiling is not None and hasattr(vae, "tiling"):
        vae.tiling = tiling
    x = frames_to_tensor(frames, device=vae.device, dtype=vae.dtype)  # [1, 3, T, H, W]
    mean, logvar = vae.posterior(x)  # [1, C, n, h, w] each
    first = frames_to_tensor(frames[:1])[:, :, 0]  # [1, 3, H, W] in [-1, 1]
    embeds = clip_image_embeds(encoders["image_encoder"], encoders["feature_extractor"], first)
    return {
        "latents_mean": mean[0].float().cpu(),
        "latents_logvar": logvar[0].float().cpu(),
        "cond_pixels": torch.from_numpy(np.ascontiguousarray(frames[0])).permute(2, 0, 1),  # [3, H, W] uint8
        "image_embeds": embeds[0].float().cpu(),
    }


def _write_shard(path: Path, clips: list[Clip], cfg: LatentCacheConfig, encoders: dict, pbar) -> list[dict]:
    """Encode ``clips`` into one shard file; returns the clips that failed (with reasons)."""
    from safetensors.torch import save_file

    tiling = {} if cfg.tiling else {"enabled": False}
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
        rows.append(encode_clip(frames, encoders, tiling))
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


def build_cache(cfg: LatentCacheConfig, encoders: dict, model_ids: dict, limit_shards: int | None = None) -> dict:
    """Build (or resume) the latent cache of ``cfg.videos`` in ``cfg.cache_dir``; returns the manifest.

    ``encoders`` holds ``vae`` (a :class:`cvvae.vaes.VideoVAE`), ``image_encoder`` and ``feature_extractor``
    (SVD's CLIP).
    ``limit_shards`` stops after writing that many new shards (for tests of resumption).
    """
    cache_dir = Path(cfg.cache_dir)
    sources = list_sources(cfg.videos)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(cache_dir, cache_settings(cfg, model_ids), cfg.videos)
    try:
        return _build(cfg, encoders, model_ids, sources, cache_dir, limit_shards)
    except BaseException:
        if not any(cache_dir.glob("shard-*.safetensors")):  # nothing built: the settings bind nothing yet
            (cache_dir / SETTINGS).unlink(missing_ok=True)
        raise


def _build(cfg, encoders, model_ids, sources, cache_dir: Path, limit_shards) -> dict:
    clips, skipped = plan_clips(sources, cfg, encoders["vae"].temporal_factor)
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
    scaling = encoders["vae"].scaling
    return _write_manifest(cache_dir, len(shards), skipped, model_ids, scaling, cfg)


def _write_manifest(
    cache_dir: Path, num_shards: int, skipped: list, model_ids: dict, scaling: LatentScaling, cfg: LatentCacheConfig
) -> dict:
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
        "latent_scaling": scaling.as_dict(),
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
    manifest = read_json(path, "rebuild the cache (python -m finetune cache ...) in a new data.cache_dir")
    if not isinstance(manifest.get("clips"), list) or not isinstance(manifest.get("models"), dict):
        raise InputError(f"{path} is not a latent-cache manifest (no clips or models); rebuild the cache")
    return manifest


def read_json(path: Path, advice: str) -> dict:
    """A JSON object from ``path``; InputError naming the file and what to do when it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is damaged ({err}); {advice}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is damaged (not a JSON object); {advice}")
    return data


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
        return {k: f.get_slice(k)[j : j + 1][0] for k in TENSOR_KEYS}

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_open": {}}

    @property
    def scaling(self) -> LatentScaling:
        """The latent scaling of the CV-VAE that encoded the cache."""
        if self.manifest.get("version") != CACHE_VERSION or "latent_scaling" not in self.manifest:
            raise InputError(f"{self.cache_dir} was built by an older version; rebuild it (python -m finetune cache)")
        return LatentScaling.of(self.manifest["latent_scaling"])

    def summary(self) -> dict:
        m = self.manifest
        return {"cache_dir": str(self.cache_dir), "num_clips": len(self), "settings": m["settings"]}
