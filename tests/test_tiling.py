"""Tiling: windows cover the clip, weights blend to one, tiles approach the whole-clip result."""

from __future__ import annotations

import pytest
import torch
from conftest import CLIP

from cvvae.errors import InputError
from cvvae.tiling import TILING_SPECS, Axis, TilingSettings, cores, ramp_weights, spans, tiling_changes, work


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
    for (s, e), w in zip(windows, ramp_weights(windows, length)):
        total[s:e] += w
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64))
    owned = [i for s, e in cores(windows, length) for i in range(s, e)]
    assert owned == list(range(length))  # the cores partition the axis: statistics count each position once
    for (s, e), (cs, ce) in zip(windows, cores(windows, length)):
        assert s <= cs < ce <= e


def test_boxes_carry_halo_context_and_encoder_windows_do_not_overlap():
    axis = Axis.plan(40, 8, 2, halo=4, lead=1)
    for (bs, be), (s, e) in zip(axis.boxes, axis.spans):
        assert bs == max(0, s - 4) and be == min(40, e + 4)
    windows = Axis.windows(9, 3)  # latents of 17 + 16 + ... frames: the first window has the extra frame
    assert windows.boxes == [(0, 3), (3, 5), (5, 7), (7, 9)] and windows.cores == windows.boxes


def test_work_counts_halos_and_passes():
    tiles = TilingSettings(frames_per_window=None, tile_size=64, overlap=0.0, halo=0, norm="tile")
    assert work(tiles, (3, 16, 16), decoder=True) == 1.0  # four 8x8 tiles, nothing computed twice
    assert work(tiles.replace(halo=2), (3, 16, 16), decoder=True) == 4 * 10 * 10 / 256  # halos on inner sides
    windows = TilingSettings(frames_per_window=8, tile_size=None, norm="tile")
    assert work(windows, (9, 4, 4), decoder=False) == 1.0  # the encoder's windows are back to back
    assert work(windows.replace(norm="pooled"), (9, 4, 4), decoder=False) == 2.0  # record, then apply
    assert work(windows, (9, 4, 4), decoder=True) > 1.0  # the decoder's overlap, halo and lead
    assert work(windows.replace(enabled=False), (9, 4, 4), decoder=True) == 1.0


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


# Bounds from `python -m benchmarks.tiling_accuracy` (8-frame windows, 64 px tiles, overlap 0.25; see
# docs/tiling.md): the release's algorithm is off by about 0.1 on nano's latents and frames there.
@pytest.mark.parametrize(
    "size, settings, pooled_bound, exact_bound",
    [
        ((25, 32, 48), dict(frames_per_window=8, tile_size=None), 2e-3, 1e-5),
        ((9, 64, 128), dict(frames_per_window=None, tile_size=64, overlap=0.25), 5e-4, 5e-4),
    ],
)
def test_tiled_result_matches_the_whole_clip(nano, size, settings, pooled_bound, exact_bound):
    x = _real_clip(*size)
    z_ref, y_ref = _run(nano, x)
    errors = {}
    for norm in ("pooled", "exact", "tile"):
        z, y = _run(nano, x, norm=norm, **settings)
        assert z.shape == z_ref.shape and y.shape == y_ref.shape
        errors[norm] = max((z - z_ref).abs().mean(), (y - y_ref).abs().mean())
    assert errors["pooled"] < pooled_bound and errors["pooled"] < 0.5 * errors["tile"]
    assert errors["exact"] < exact_bound


def test_windows_and_tiles_of_a_random_model():
    """Random weights amplify every difference; exact statistics and halos still keep tiles close."""
    from cvvae import CVVAEModel

    torch.manual_seed(0)
    model = CVVAEModel(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, norm_num_groups=4).eval()
    x = _real_clip(13, 48, 64)
    z_ref, y_ref = _run(model, x)
    settings = dict(frames_per_window=4, tile_size=32, overlap=0.25, norm="exact", halo=6, temporal_halo=4)
    z, y = _run(model, x, **settings)
    z_tile, y_tile = _run(model, x, **{**settings, "norm": "tile", "halo": 0, "temporal_halo": 0})
    assert (z - z_ref).abs().mean() < 0.05 * (z_tile - z_ref).abs().mean()
    assert (y - y_ref).abs().mean() < 0.1 * (y_tile - y_ref).abs().mean()


