"""Tiling: windows cover the clip, weights blend to one, tiles approach the whole-clip result."""

from __future__ import annotations

import pytest
import torch
from conftest import CLIP

from cvvae.errors import InputError
from cvvae.tiling import TILING_SPECS, TilingSettings, ramp_weights, spans, tiling_changes


@pytest.mark.parametrize("length, size, overlap", [(10, 4, 1), (13, 5, 2), (7, 7, 2), (3, 8, 2), (40, 9, 3)])
def test_spans_cover_and_weights_sum_to_one(length, size, overlap):
    windows = spans(length, size, overlap)
    covered = torch.zeros(length)
    for s, e in windows:
        assert 0 <= s < e <= length and e - s == min(size, length)
        covered[s:e] += 1
    assert (covered >= 1).all()
    for (_, e0), (s1, _) in zip(windows, windows[1:]):
        assert e0 - s1 >= overlap  # neighbours overlap by at least the requested amount
    total = torch.zeros(length, dtype=torch.float64)
    for (s, e), w in zip(windows, ramp_weights(windows, length, skip=1)):
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64))


def test_blend_is_symmetric():
    windows = [(0, 6), (4, 10)]
    a, b = ramp_weights(windows, 10)
    torch.testing.assert_close(a[4:], b[:2].flip(0))
    assert a[0] == 1 and b[-1] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(frames_per_window=6),
        dict(tile_size=12),
        dict(overlap=0.6),
        dict(norm="nope"),
        dict(frames_per_window=8, temporal_overlap=3),
    ],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(InputError):
        TilingSettings(**kwargs)


def test_tiling_choices_of_the_front_ends():
    assert tiling_changes("default") == tiling_changes(None) == {}
    assert tiling_changes("off") == {"enabled": False}
    assert tiling_changes("8") == {"enabled": True, "frames_per_window": 8}
    assert tiling_changes("8/256") == {"enabled": True, "frames_per_window": 8, "tile_size": 256}
    for spec in TILING_SPECS:
        TilingSettings().replace(**tiling_changes(spec))
    for bad in ("7", "8/100", "fast", "8/"):
        with pytest.raises(InputError):
            tiling_changes(bad)


def _clip(frames=17, height=48, width=64):
    t = torch.arange(frames)[:, None, None]
    y = torch.arange(height)[None, :, None]
    x = torch.arange(width)[None, None, :]
    chans = [torch.sin((x + 2 * t) / (4 + c) + y / (6 + c)) for c in range(3)]
    return torch.stack(chans)[None].float() * 0.8  # (1, 3, T, H, W)


@pytest.fixture(scope="module")
def nano():
    """The trained 'nano' model: random weights are chaotic, so closeness is measured on trained ones."""
    from cvvae.loading import load_vae

    return load_vae("nano")


def _real_clip(frames, height, width):
    """A real photograph panned by a camera."""
    from cvvae.video import frames_to_tensor, read_video

    return frames_to_tensor(read_video(CLIP, num_frames=frames, size=(height, width))[0])


def _run(model, x, **settings):
    tiling = {"enabled": True, **settings} if settings else {"enabled": False}
    with torch.no_grad():
        z = model.encode(x, tiling=tiling).latent_dist.mean
        return z, model.decode(z, tiling=tiling).sample


# Bounds from benchmarks/tiling_accuracy.py-style measurements on the nano model (latent |z| ~1.2,
# video |x| ~0.4): pooled statistics make temporal windows of the encoder 10x closer (~2e-3 here, ~1e-4
# on slower real footage) and cut
# the spatial-tile error by a third; tiles of 64 px are far below the decoder's receptive field.
@pytest.mark.parametrize(
    "size, settings, enc_bound, dec_bound",
    [
        ((25, 32, 48), dict(frames_per_window=8, tile_size=None), 0.005, 0.03),
        ((9, 64, 128), dict(frames_per_window=None, tile_size=64, overlap=0.4), 0.06, 0.06),
    ],
)
def test_tiled_result_is_close_to_whole_clip(nano, size, settings, enc_bound, dec_bound):
    x = _real_clip(*size)
    z_ref, y_ref = _run(nano, x)
    z_pooled, y_pooled = _run(nano, x, norm="pooled", **settings)
    z_tile, y_tile = _run(nano, x, norm="tile", **settings)
    assert z_pooled.shape == z_ref.shape and y_pooled.shape == y_ref.shape
    enc = (z_pooled - z_ref).abs().mean()
    assert enc < enc_bound and enc < (z_tile - z_ref).abs().mean()
    assert (y_pooled - y_ref).abs().mean() < dec_bound


def test_no_seam_at_window_boundaries(tiny_vae):
    """Temporal change across window boundaries is no larger than inside windows."""
    z = torch.randn(1, 4, 9, 4, 4) * 0.5
    tiny_vae.enable_tiling(frames_per_window=8, tile_size=None)
    with torch.no_grad():
        y = tiny_vae.decode(z).sample[0]  # (3, 33, H, W)
    step = (y[:, 1:] - y[:, :-1]).abs().mean(dim=(0, 2, 3))  # change from frame t to t+1
    windows = spans(9, 3, 1)
    boundaries = [4 * s for s, _ in windows[1:]]  # first frame of each later window
    at = torch.stack([step[b - 1] for b in boundaries]).mean()
    assert at < 1.5 * step.mean()


def test_decoder_activation_size_does_not_grow_with_frames(tiny_vae):
    """With temporal windows on, the largest activation inside the decoder is the same for 5 and 13 latents."""
    largest = []

    def hook(_module, _inputs, output):
        if torch.is_tensor(output):
            largest[-1] = max(largest[-1], output.numel())

    handles = [m.register_forward_hook(hook) for m in tiny_vae.decoder.modules()]
    tiny_vae.enable_tiling(frames_per_window=8, tile_size=None)
    for n in (5, 13):
        largest.append(0)
        with torch.no_grad():
            tiny_vae.decode(torch.randn(1, 4, n, 4, 4))
    for h in handles:
        h.remove()
    assert largest[0] == largest[1] > 0
