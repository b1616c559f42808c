"""Training data: clips decoded once into small uint8 arrays, split in time, sampled as crops; still
images as crops and, moved by a synthetic camera, as clips.

Each clip is read with PyAV, resized so its short side is ``short_side`` pixels, and split in
time: the first ``1 - holdout`` of its frames are for training, the rest for evaluation (so no
evaluation frame is ever seen in training). Batches are random crops: images ``[B, 3, 1, S, S]``
or clips ``[B, 3, T, S, S]`` in [-1, 1]. Still images (``data.images``) add image crops at random
scales and clips made by ``cvvae.training.synthetic.motion_clip``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..video import VIDEO_SUFFIXES, frames_to_tensor, iter_frames, resize_short_side


def _read_small(path: Path, short_side: int) -> np.ndarray:
    """All frames of ``path`` as uint8 ``[T, H, W, 3]`` with short side ``short_side`` (resized as decoded)."""
    return np.stack(list(iter_frames(path, transform=partial(resize_short_side, short_side=short_side))))


def list_videos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"video folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise InputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    return paths


def load_clips(folder: str | Path, short_side: int, cache_dir: str | Path | None = None) -> list[np.ndarray]:
    """Every video of ``folder`` as a small uint8 array, cached as ``.npy`` in ``cache_dir``."""
    clips = []
    for path in list_videos(folder):
        key = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:{short_side}".encode()).hexdigest()[:12]
        cached = Path(cache_dir) / f"{path.stem}-{short_side}-{key}.npy" if cache_dir else None
        if cached is not None and cached.is_file():
            clips.append(np.load(cached))
            continue
        arr = _read_small(path, short_side)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            tmp.replace(cached)
        clips.append(arr)
    return clips


def split_clip(clip: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, eval)``: the last ``holdout`` fraction of the frames is held out."""
    n_eval = int(round(len(clip) * holdout))
    return clip[: len(clip) - n_eval], clip[len(clip) - n_eval :]


@dataclass
class CropSampler:
    """Random ``size x size`` crops of ``frames`` consecutive frames (stride ``stride``) from clips."""

    clips: list[np.ndarray]
    size: int
    frames: int = 1
    stride: int = 1

    def __post_init__(self) -> None:
        span = (self.frames - 1) * self.stride + 1
        self.clips = [c for c in self.clips if len(c) >= span and min(c.shape[1:3]) >= self.size]
        if not self.clips:
            raise InputError(f"no clip has {span} frames of at least {self.size}x{self.size} pixels")

    def sample(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        """``[batch, 3, frames, size, size]`` in [-1, 1]."""
        out = []
        span = (self.frames - 1) * self.stride + 1
        for _ in range(batch):
            clip = self.clips[rng.integers(len(self.clips))]
            t0 = rng.integers(len(clip) - span + 1)
            y0 = rng.integers(clip.shape[1] - self.size + 1)
            x0 = rng.integers(clip.shape[2] - self.size + 1)
            crop = clip[t0 : t0 + span : self.stride, y0 : y0 + self.size, x0 : x0 + self.size]
            if rng.random() < 0.5:
                crop = crop[:, :, ::-1]
            out.append(frames_to_tensor(np.ascontiguousarray(crop))[0])  # [3, T, S, S]
        return torch.stack(out)


@dataclass
class StillSampler:
    """Crops of still images at random scales, and clips made from them by synthetic camera motion."""

    stills: list[np.ndarray]
    size: int

    def __post_init__(self) -> None:
        self.stills = [s for s in self.stills if min(s.shape[:2]) >= self.size]
        if not self.stills:
            raise InputError(f"no still image is at least {self.size}x{self.size} pixels")

    def _pick(self, rng: np.random.Generator) -> np.ndarray:
        return self.stills[rng.integers(len(self.stills))]

    def sample(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        """``[batch, 3, 1, size, size]``: a random crop of a randomly downscaled still."""
        out = []
        for _ in range(batch):
            img = self._pick(rng)
            short = int(rng.integers(self.size, min(img.shape[:2]) + 1))
            img = resize_short_side(img, short) if short < min(img.shape[:2]) else img
            y0, x0 = rng.integers(img.shape[0] - self.size + 1), rng.integers(img.shape[1] - self.size + 1)
            crop = img[None, y0 : y0 + self.size, x0 : x0 + self.size]
            if rng.random() < 0.5:
                crop = crop[:, :, ::-1]
            out.append(frames_to_tensor(np.ascontiguousarray(crop))[0])  # [3, 1, S, S]
        return torch.stack(out)

    def clips(self, batch: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
        """``[batch, 3, frames, size, size]``: stills seen by a moving camera, half with a moving object."""
        from .synthetic import motion_clip

        out = []
        for _ in range(batch):
            sprite = self._pick(rng) if rng.random() < 0.5 else None
            out.append(frames_to_tensor(motion_clip(self._pick(rng), frames, self.size, rng, sprite))[0])
        return torch.stack(out)


def load_stills(source: str) -> list[np.ndarray]:
    """``skimage`` (its CC0 / public-domain photographs) or a folder of still images, as uint8 RGB."""
    if source == "skimage":
        from .synthetic import skimage_stills

        return list(skimage_stills().values())
    from ..video import STILL_SUFFIXES, read_image

    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"data.images={source} is neither 'skimage' nor a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in STILL_SUFFIXES)
    if not paths:
        raise InputError(f"no images ({', '.join(STILL_SUFFIXES)}) in {folder}")
    return [np.asarray(read_image(p)) for p in paths]


@dataclass
class TrainingData:
    """Image and video batches from clips (``videos``) and, when given, still images (``stills``)."""

    videos: CropSampler
    frames: CropSampler | None  # clips of the video length (None when training a 2-D VAE)
    stills: StillSampler | None = None
    synthetic_ratio: float = 0.0  # share of clips made from stills

    def images(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        """Image batches draw from stills and video frames alike (in proportion to ``synthetic_ratio``)."""
        if self.stills is not None and rng.random() < self.synthetic_ratio:
            return self.stills.sample(batch, rng)
        return self.videos.sample(batch, rng)

    def clips(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        if self.stills is not None and rng.random() < self.synthetic_ratio:
            return self.stills.clips(batch, self.frames.frames, rng)
        return self.frames.sample(batch, rng)
