"""Quality and temporal-consistency measures on uint8 ``[T, H, W, 3]`` clips (numpy + OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import InputError

SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def _clip(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]  # one image [H, W, 3] -> [1, H, W, 3]
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise InputError(f"{what} must be [T, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise InputError(f"{what} must be uint8, got {frames.dtype}")
    return frames


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _clip(a, "a"), _clip(b, "b")
    if a.shape != b.shape:
        raise InputError(f"clips to compare must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the whole clip (data range 255); ``inf`` if identical."""
    a, b = _pair(a, b)
    sse = sum(cv2.norm(x, y, cv2.NORM_L2SQR) for x, y in zip(a, b))  # per frame: no full-clip float copy
    mse = sse / a.size
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _ssim_frame(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two ``[H, W, 3]`` frames: 11x11 gaussian window (sigma 1.5), mean over channels."""
    x, y = x.astype(np.float32), y.astype(np.float32)  # float32 keeps HD clips fast; ample for SSIM

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity, per RGB channel with a gaussian window, averaged over frames (1 = identical)."""
    a, b = _pair(a, b)
    return float(np.mean([_ssim_frame(x, y) for x, y in zip(a, b)]))


def frame_difference(frames: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames, in [0, 1] (0 for a still clip)."""
    frames = _clip(frames)
    if len(frames) < 2:
        return 0.0
    diffs = [np.mean(np.abs(n.astype(np.int16) - p.astype(np.int16))) for p, n in zip(frames[:-1], frames[1:])]
    return float(np.mean(diffs) / 255.0)


def _downscale(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = frames.shape[1:3]
    if not max_side or max(h, w) <= max_side:
        return frames
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def warping_error(frames: np.ndarray, max_side: int | None = 512) -> float:
    """Mean absolute error (in [0, 1]) between each frame and its predecessor warped onto it.

    The backward flow from frame ``t + 1`` to ``t`` comes from OpenCV's DIS optical flow on luma;
    pixels whose source falls outside the frame are ignored. Motion that the flow explains costs
    nothing, so what remains is flicker and temporal noise. Frames are downscaled to at most
    ``max_side`` pixels (long side) first, to keep it fast on HD clips.
    """
    frames = _downscale(_clip(frames), max_side)
    if len(frames) < 2:
        return 0.0
    h, w = frames.shape[1:3]
    flow_engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    errors = []
    for t in range(len(frames) - 1):
        flow = flow_engine.calc(grays[t + 1], grays[t], None)  # [H, W, 2]: where each pixel of t+1 was in t
        map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
        warped = cv2.remap(frames[t], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        valid = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        if valid.any():
            diff = np.abs(warped.astype(np.float32) - frames[t + 1].astype(np.float32))
            errors.append(float(diff[valid].mean()))
    return float(np.mean(errors) / 255.0) if errors else 0.0


def flicker(frames: np.ndarray) -> dict:
    """Both flicker measures: ``frame_difference`` and ``warping_error`` (each in [0, 1])."""
    return {"frame_difference": frame_difference(frames), "warping_error": warping_error(frames)}


def seam_score(frames: np.ndarray, period: int, offset: int = 0) -> dict:
    """Temporal difference across window boundaries versus inside windows.

    Boundaries sit before frames ``offset + k * period`` (``k >= 1`` when ``offset`` is 0). A
    ``ratio`` near 1 means no visible seam; a seam every ``period`` frames pushes it well above 1.
    """
    frames = _clip(frames)
    if period < 2:
        raise InputError(f"period must be at least 2 frames, got {period}")
    # diffs[i] = mean |f[i + 1] - f[i]|: the step into frame i + 1
    diffs = np.array(
        [np.mean(np.abs(n.astype(np.int16) - p.astype(np.int16))) for p, n in zip(frames[:-1], frames[1:])]
    )
    steps_into = np.arange(1, len(frames))
    at = (steps_into - offset) % period == 0
    if not at.any() or at.all():
        raise InputError(
            f"a clip of {len(frames)} frames has no window boundary inside it for period {period}, offset {offset}"
        )
    at_boundaries, inside = float(diffs[at].mean() / 255.0), float(diffs[~at].mean() / 255.0)
    if inside > 0:
        ratio = at_boundaries / inside
    else:
        ratio = math.inf if at_boundaries > 0 else 1.0
    return {"at_boundaries": at_boundaries, "inside": inside, "ratio": ratio}
