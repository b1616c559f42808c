"""The peak-memory estimate behind the default tiling (``cvvae.memory``) against measured peaks on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cvvae import CVVAEModel
from cvvae.memory import estimate_peak, meta_copy
from cvvae.tiling import TilingSettings, tiled_decode, tiled_encode, tiling_report

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SMALL = dict(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, norm_num_groups=4)

# Runs in a fresh process: peak RSS over the resident size just before the call (after a warm-up), in bytes.
MEASURE = f"""
import os, sys, torch
torch.set_num_threads(1)
from cvvae import CVVAEModel
stage, frames, size, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
torch.manual_seed(0)
net = getattr(CVVAEModel(**{SMALL}).eval().to(dtype), stage)
shape = (1, 3, frames, size, size) if stage == "encoder" else (1, 4, 1 + (frames - 1) // 4, size // 8, size // 8)
with torch.no_grad():
    net(torch.randn(*shape[:2], 2, *(16, 16) if stage == "encoder" else (2, 2), dtype=dtype))  # warm-up
    x = torch.randn(shape, dtype=dtype)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    net(x)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024 - rss + x.numel() * x.element_size())
"""


def _measured(stage: str, frames: int, size: int, dtype: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, stage, str(frames), str(size), dtype],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def _estimated(stage: str, frames: int, size: int, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        net = getattr(CVVAEModel(**SMALL), stage).to(dtype)
    shape = (1, 3, frames, size, size) if stage == "encoder" else (1, 4, 1 + (frames - 1) // 4, size // 8, size // 8)
    return estimate_peak(lambda: net(torch.empty(shape, dtype=dtype, device="meta")), torch.device("cpu"), dtype)


@pytest.mark.parametrize(
    "stage, dtype",
    [
        ("encoder", "float32"),
        pytest.param("decoder", "float32", marks=pytest.mark.slow),
        pytest.param("decoder", "bfloat16", marks=pytest.mark.slow),
    ],
)
def test_estimate_is_close_to_the_measured_peak_rss(stage, dtype):
    """17 frames of 192x192 (activations of 40 MB, far above what a Python process moves by itself)."""
    measured = _measured(stage, 17, 192, dtype)
    estimated = _estimated(stage, 17, 192, getattr(torch, dtype))
    assert measured > 100 * 2**20
    low = 0.8 if dtype == "float32" else 0.7  # bf16 convolutions' scratch on CPU varies by run: 177-204 MiB
    assert low * measured < estimated < 1.3 * measured, (estimated / 2**20, measured / 2**20)


def test_estimate_scales_with_the_clip_and_the_dtype():
    small, large = _estimated("decoder", 17, 192, torch.float32), _estimated("decoder", 33, 192, torch.float32)
    assert 1.7 < large / small < 2.1  # about the frames' ratio, 33 / 17
    assert _estimated("decoder", 17, 192, torch.bfloat16) < 0.8 * small


def test_meta_copy_runs_the_same_shapes_without_data():
    torch.manual_seed(0)
    model = CVVAEModel(**SMALL).eval()
    meta = meta_copy(model.decoder, torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in meta.parameters())
    assert not next(model.decoder.parameters()).is_meta  # the original keeps its weights
    with torch.no_grad():
        y = meta(torch.empty(1, 4, 3, 4, 4, device="meta", dtype=torch.bfloat16))
    assert y.shape == (1, 3, 9, 32, 32)


def test_default_is_the_whole_clip_when_it_fits_and_an_exact_tiling_when_not(monkeypatch):
    torch.manual_seed(0)
    model = CVVAEModel(**SMALL, en_de_n_frames_a_time=8, tile_spatial_size=64).eval()
    assert model.tiling.auto
    x, z = torch.rand(1, 3, 5, 16, 16) * 2 - 1, torch.randn(1, 4, 7, 6, 8)
    with torch.no_grad():
        model.encode(x)
        y = model.decode(z).sample
    report = tiling_report(model)
    assert report["encode"]["mode"] == report["decode"]["mode"] == "whole"
    assert report["decode"]["estimate_gib"] < report["decode"]["available_gib"]
    # a budget between the whole clip's estimate and the exact windows': exact windows, equal to the whole clip
    whole = report["decode"]["estimate_gib"]
    monkeypatch.setenv("CVVAE_MEMORY_GIB", str(0.95 * whole / 0.9))
    with torch.no_grad():
        y_auto = model.decode(z).sample
    choice = tiling_report(model)["decode"]
    assert choice["mode"] == "tiled" and choice["settings"]["norm"] == "exact" and choice["work"] == 1.0
    assert choice["estimate_gib"] <= 0.95 * whole
    torch.testing.assert_close(y_auto, y, atol=2e-5, rtol=0)
    # explicit settings are used as given
    with torch.no_grad():
        model.decode(z, tiling={"frames_per_window": 8})
    assert tiling_report(model)["decode"]["reason"] == "settings given"


def test_explicit_settings_turn_the_choice_off():
    s = TilingSettings()
    assert s.auto and s.replace(offload=True).auto and s.replace(enabled=False).auto
    assert not s.replace(frames_per_window=8).auto and not s.replace(enabled=True).auto
    assert s.replace(frames_per_window=8, auto=True).auto


@pytest.mark.parametrize("stage", ["encoder", "decoder"])
def test_bf16_tiled_path_runs_on_cpu_close_to_fp32(stage):
    torch.manual_seed(0)
    model = CVVAEModel(**SMALL).eval()
    settings = TilingSettings(frames_per_window=4, tile_size=32, overlap=0.25, auto=False)
    x = torch.rand(1, 3, 9, 48, 48) * 2 - 1 if stage == "encoder" else torch.randn(1, 4, 3, 6, 6)
    run = tiled_encode if stage == "encoder" else tiled_decode
    channels = 8 if stage == "encoder" else 3
    with torch.no_grad():
        ref = run(getattr(model, stage), x, settings, channels)
        out = run(getattr(model.to(torch.bfloat16), stage), x.bfloat16(), settings, channels)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