def test_encoder_windows_stream_exactly(nano):
    """Causal history makes windows exact: per-box statistics per window are the only difference left."""
    from cvvae.blocks import CausalHistory

    enc = nano.encoder
    layers = [enc.conv_in, enc.down[0].downsample]  # a causal conv, and a sampler with stride 2 in time
    x = [_real_clip(17, 32, 48), torch.randn(1, enc.down[0].downsample.conv.in_channels, 17, 16, 16)]
    for layer, clip in zip(layers, x):
        with torch.no_grad():
            whole = layer(clip)
            layer.history = CausalHistory()
            try:  # windows of 9, 4 and 4 frames: odd and even offsets
                parts = [layer(clip[:, :, :9]), layer(clip[:, :, 9:13]), layer(clip[:, :, 13:])]
            finally:
                layer.history = None
        torch.testing.assert_close(torch.cat(parts, dim=2), whole)


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


@pytest.mark.parametrize("tile_size", [None, 16])
def test_decode_hands_frames_on_window_by_window(tiny_vae, tile_size):
    """With a sink, tiled decoding releases final frames in order, about a window at a time, equal to the
    frames it returns without one."""
    from cvvae.tiling import tiled_decode

    settings = tiny_vae.tiling.replace(frames_per_window=8, tile_size=tile_size, overlap=0.25)
    z = torch.randn(1, 4, 9, 4, 4) * 0.5
    parts = []
    with torch.no_grad():
        whole = tiled_decode(tiny_vae.decoder, z, settings, 3)
        assert tiled_decode(tiny_vae.decoder, z, settings, 3, sink=parts.append) is None
    assert torch.equal(torch.cat(parts, dim=2), whole)  # (1, 3, 33, 32, 32)
    assert len(parts) >= 4 and max(p.shape[2] for p in parts) <= 8 + 4  # the last: its window's whole span


def test_decoder_activation_size_does_not_grow_with_frames(tiny_vae):
    """With temporal windows on, the largest activation inside the decoder is the same for 13 and 25 latents."""
    largest = []

    def hook(_module, _inputs, output):
        if torch.is_tensor(output):
            largest[-1] = max(largest[-1], output.numel())

    handles = [m.register_forward_hook(hook) for m in tiny_vae.decoder.modules()]
    tiny_vae.enable_tiling(frames_per_window=8, tile_size=None)
    for n in (13, 25):
        largest.append(0)
        with torch.no_grad():
            tiny_vae.decode(torch.randn(1, 4, n, 4, 4))
    for h in handles:
        h.remove()
    assert largest[0] == largest[1] > 0


def test_padded_frames_slice_like_the_padded_clip():
    """Tiled encoding converts the uint8 clip box by box: every slice equals the padded float clip's."""
    from cvvae import CVVAEModel
    from cvvae.model import PaddedFrames
    from cvvae.video import frames_to_tensor

    frames = torch.randint(0, 256, (7, 13, 21, 3), dtype=torch.uint8).numpy()
    padded = CVVAEModel._pad(frames_to_tensor(frames))  # [1, 3, 9, 16, 24]
    lazy = PaddedFrames(frames)
    assert lazy.shape == tuple(padded.shape)
    for t, h, w in [(slice(None), slice(None), slice(None)), (slice(5, 9), slice(8, 16), slice(16, 24))]:
        index = (slice(None), slice(None), t, h, w)
        assert torch.equal(lazy[index], padded[index])
    with pytest.raises(IndexError):
        lazy[0]


@pytest.mark.parametrize("variant", ["sd21", "sd3"])
@pytest.mark.parametrize("tile_size", [None, 16])
def test_exact_decoder_windows_equal_the_whole_clip_at_no_extra_temporal_work(variant, tile_size):
    """Back-to-back decoder windows that take their temporal context from their neighbours in lockstep are
    exact (no halo, no blending), also across the temporal upsamplers, at 1.0x work in time."""
    from cvvae.loading import build_tiny_vae
    from cvvae.tiling import TilingSettings, tiled_decode, work

    vae = build_tiny_vae(seed=0, variant=variant)
    z = torch.randn(1, vae.latent_channels, 10, 4, 4)  # windows of 2, 1 and 1 latents: every offset
    settings = TilingSettings(frames_per_window=4, tile_size=tile_size, overlap=0.25, halo=8, auto=False)
    with torch.no_grad():
        whole = vae.decoder(z)
        tiled = tiled_decode(vae.decoder, z, settings, vae.video_channels)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    assert work(settings.replace(tile_size=None), (10, 4, 4), decoder=True) == 1.0
