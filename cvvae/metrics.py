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


PSNR_CAP = 100.0  # dB for a frame identical to its reference, so means stay finite


def _frame_psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = cv2.norm(x, y, cv2.NORM_L2SQR) / x.size
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def psnr_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of every frame (data range 255; at most ``PSNR_CAP``)."""
    a, b = _pair(a, b)
    return np.array([_frame_psnr(x, y) for x, y in zip(a, b)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of per-frame PSNR in dB (data range 255), the protocol video VAE papers report."""
    return float(np.mean(psnr_per_frame(a, b)))


def psnr_clip(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of one MSE over the whole clip (at most the per-frame mean; ``PSNR_CAP`` if identical)."""
    a, b = _pair(a, b)
    sse = sum(cv2.norm(x, y, cv2.NORM_L2SQR) for x, y in zip(a, b))  # per frame: no full-clip float copy
    mse = sse / a.size
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


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


FLOW_MIN_SIDE = 32  # DIS optical flow needs a few patches: smaller clips are scaled up for it


def _flow_scale(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    """Resize frames so the flow is fast on HD clips (long side <= ``max_side``) and works on tiny ones."""
    h, w = frames.shape[1:3]
    scale = 1.0
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
    if min(h, w) * scale < FLOW_MIN_SIDE:
        scale = FLOW_MIN_SIDE / min(h, w)
    if scale == 1.0:
        return frames
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``x + flow(x)`` (backward warping, bilinear)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _forward_differences(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dy, d/dx) of ``[H, W]`` as forward differences, 0 on the last row / column."""
    dy, dx = np.zeros_like(a), np.zeros_like(a)
    dy[:-1], dx[:, :-1] = a[1:] - a[:-1], a[:, 1:] - a[:, :-1]
    return dy, dx


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose motion is reliable (Ruder et al. 2016, as Lai et al. 2018 use it).

    ``forward`` is the flow t -> t+1, ``backward`` t+1 -> t. A pixel is dropped where the two flows
    disagree (occlusion), at motion boundaries, or where its match falls outside frame t+1.
    """
    h, w = forward.shape[:2]
    back = _warp(backward, forward)  # the backward flow at each pixel's match in t+1
    gap = np.square(forward + back).sum(-1)
    occluded = gap > 0.01 * (np.square(forward).sum(-1) + np.square(back).sum(-1)) + 0.5
    du = np.stack(_forward_differences(forward[..., 0]), -1)  # Ruder et al.: forward differences
    dv = np.stack(_forward_differences(forward[..., 1]), -1)
    boundary = np.square(du).sum(-1) + np.square(dv).sum(-1) > 0.01 * np.square(forward).sum(-1) + 0.002
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    tx, ty = gx + forward[..., 0], gy + forward[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return ~occluded & ~boundary & inside


def _flow_pairs(frames: np.ndarray, reference: np.ndarray | None, max_side: int | None):
    """(frames, per pair: forward flow t -> t+1 and its consistency mask), the flow from ``reference`` if given."""
    frames = _clip(frames)
    if reference is not None:
        frames, reference = _pair(frames, reference)
    frames = _flow_scale(frames, max_side)
    guide = frames if reference is None else _flow_scale(reference, max_side)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in guide]
    pairs = []
    for t in range(len(frames) - 1):
        forward = dis.calc(grays[t], grays[t + 1], None)  # [H, W, 2]: where each pixel of t goes in t+1
        backward = dis.calc(grays[t + 1], grays[t], None)
        pairs.append((forward, consistency_mask(forward, backward)))
    return frames, pairs


def temporal_measures(frames: np.ndarray, reference: np.ndarray | None = None, max_side: int | None = 512) -> dict:
    """Lai et al.'s warping error and the motion it comes with, from one optical-flow pass.

    ``warping_error``: frame t+1 warped back onto frame t with the flow t -> t+1 (OpenCV DIS on luma), the
    squared difference (RGB in [0, 1]) averaged over the channels and over the pixels that the
    forward-backward consistency mask keeps (no occlusions, no motion boundaries), then over pairs: Lai et
    al. (2018)'s scale, in [0, 1]. ``motion``: the mean flow magnitude in pixels per frame, at the clip's own
    size. The flow comes from ``reference`` when given (the clip being reconstructed, as in the paper, so a
    wobbly output cannot excuse itself), else from ``frames``; it is computed with the long side at most
    ``max_side`` (the short side at least 32 pixels).
    """
    frames = _clip(frames)
    if len(frames) < 2:
        return {"warping_error": 0.0, "motion": 0.0}
    scaled, pairs = _flow_pairs(frames, reference, max_side)
    scale = frames.shape[2] / scaled.shape[2]  # flow pixels -> the clip's pixels
    errors, motion = [], []
    for t, (forward, mask) in enumerate(pairs):
        motion.append(float(np.sqrt(np.square(forward).sum(-1)).mean()) * scale)
        if mask.any():
            warped = _warp(scaled[t + 1].astype(np.float32) / 255.0, forward)
            diff = np.square(warped - scaled[t].astype(np.float32) / 255.0).mean(-1)  # [H, W]: mean over RGB
            errors.append(float(diff[mask].mean()))
    return {"warping_error": float(np.mean(errors)) if errors else 0.0, "motion": float(np.mean(motion))}


def warping_error(frames: np.ndarray, reference: np.ndarray | None = None, max_side: int | None = 512) -> float:
    """Lai et al. (2018)'s temporal warping error in [0, 1]; lower is steadier (see :func:`temporal_measures`)."""
    return temporal_measures(frames, reference, max_side)["warping_error"]


def motion(frames: np.ndarray, max_side: int | None = 512) -> float:
    """Mean optical-flow magnitude of a clip, pixels per frame: what every flicker figure is read against."""
    return temporal_measures(frames, None, max_side)["motion"]


def flicker(frames: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """``frame_difference``, ``warping_error`` and the ``motion`` beside them (flow from ``reference`` if given).

    Both flicker measures also fall when motion falls (a frozen clip scores 0), so read them with ``motion``.
    """
    return {"frame_difference": frame_difference(frames), **temporal_measures(frames, reference)}


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


def group_seams(frames: np.ndarray, temporal_factor: int = 4) -> dict:
    """The jump at a causal video VAE's latent-group boundaries: frame 0 has a latent of its own, then each
    latent decodes ``temporal_factor`` frames, so groups start at frames 1, 1 + f, 1 + 2f, ... (the step into
    frame 1 + k f crosses a boundary for ``k >= 1``). ``ratio`` 1.0 means no seam (:func:`seam_score`)."""
    return seam_score(frames, temporal_factor, offset=1)


def group_spectrum(frames: np.ndarray, temporal_factor: int = 4) -> dict:
    """Share of the temporal spectrum's energy at the latent-group frequency (fps / f) and its harmonics.

    The per-pixel luma signal over time, mean removed, is Fourier transformed; ``at_group`` is the fraction
    of the non-constant energy in the bins at multiples of ``1 / f`` cycles per frame, ``expected`` the
    fraction those bins would hold for a spectrum spread evenly, and ``ratio`` their quotient (about 1: no
    periodic flicker at the group rate; well above 1: groups pulse). Needs at least ``2 f`` frames.
    """
    frames = _clip(frames)
    f = int(temporal_factor)
    if f < 2 or len(frames) < 2 * f:
        raise InputError(f"the group spectrum needs at least {2 * f} frames (factor {f}), got {len(frames)}")
    luma = np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in frames]).astype(np.float32)  # [T, H, W]
    luma -= luma.mean(0, keepdims=True)
    power = np.square(np.abs(np.fft.rfft(luma, axis=0))).reshape(luma.shape[0] // 2 + 1, -1).sum(1)[1:]
    t = len(frames)
    harmonics = {round(h * t / f) for h in range(1, f // 2 + 1)}  # bins nearest to h / f cycles per frame
    group = np.isin(np.arange(1, t // 2 + 1), sorted(harmonics))
    total = float(power.sum())
    share = float(power[group].sum() / total) if total > 0 else 0.0
    expected = float(group.mean())
    return {"at_group": share, "expected": expected, "ratio": share / expected if expected else math.nan}


def latent_dynamics_frechet(latents: list, reference: list) -> float:
    """Fréchet distance between the distributions of latent dynamics ``(z_k, z_{k+1} - z_k)`` of two sets.

    Each item is a latent clip ``[C, n, h, w]`` (numpy or a tensor, n >= 2); every spatial position of every
    step gives one ``2 C``-dimensional sample (the latent and its change). Gaussians are fitted to both sets
    and compared as FID does: ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. 0 for equal dynamics.
    """

    def samples(clips) -> np.ndarray:
        rows = []
        for z in clips:
            z = np.asarray(z.detach().float().cpu() if hasattr(z, "detach") else z, dtype=np.float64)
            if z.ndim != 4 or z.shape[1] < 2:
                raise InputError(f"latent clips must be [C, n, h, w] with n >= 2, got {z.shape}")
            pair = np.concatenate([z[:, :-1], z[:, 1:] - z[:, :-1]], axis=0)  # [2C, n-1, h, w]
            rows.append(pair.reshape(pair.shape[0], -1).T)  # [(n-1) h w, 2C]
        return np.concatenate(rows)

    a, b = samples(latents), samples(reference)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"latents have {a.shape[1] // 2} and {b.shape[1] // 2} channels: compare like with like")
    mu, nu = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    half = (v * np.sqrt(w.clip(min=0))) @ v.T  # S_a^(1/2)
    cross = np.sqrt(np.linalg.eigvalsh(half @ sb @ half).clip(min=0)).sum()  # tr (S_a S_b)^(1/2)
    return float(np.square(mu - nu).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)
