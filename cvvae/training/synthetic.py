"""Clips made from still images: a moving camera (pan, zoom, rotation, exposure change) over a
photograph, and an object (a patch of another photograph) crossing it, so a video VAE learns motion
from images that packages ship freely.

``motion_clip(image, frames, size, rng)`` returns uint8 ``[frames, size, size, 3]``.
"""

from __future__ import annotations

import cv2
import numpy as np

# scikit-image's sample photographs and textures that are CC0 or public domain (their docstrings say so).
# ``coffee`` is left out: the repository's example clip is made from it.
SKIMAGE_STILLS = {
    "astronaut": "public domain (NASA)",
    "brick": "CC0 (CC0Textures)",
    "camera": "CC0 (Lav Varshney)",
    "cell": "CC0",
    "chelsea": "CC0 (Stefan van der Walt)",
    "clock_motion": "public domain (Stefan van der Walt)",
    "coins": "no known copyright restrictions",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "horse": "CC0 (Andreas Preuss)",
    "hubble_deep_field": "public domain (NASA)",
    "ihc": "no known copyright restrictions",
    "retina": "CC0",
    "rocket": "public domain (SpaceX)",
    "text": "public domain",
}


def skimage_stills() -> dict[str, np.ndarray]:
    """The photographs of ``SKIMAGE_STILLS`` as uint8 RGB arrays (needs ``pip install scikit-image``)."""
    from pathlib import Path

    try:
        import skimage
    except ImportError as err:
        from ..errors import InputError

        raise InputError("data.images=skimage needs scikit-image: pip install scikit-image") from err
    folder = Path(skimage.__file__).parent / "data"
    out = {}
    for name in SKIMAGE_STILLS:
        path = next(folder.glob(f"{name}.*"))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, grayscale files become 3 equal channels
        out[name] = np.ascontiguousarray(img[:, :, ::-1])
    return out


def _affine(center: np.ndarray, angle: float, scale: float, shift: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 map from the source image to an output frame centred on ``center + shift``."""
    m = cv2.getRotationMatrix2D((float(center[0] + shift[0]), float(center[1] + shift[1])), angle, scale)
    m[:, 2] += size / 2 - (center + shift)  # bring the (moving) centre to the middle of the frame
    return m


def motion_clip(image: np.ndarray, frames: int, size: int, rng: np.random.Generator, sprite=None) -> np.ndarray:
    """``frames`` frames of ``size x size`` from ``image`` seen by a moving camera (and a moving ``sprite``).

    The camera pans up to 3 px per frame, zooms up to 1.5% per frame, turns up to 1 degree per frame
    and changes exposure up to 15% over the clip; all of it is drawn from ``rng``.
    """
    h, w = image.shape[:2]
    scale0 = max(size / min(h, w), rng.uniform(0.35, 1.0))  # how much of the image one frame shows
    margin = size / scale0 / 2
    center = np.array([rng.uniform(margin, max(margin, w - margin)), rng.uniform(margin, max(margin, h - margin))])
    velocity = rng.uniform(-3, 3, 2) / scale0  # source pixels per frame
    zoom = 1 + rng.uniform(-0.015, 0.015)
    spin = rng.uniform(-1, 1)
    gain = np.linspace(1.0, 1 + rng.uniform(-0.15, 0.15), frames)
    out = []
    for t in range(frames):
        m = _affine(center, spin * t, scale0 * zoom**t, velocity * t, size)
        frame = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT101)
        out.append(frame)
    clip = np.stack(out).astype(np.float32) * gain[:, None, None, None]
    if sprite is not None:
        clip = _add_sprite(clip, sprite, rng)
    return clip.clip(0, 255).astype(np.uint8)


def _add_sprite(clip: np.ndarray, sprite: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An elliptical patch of ``sprite`` moving in a straight line across the clip (object motion, occlusion)."""
    t, size = clip.shape[:2]
    r = int(rng.uniform(0.15, 0.3) * size)
    ys, xs = rng.integers(0, sprite.shape[0] - 2 * r), rng.integers(0, sprite.shape[1] - 2 * r)
    patch = sprite[ys : ys + 2 * r, xs : xs + 2 * r].astype(np.float32)
    mask = np.zeros((2 * r, 2 * r), np.float32)
    cv2.ellipse(mask, (r, r), (r - 1, int(r * rng.uniform(0.5, 1.0)) - 1), rng.uniform(0, 180), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    start, end = rng.uniform(-r, size - r, 2), rng.uniform(-r, size - r, 2)
    for i in range(t):
        x0, y0 = (start + (end - start) * i / max(1, t - 1)).round().astype(int)
        x1, y1 = max(x0, 0), max(y0, 0)
        x2, y2 = min(x0 + 2 * r, size), min(y0 + 2 * r, size)
        if x2 <= x1 or y2 <= y1:
            continue
        m = mask[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        p = patch[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        clip[i, y1:y2, x1:x2] = m * p + (1 - m) * clip[i, y1:y2, x1:x2]
    return clip
