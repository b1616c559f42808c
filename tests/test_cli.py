"""`python -m cvvae reconstruct|encode|decode`: real clips, odd sizes, latents round trip, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import CLIP, REPO

from cvvae import cli, devices
from cvvae.api import load_latents, reconstruct
from cvvae.devices import DTYPES, dtype_name
from cvvae.loading import RANDOM_WEIGHTS_NOTICE
from cvvae.video import frames_to_tensor, probe, read_video, tensor_to_frames, write_video

TINY = ["--model", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """10 frames at 60x90 (odd length, sizes not multiples of 8) of a real clip."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames, fps = read_video(CLIP, num_frames=10, size=(60, 90))
    return write_video(path, frames, fps)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


# ----------------------------------------------------------------------------- library


@pytest.mark.parametrize(
    "tiling",
    [
        {"enabled": False},
        {"frames_per_window": 4, "tile_size": None},  # streamed: converted box by box, kept window by window
        {"frames_per_window": 4, "tile_size": 16, "overlap": 0.25, "norm": "tile"},
    ],
)
def test_reconstruct_keeps_any_shape(tiny_vae, tiling):
    frames = np.random.default_rng(0).integers(0, 256, (14, 20, 28, 3), dtype=np.uint8)
    rec = reconstruct(tiny_vae, frames, tiling=tiling)
    assert rec.shape == frames.shape and rec.dtype == np.uint8
    np.testing.assert_array_equal(rec, reconstruct(tiny_vae, frames, tiling=tiling))  # posterior mode
    with torch.no_grad():  # the same as the model's own forward on the whole clip tensor
        whole = tensor_to_frames(tiny_vae(frames_to_tensor(frames), tiling=tiling).sample)
    np.testing.assert_array_equal(rec, whole)
    sampled = reconstruct(tiny_vae, frames, sample=True, generator=torch.Generator().manual_seed(1), tiling=tiling)
    assert sampled.shape == frames.shape and not np.array_equal(sampled, rec)


# ----------------------------------------------------------------------------- success


def test_reconstruct_real_clip_subprocess(tmp_path):
    out = tmp_path / "rec.mp4"
    cmd = [sys.executable, "-m", "cvvae", "reconstruct", str(CLIP), str(out), *TINY]
    cmd += ["--frames", "9", "--height", "64", "--width", "96"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json_line(proc.stdout)
    assert (result["frames"], result["height"], result["width"]) == (9, 64, 96)
    assert {"psnr", "ssim", "flicker", "seconds"} <= set(result)
    assert set(result["flicker"]) == {"frame_difference", "warping_error", "motion"}
    assert RANDOM_WEIGHTS_NOTICE in proc.stderr
    info = probe(out)
    assert (info.frames, info.height, info.width) == (9, 64, 96) and info.fps == pytest.approx(12)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == "tiny" and sidecar["frames"] == 9 and "versions" in sidecar


def test_reconstruct_odd_frames_and_size(tmp_path, capsys, clip):
    out = tmp_path / "rec.mp4"
    code, stdout, _ = run_main(capsys, "reconstruct", clip, out, *TINY)
    assert code == 0
    result = json_line(stdout)
    assert (result["frames"], result["height"], result["width"]) == (10, 60, 90)
    info = probe(out)
    assert (info.frames, info.height, info.width) == (10, 60, 90)
    assert out.with_suffix(".json").is_file()


def test_reconstruct_selection_tiling_and_side_by_side(tmp_path, capsys, clip):
    out = tmp_path / "sbs.mp4"
    argv = ["reconstruct", clip, out, *TINY, "--start", 1, "--stride", 2, "--frames", 3, "--side-by-side"]
    code, stdout, _ = run_main(capsys, *argv, "--frames-per-window", 4, "--tile-size", 96, "--tile-overlap", 0.25)
    assert code == 0
    assert json_line(stdout)["frames"] == 3  # frames 1, 3, 5
    info = probe(out)
    assert (info.frames, info.height, info.width) == (3, 60, 180) and info.fps == pytest.approx(6)  # 12 fps / 2
    tiling = json.loads(out.with_suffix(".json").read_text())["tiling"]
    assert (tiling["frames_per_window"], tiling["tile_size"], tiling["overlap"]) == (4, 96, 0.25)
    code, _, _ = run_main(capsys, "reconstruct", clip, tmp_path / "whole.mp4", *TINY, "--no-tiling", "--frames", 2)
    assert code == 0
    assert json.loads((tmp_path / "whole.json").read_text())["tiling"]["enabled"] is False


@pytest.mark.parametrize("has_bf16, default", [(True, "bf16"), (False, "fp32")])
def test_vae_commands_default_to_bf16_on_cpus_that_multiply_it(tmp_path, capsys, clip, monkeypatch, has_bf16, default):
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: has_bf16)
    assert devices.default_vae_dtype("cpu") == DTYPES[default]
    assert devices.default_vae_dtype("cuda") == torch.float16  # half precision on a GPU either way
    assert devices.default_dtype("cpu") == torch.float32  # generation keeps fp32 on a CPU
    for argv, expected in [((), default), (("--dtype", "fp32"), "fp32"), (("--dtype", "bf16"), "bf16")]:
        out = tmp_path / f"{expected}-{len(argv)}.mp4"
        code, _, err = run_main(capsys, "reconstruct", clip, out, *TINY, "--frames", 2, *argv)
        assert code == 0, err
        assert json.loads(out.with_suffix(".json").read_text())["dtype"] == dtype_name(DTYPES[expected])


