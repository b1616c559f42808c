"""Metrics: PSNR, SSIM, flicker (frame difference, optical-flow warping error) and the seam measure."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cvvae import metrics
from cvvae.errors import InputError


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (something optical flow can track)."""
    noise = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 3) * 4 - 384, 0, 255).astype(np.uint8)


def translating_clip(t: int = 6, h: int = 64, w: int = 96, step: int = 2) -> np.ndarray:
    """A camera pan: windows of a larger texture, moving ``step`` pixels right per frame."""
    canvas = texture(h, w + step * t)
    return np.stack([canvas[:, i * step : i * step + w] for i in range(t)])


def test_psnr():
    a = np.random.default_rng(0).integers(0, 200, (2, 8, 8, 3), dtype=np.uint8)
    assert metrics.psnr(a, a) == metrics.PSNR_CAP
    assert metrics.psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    assert metrics.psnr(a, a + 1) > metrics.psnr(a, a + 10)
    with pytest.raises(InputError):
        metrics.psnr(a, a[:1])
    with pytest.raises(InputError):
        metrics.psnr(a.astype(np.float32), a)


def test_psnr_is_the_mean_of_per_frame_values():
    """One bad frame: papers' per-frame mean stays high, one MSE over the clip is dominated by it."""
    a = np.full((10, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[:9] += 1  # nine frames off by 1 (48.1 dB)
    b[9] += 60  # one frame off by 60 (12.6 dB)
    per_frame = metrics.psnr_per_frame(a, b)
    assert per_frame[:9] == pytest.approx(10 * math.log10(255**2)) and per_frame[9] == pytest.approx(
        10 * math.log10(255**2 / 3600)
    )
    assert metrics.psnr(a, b) == pytest.approx(per_frame.mean())
    assert metrics.psnr_clip(a, b) == pytest.approx(10 * math.log10(255**2 / ((9 * 1 + 3600) / 10)))
    assert metrics.psnr(a, b) - metrics.psnr_clip(a, b) > 20


def test_ssim():
    rng = np.random.default_rng(0)
    clip = np.stack([texture(48, 64, seed=i) for i in range(3)])
    assert metrics.ssim(clip, clip) == pytest.approx(1.0, abs=1e-9)

    def noisy(sigma):
        return np.clip(clip + rng.normal(0, sigma, clip.shape), 0, 255).astype(np.uint8)

    light, heavy = metrics.ssim(clip, noisy(5)), metrics.ssim(clip, noisy(40))
    assert 1.0 > light > heavy and heavy < 0.8
    assert metrics.ssim(clip, 255 - clip) < 0


def test_flicker_static_and_flickering():
    still = np.repeat(texture(32, 48)[None], 5, axis=0)
    assert metrics.flicker(still) == {"frame_difference": 0.0, "warping_error": 0.0, "motion": 0.0}
    flickering = still.astype(np.int16)
    flickering[1::2] += 20  # brightness jumps every other frame
    flickering = flickering.clip(0, 255).astype(np.uint8)
    f = metrics.flicker(flickering)
    assert f["frame_difference"] == pytest.approx(20 / 255, rel=0.1)
    assert f["warping_error"] == pytest.approx((20 / 255) ** 2, rel=0.2)  # Lai et al.: mean over RGB, [0, 1]
    assert f["motion"] < 0.5  # brightness flicker, not motion
    assert metrics.frame_difference(still[:1]) == 0.0


def test_warping_error_takes_its_flow_from_the_reference():
    """A reconstruction that jitters while its input pans: flow from the input exposes the jitter."""
    pan = translating_clip(t=6, step=2)
    jitter = pan.copy()
    jitter[1::2] = np.roll(pan[1::2], 3, axis=1)  # every other frame shifted 3 px sideways
    own = metrics.warping_error(jitter)  # its own flow follows the jitter and explains it away
    guided = metrics.warping_error(jitter, reference=pan)
    assert guided > 5 * own and guided > 1e-3
    assert metrics.warping_error(pan, reference=pan) < 1e-3


def test_occlusions_are_masked():
    """A square appearing out of nowhere is occluded content, not flicker: the mask drops it."""
    pan = translating_clip(t=3)
    fwd = np.zeros((64, 96, 2), np.float32)
    fwd[20:40, 30:50] = 8.0  # inconsistent with a zero backward flow there
    mask = metrics.consistency_mask(fwd, np.zeros_like(fwd))
    assert not mask[22:38, 32:48].any() and mask[:10].all()
    assert metrics.warping_error(pan) < 1e-3


def test_tiny_frames_do_not_crash_the_flow():
    clip = np.random.default_rng(0).integers(0, 255, (4, 8, 10, 3), dtype=np.uint8)
    assert np.isfinite(metrics.warping_error(clip)) and np.isfinite(metrics.flicker(clip)["warping_error"])


def test_warping_error_explains_motion():
    pan = translating_clip()
    diff, warp = metrics.frame_difference(pan), metrics.warping_error(pan)
    assert diff > 0.02  # the frames do change ...
    assert warp < 0.2 * diff and warp < 1e-3  # ... but the flow explains the change
    # the same clip, downscaled for the flow, still explains it
    big = np.stack([cv2.resize(f, (192, 128)) for f in pan])
    assert metrics.warping_error(big, max_side=96) < 0.2 * metrics.frame_difference(big)


def test_seam_score_finds_injected_jumps():
    drift = np.stack([np.full((16, 16, 3), 40 + i, np.uint8) for i in range(33)])  # slow, even change
    assert metrics.seam_score(drift, period=8)["ratio"] == pytest.approx(1.0)
    seams = drift.astype(np.int16)
    for k in range(8, 33, 8):
        seams[k:] += 12  # a jump into frames 8, 16, 24, 32
    seams = seams.clip(0, 255).astype(np.uint8)
    score = metrics.seam_score(seams, period=8)
    assert score["at_boundaries"] == pytest.approx(13 / 255) and score["inside"] == pytest.approx(1 / 255)
    assert score["ratio"] > 10
    assert metrics.seam_score(seams, period=8, offset=4)["ratio"] < 1  # wrong phase: no seam there
    with pytest.raises(InputError):
        metrics.seam_score(drift[:5], period=8)


def test_motion_is_reported_beside_flicker():
    """A frozen clip has the lowest flicker of all: the motion beside it is what exposes it."""
    pan = translating_clip(t=6, step=2)
    frozen = np.repeat(pan[:1], 6, axis=0)
    moving, still = metrics.flicker(pan), metrics.flicker(frozen)
    assert moving["motion"] == pytest.approx(2.0, rel=0.25)  # pixels per frame
    assert still["motion"] == 0.0 and still["frame_difference"] < moving["frame_difference"]


def test_group_seams_and_spectrum_find_a_pulse_every_latent_group():
    drift = np.stack([np.full((16, 16, 3), 60 + i, np.uint8) for i in range(33)])
    assert metrics.group_seams(drift)["ratio"] == pytest.approx(1.0)
    pulsing = drift.astype(np.int16)
    for k in range(1, 33, 4):  # each 4-frame group after frame 0 jumps: 1, 5, 9, ...
        pulsing[k:] += 6
    pulsing = pulsing.clip(0, 255).astype(np.uint8)
    assert metrics.group_seams(pulsing)["ratio"] > 3
    rng = np.random.default_rng(0)
    noise = rng.integers(100, 140, (33, 16, 16, 3)).astype(np.uint8)  # no period at all
    flat = metrics.group_spectrum(noise)["ratio"]
    blink = noise.astype(np.int16)
    blink[1::4] += 30  # one frame in each group brighter: energy at fps / 4
    peaked = metrics.group_spectrum(blink.clip(0, 255).astype(np.uint8))["ratio"]
    assert 0.5 < flat < 2 and peaked > 3 * flat
    with pytest.raises(InputError):
        metrics.group_spectrum(noise[:7])


def test_latent_dynamics_frechet():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.1, (4, 4, 9, 6, 6)), axis=2)  # 4 clips [C=4, n=9, 6, 6], slow drift
    other = np.cumsum(rng.normal(0, 0.1, (4, 4, 9, 6, 6)), axis=2)
    jumpy = rng.normal(0, 1.0, (4, 4, 9, 6, 6))  # independent latents every step
    same = metrics.latent_dynamics_frechet(list(walk), list(other))
    assert same < 0.5 * metrics.latent_dynamics_frechet(list(jumpy), list(other))
    assert metrics.latent_dynamics_frechet(list(walk), list(walk)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError):
        metrics.latent_dynamics_frechet([walk[0][:, :1]], list(other))
