"""Building blocks computed a faster way than written: they must equal the plain computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cvvae.blocks import CausalConv3d, CausalHistory, Downsample, ResBlock, Upsample, phase_kernel, upsampled_conv


def nearest_then_conv(x, weight, bias, mode):
    """The upsampler as the release writes it: nearest x2 in space, pad one pixel, 3-D conv."""
    up = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    return F.conv3d(F.pad(up, (1, 1, 1, 1, 0, 0), mode="constant" if mode == "zeros" else mode), weight, bias)


@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("kt", [1, 3])
def test_upsampled_conv_equals_nearest_then_conv(mode, kt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, kt + 2, 3, 7, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, kt, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    ours = upsampled_conv(x, phase_kernel(w), b, mode)
    torch.testing.assert_close(ours, nearest_then_conv(x, w, b, mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("time, spatial", [(False, "zeros"), (True, "zeros"), (True, "replicate")])
def test_upsampler_matches_the_release_and_trains(time, spatial):
    torch.manual_seed(0)
    up = Upsample(4, time=time, spatial=spatial).double()
    x = torch.randn(1, 4, 3, 5, 6, dtype=torch.float64, requires_grad=True)

    def reference(x):  # the release's Upsample3D: replicate a frame at each end, nearest, conv, halves to frames
        y = nearest_then_conv(torch.cat([x[:, :, :1], x, x[:, :, -1:]], 2), up.conv.weight, up.conv.bias, spatial)
        if not time:
            return y
        b, c2, t, h, w = y.shape
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)[:, :, 1:]

    ours, ref = up(x), reference(x)
    assert ours.shape == (1, 4, 5 if time else 3, 10, 12)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(ours.square().sum(), (x, up.conv.weight))
    torch.testing.assert_close(grads, torch.autograd.grad(ref.square().sum(), (x, up.conv.weight)))


def test_upsampler_kernel_follows_new_weights():
    """The phase kernel is kept between calls: a load or an in-place change of the weights must renew it."""
    up = Upsample(4, time=False)
    x = torch.randn(1, 4, 2, 3, 3)

    def expected():
        return nearest_then_conv(torch.cat([x[:, :, :1], x, x[:, :, -1:]], 2), up.conv.weight, up.conv.bias, "zeros")

    with torch.inference_mode():
        up(x)
    up.load_state_dict({k: v + 1 for k, v in up.state_dict().items()})
    with torch.inference_mode():
        torch.testing.assert_close(up(x), expected())
    with torch.no_grad():
        up.conv.weight.mul_(-2)
        torch.testing.assert_close(up(x), expected())


def test_copies_do_not_carry_the_kept_kernel():
    up = Upsample(4, time=True)
    with torch.inference_mode():
        up(torch.randn(1, 4, 2, 3, 3))
    assert up.kept_kernel is not None and copy.deepcopy(up).kept_kernel is None
    assert "kept_kernel" not in up.state_dict()
    assert up.to(torch.float64).kept_kernel.dtype == torch.float64  # a buffer: it follows the module


def causal_then_conv(x, conv):
    """A causal conv as the release writes it: frame 0 repeated twice in front (a copy), then the conv."""
    return conv(torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2))


@pytest.mark.parametrize("grad", [False, True])
def test_silu_written_into_the_causal_padding_equals_silu_then_pad(grad):
    torch.manual_seed(0)
    conv = CausalConv3d(6, 5, 3).double()
    x = torch.randn(2, 6, 5, 4, 7, dtype=torch.float64)
    plain = torch.nn.Conv3d(6, 5, 3, padding=(0, 1, 1)).double()
    plain.load_state_dict(conv.state_dict())
    calls = []
    conv.register_forward_hook(lambda *_: calls.append(1))  # hooks (profilers, offloading) still see the call
    with torch.set_grad_enabled(grad):
        ours = conv.after_silu(x.clone())
    assert calls == [1]
    torch.testing.assert_close(ours, causal_then_conv(F.silu(x), plain), rtol=0, atol=1e-12)
    conv.history = CausalHistory()  # streaming window by window: the history pads, the result is the same
    with torch.no_grad():
        torch.testing.assert_close(conv.after_silu(x.clone()), ours, rtol=0, atol=1e-12)


def test_downsample_pads_in_one_copy_like_the_release():
    torch.manual_seed(0)
    down = Downsample(4, time=True).double()
    x = torch.randn(1, 4, 5, 6, 8, dtype=torch.float64)
    release = down.conv(F.pad(torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2), (0, 1, 0, 1)))
    with torch.no_grad():
        torch.testing.assert_close(down(x), release, rtol=0, atol=0)


@pytest.mark.parametrize("cout", [6, 8])  # identity shortcut, 1x1 shortcut
def test_resblock_in_place_inference_equals_its_autograd_form(cout):
    torch.manual_seed(0)
    block = ResBlock(6, cout, "causal", "frame", groups=2, dropout=0.0).double().eval()
    x = torch.randn(1, 6, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    trained = block(x)
    trained.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.inference_mode():
        inferred = block(x.detach())
    torch.testing.assert_close(inferred, trained.detach(), rtol=0, atol=1e-12)