def test_encode_decode_round_trip(tmp_path, capsys, clip):
    latents, out = tmp_path / "z.safetensors", tmp_path / "dec.mp4"
    code, stdout, _ = run_main(capsys, "encode", clip, latents, *TINY)
    assert code == 0 and json_line(stdout)["latent_shape"] == [1, 4, 4, 8, 12]  # 10 -> 13 frames, 60x90 -> 64x96
    z, meta = load_latents(latents)
    assert z.shape == (1, 4, 4, 8, 12)
    assert (meta["frames"], meta["height"], meta["width"], meta["model"]) == (10, 60, 90, "tiny")
    code, stdout, _ = run_main(capsys, "decode", latents, out, *TINY)
    assert code == 0
    info = probe(out)
    assert (info.frames, info.height, info.width) == (10, 60, 90)
    assert info.fps == pytest.approx(probe(clip).fps)
    # decoding the saved latents gives what reconstruct gives (same model, posterior mode)
    code, _, _ = run_main(capsys, "reconstruct", clip, tmp_path / "rec.mp4", *TINY)
    a, b = read_video(out)[0].astype(int), read_video(tmp_path / "rec.mp4")[0].astype(int)
    assert np.abs(a - b).mean() < 2


# ----------------------------------------------------------------------------- bad input


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))


@pytest.fixture
def bad_inputs(tmp_path, clip) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    data = clip.read_bytes()
    (folder / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video\n")
    write_audio_only(folder / "audio.mp4")
    return {
        "missing": folder / "missing.mp4",
        "zero-byte": folder / "empty.mp4",
        "truncated": folder / "trunc.mp4",
        "text": folder / "text.mp4",
        "no video stream": folder / "audio.mp4",
    }


def assert_clean_failure(code: int, stderr: str, out_dir: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_bad_inputs(tmp_path, capsys, bad_inputs):
    for name, path in bad_inputs.items():
        for command, suffix in (("reconstruct", ".mp4"), ("encode", ".safetensors")):
            out_dir = tmp_path / f"out-{name}-{command}"
            code, _, stderr = run_main(capsys, command, path, out_dir / f"o{suffix}", *TINY)
            assert_clean_failure(code, stderr, out_dir)


def test_truncated_real_video(tmp_path, capsys):
    data = CLIP.read_bytes()
    trunc = tmp_path / "half.mp4"
    trunc.write_bytes(data[: len(data) // 2])
    code, _, stderr = run_main(
        capsys, "reconstruct", trunc, tmp_path / "out" / "o.mp4", *TINY, "--height", 32, "--width", 32
    )
    assert_clean_failure(code, stderr, tmp_path / "out")
    assert "truncated" in stderr


def test_bad_arguments_and_outputs(tmp_path, capsys, clip):
    out_dir = tmp_path / "out"
    model_dir = tmp_path / "no-model"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("no weights here")
    cases = [
        ["reconstruct", clip, out_dir / "o.mp4", *TINY, "--height", 64],  # width missing
        ["reconstruct", clip, out_dir / "o.avi", *TINY],  # not an mp4
        ["reconstruct", clip, clip / "o.mp4", *TINY],  # a file used as a folder
        ["reconstruct", clip, out_dir / "o.mp4", *TINY, "--tile-size", 12],  # invalid tile size
        ["reconstruct", clip, out_dir / "o.mp4", *TINY, "--start", 50],  # beyond the end
        ["decode", clip, out_dir / "o.mp4", *TINY],  # an mp4 is no latents file
        ["decode", tmp_path / "none.safetensors", out_dir / "o.mp4", *TINY],  # missing latents
        ["reconstruct", clip, out_dir / "o.mp4", "--model", model_dir, "--device", "cpu"],  # folder without model
        ["encode", clip, out_dir / "o.safetensors", "--model", tmp_path / "absent", "--device", "cpu"],
        ["reconstruct", clip, out_dir / "o.mp4", "--model", "nobody/no-such-cvvae", "--device", "cpu"],  # offline hub
    ]
    for argv in cases:
        code, _, stderr = run_main(capsys, *argv)
        assert_clean_failure(code, stderr, out_dir)
    with pytest.raises(SystemExit) as exc:
        cli.main(["reconstruct", str(clip)])  # argparse: output missing
    assert exc.value.code == 2


def test_subprocess_error(tmp_path, clip):
    """Exit code and the single error line through a real process (no traceback): a folder with no model."""
    model_dir = tmp_path / "no-model"
    model_dir.mkdir()
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "cvvae", "reconstruct", str(clip), str(out_dir / "o.mp4")]
    cmd += ["--model", str(model_dir), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert_clean_failure(proc.returncode, proc.stderr, out_dir)
    assert "config.json" in proc.stderr
