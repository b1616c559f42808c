"""CUDA correctness guards (``pytest -m gpu`` on the GPU machine; TF32 off so fp32 means fp32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cvvae import CVVAEModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(autouse=True)
def strict_fp32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_parity_on_cuda(parity_dir):
    model = CVVAEModel.from_pretrained(parity_dir, dtype=torch.float32).cuda().eval()
    ref = load_file(parity_dir / "io.safetensors")
    x = (ref["video_u8"].float() / 127.5 - 1).cuda()
    with torch.no_grad():
        mean = model.encode(x).latent_dist.mean.cpu()
        decoded = model.decode(ref["posterior_mean"].cuda()).sample.cpu()
    torch.testing.assert_close(mean, ref["posterior_mean"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decoded, ref["decoded"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_fp32_on_cuda(dtype):
    from cvvae.loading import load_vae

    model = load_vae("nano").cuda().float().eval()  # trained weights: realistic activation ranges
    x = torch.rand(1, 3, 17, 64, 96, generator=torch.Generator().manual_seed(0)).cuda() * 2 - 1
    with torch.no_grad():
        ref = model(x).sample
        half = model.to(dtype)(x.to(dtype)).sample
    assert torch.isfinite(half).all()
    assert (half.float() - ref).abs().mean() < 0.02


def test_tiled_decode_memory_does_not_grow_with_length():
    from cvvae.loading import build_tiny_vae

    model = build_tiny_vae(seed=0).cuda().eval()
    model.enable_tiling(frames_per_window=4, tile_size=None)
    peaks = []
    for latents in (5, 25):
        z = torch.randn(1, 4, latents, 16, 16, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            y = model.decode(z).sample
        extra = 2 * y.numel() * y.element_size()  # the output (and its trimmed copy) grows with length
        peaks.append(torch.cuda.max_memory_allocated() - base - extra)
        del y
    assert peaks[1] < 1.1 * peaks[0] + 2**20
