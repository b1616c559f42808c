"""``python -m cvvae compare``: the protocol, the resumable store, errors as rows, the report files.

The tiny diffusers VAEs have RANDOM weights: these tests check mechanics (shapes, frame arithmetic, files,
resumption), never quality. ``nano`` and ``nano-2d`` are the shipped trained models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CLIP

from cvvae import compare as cmp
from cvvae.cli import main
from cvvae.tiny_vaes import TINY_CONFIGS, build_tiny_video_vae
from cvvae.vaes import VAE_SPECS, VAESpec

SMALL = ["--size", "32x32", "--frames", "5,9", "--quiet"]


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", str(CLIP), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- adapters (mechanics only)

SHAPES = {"tiny-allegro": (24, 128)}  # Allegro only runs tiled, in blocks of 24 frames x 128 pixels here


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_diffusers_adapter_keeps_shapes_and_frame_arithmetic(name):
    vae = build_tiny_video_vae(name)
    assert vae.random_weights
    t, side = SHAPES.get(name, (17, 64))
    frames = np.random.default_rng(0).integers(0, 256, (t, side, side, 3), dtype=np.uint8)
    z = vae.encode_frames(frames)
    s = vae.spatial_factor
    assert tuple(z.shape) == (1, vae.latent_channels, vae.latent_frames(t), side // s, side // s)
    assert vae.reconstruct(frames).shape == frames.shape
    assert vae.compression() == 3 * vae.temporal_factor * s * s / vae.latent_channels


# ----------------------------------------------------------------------------- the command


def test_nano_against_its_2d_vae_and_a_random_diffusers_vae(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVVAE_LPIPS_WEIGHTS", raising=False)  # the table says when LPIPS was not measured
    out = tmp_path / "cmp"
    code, stdout, _ = _run(capsys, "--vae", "nano", "--vae", "nano-2d", "--vae", "tiny-wan", "--out", str(out), *SMALL)
    assert code == 0
    rows = list(_rows(out).values())
    assert len(rows) == 3 * 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert (out / r["recon"]).is_file() and (out / r["recon"]).with_suffix(".json").is_file()
        assert r["size"] == [32, 32] and r["psnr"] > 0 and 0 < r["ssim"] <= 1 and r["encode_s"] > 0
        assert r["motion_px"] >= 0 and r["input_warping_error"] >= 0 and r["memory_measure"] == "cpu rss"
    nano = next(r for r in rows if r["vae"] == "nano" and r["frames"] == 9)
    assert nano["latent_shape"] == [4, 3, 4, 4] and nano["compression"] == 192 and not nano["random_weights"]
    assert nano["sd"]["image_vae"] == "nano-2d" and nano["sd"]["mapped_frames"] == [0, 4, 8]
    assert nano["sd"]["image_decoder_on_video_latents"]["psnr"] > 10
    assert next(r for r in rows if r["vae"] == "nano-2d")["latent_shape"][1] == 5  # one latent per frame at 5
    assert all(r["random_weights"] for r in rows if r["vae"] == "tiny-wan")
    md = (out / "comparison.md").read_text()
    assert "tiny-wan †" in md and "RANDOM weights" in md and "LPIPS: not measured" in md and md in stdout
    data = json.loads((out / "comparison.json").read_text())
    assert [(e["vae"], e["frames"]) for e in data["summary"]] == [
        ("nano", 5), ("nano", 9), ("nano-2d", 5), ("nano-2d", 9), ("tiny-wan", 5), ("tiny-wan", 9)
    ]  # fmt: skip
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    grids = list(out.glob("grid_*.mp4"))
    assert len(grids) == 1 and grids[0].with_suffix(".json").is_file() and grids[0].with_suffix(".png").is_file()
    from cvvae.video import read_video

    grid, _ = read_video(grids[0])
    assert grid.shape == (9, 32 + 22, 4 * 32, 3)  # a label strip over input + three reconstructions


def test_a_vae_that_fails_to_load_or_run_is_a_row(tmp_path, capsys, monkeypatch):
    def broken(device=None, dtype=None, **_):
        vae = build_tiny_video_vae("tiny-hunyuan", device=device, dtype=dtype)
        vae.encode = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory (simulated)"))
        return vae

    monkeypatch.setitem(VAE_SPECS, "broken-test", VAESpec(broken, "raises when it runs"))
    out = tmp_path / "cmp"
    args = ["--vae", "AutoencoderKLWan:nobody/missing", "--vae", "broken-test", "--vae", "tiny-cogvideox"]
    code, _, _ = _run(capsys, *args, "--out", str(out), *SMALL)
    assert code == 0
    rows = list(_rows(out).values())
    load = [r for r in rows if r["vae"].startswith("AutoencoderKLWan")]
    assert len(load) == 2 and all(r["status"] == "error" and r["stage"] == "load" for r in load)
    assert "nobody/missing" in load[0]["error"]
    run = [r for r in rows if r["vae"] == "broken-test"]
    assert all(r["stage"] == "run" and "out of memory (simulated)" in r["error"] for r in run)
    assert all(r["status"] == "ok" for r in rows if r["vae"] == "tiny-cogvideox")
    md = (out / "comparison.md").read_text()
    assert "Failed" in md and "out of memory (simulated)" in md


def test_an_interrupted_comparison_resumes_and_keeps_finished_rows(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}

    def interrupting(device=None, dtype=None, **_):
        vae = build_tiny_video_vae("tiny-hunyuan", device=device, dtype=dtype)
        decode = vae.decode

        def decode_once(z):
            calls["n"] += 1
            if calls["n"] == 3:  # the warm-up decodes once; the first measured row decodes, then this one stops
                raise KeyboardInterrupt
            return decode(z)

        vae.decode = decode_once
        return vae

    monkeypatch.setitem(VAE_SPECS, "interrupting-test", VAESpec(interrupting, "stops the run once"))
    out = tmp_path / "cmp"
    args = ["--vae", "tiny-wan", "--vae", "interrupting-test", "--out", str(out), *SMALL]
    assert _run(capsys, *args)[0] == 130
    first = _rows(out)
    assert sorted(r["vae"] for r in first.values()) == ["interrupting-test", "tiny-wan", "tiny-wan"]
    stamps = {name: (out / "rows" / name).stat().st_mtime_ns for name in first}
    assert _run(capsys, *args)[0] == 0
    second = _rows(out)
    assert len(second) == 4 and all(r["status"] == "ok" for r in second.values())
    for name in first:  # finished rows are neither measured nor written again
        assert second[name] == first[name] and (out / "rows" / name).stat().st_mtime_ns == stamps[name]


# ----------------------------------------------------------------------------- bad input: exit 2, nothing touched


@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _run(capsys, "--vae", "tiny-wan", "--out", str(out), *SMALL)[0] == 0
    return out, {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _intact(finished) -> None:
    out, files = finished
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vae", "no-such-vae"], "unknown VAE 'no-such-vae'"),
        (["--vae", "tiny-wan", "--frames", "40"], "too short: 33 frames"),
        (["--vae", "tiny-wan", "--size", "48x48", "--frames", "5,9"], "other settings: size [32, 32] (now [48, 48])"),
        (["--vae", "tiny-wan", "--size", "32"], "HEIGHTxWIDTH"),
        (["--vae", "tiny-wan", "--vae", "tiny-wan"], "given twice"),
    ],
)
def test_bad_input_exits_2_and_leaves_the_finished_part_intact(finished, capsys, args, message):
    out = finished[0]
    defaults = ["--size", "32x32", "--frames", "5,9"]
    code, stdout, err = _run(capsys, *defaults, *args, "--out", str(out), "--quiet")
    assert code == 2 and message in _one_error_line(err) and not stdout
    _intact(finished)


def test_clips_of_mismatched_sizes_exit_2(tmp_path, capsys):
    from cvvae.video import write_video

    other = write_video(tmp_path / "small.mp4", np.full((12, 64, 48, 3), 120, np.uint8), 12)
    code = main(["compare", str(CLIP), str(other), "--vae", "tiny-wan", "--size", "native", "--frames", "9"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "different sizes" in line and "small.mp4: 64x48" in line


# ----------------------------------------------------------------------------- measures


def test_motion_is_the_flow_magnitude_in_pixels_per_frame():
    rng = np.random.default_rng(0)
    texture = (rng.random((96, 160)) * 255).astype(np.uint8)
    import cv2

    texture = cv2.GaussianBlur(texture, (0, 0), 2)
    frames = np.stack([np.stack([np.roll(texture, 3 * t, axis=1)] * 3, -1) for t in range(5)])[:, :, 32:128]
    assert cmp.motion(frames) == pytest.approx(3.0, abs=0.5)
    assert cmp.motion(np.repeat(frames[:1], 4, axis=0)) == pytest.approx(0.0, abs=0.05)


def test_peak_memory_sees_an_allocation():
    with cmp.PeakMemory("cpu") as mem:
        block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
        block[::4096] = 2
        import time

        time.sleep(0.05)
    assert mem.kind == "cpu rss" and mem.mib is not None and mem.mib > 40
