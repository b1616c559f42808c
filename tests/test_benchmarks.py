"""The GPU benchmarks run end to end on CPU with tiny components (their --small smoke mode); their bad
inputs stop before any work."""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks import svd_speed, vae_speed
from cvvae import devices

slow = pytest.mark.slow


@slow
def test_svd_generation_benchmark_splits_time_between_unet_and_vae(tmp_path):
    args = ["generate", "--small", "--device", "cpu", "--latents", "3", "--steps", "2", "--native"]
    svd_speed.main(args + ["--out", str(tmp_path)])
    rows = json.loads((tmp_path / "svd_speed_generate.json").read_text())["rows"]
    cvvae, native = rows
    assert (cvvae["frames"], native["frames"]) == (9, 3)  # CV-VAE: 3 latents -> 9 frames; SVD's VAE: 3
    assert 0 < cvvae["unet_s"] + cvvae["cvvae_s"] + cvvae["clip_s"] <= cvvae["seconds"]
    assert native["native_vae_s"] > 0 and "native_vae_s" not in cvvae
    assert "| cvvae | 3 | 9 | 64x64 | 2 |" in (tmp_path / "svd_speed_generate.md").read_text()


@slow
def test_finetune_benchmark_counts_trainable_parameters_per_mode(tmp_path):
    args = ["finetune", "--small", "--device", "cpu", "--latents", "3", "--repeats", "1", "--out", str(tmp_path)]
    svd_speed.main(args + ["--modes", "conv_out", "lora", "--checkpointing", "0"])
    rows = json.loads((tmp_path / "svd_speed_finetune.json").read_text())["rows"]
    conv_out, lora = rows
    assert conv_out["trainable"] == 32 * 4 * 9 + 4  # tiny UNet's conv_out: 32 -> 4 channels, 3x3
    assert lora["trainable"] > conv_out["trainable"]
    assert all(r["s_per_step"] > 0 and r["loss"] == r["loss"] for r in rows)


def test_vae_speed_times_rows_round_robin_on_a_cpu(monkeypatch):
    """Run r of every row before run r + 1 of any, one row further each round: drift falls on all rows alike."""
    calls = []

    def fake_time_once(model, x, case, device):
        calls.append(model)
        return 1.0 + len(calls), float("nan"), x

    monkeypatch.setattr(vae_speed, "time_once", fake_time_once)
    monkeypatch.setattr(vae_speed, "tiling_report", lambda model: {"model": model})
    built = []
    runs = [lambda name=name: built.append(name) or (name, name) for name in "abc"]
    results = vae_speed.time_rows(runs, None, "cpu", repeats=2, warmup=True)
    assert built == ["a", "b", "c"]  # every model built before any timing
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-up round, then two timed rounds
    assert [r[0] for r in results] == [(7 + 9) / 2, (5 + 10) / 2, (6 + 8) / 2]  # medians of the timed rounds
    assert [r[2] for r in results] == ["a", "b", "c"] and results[1][3] == {"model": "b"}


def test_vae_speed_times_rows_one_at_a_time_on_cuda(monkeypatch):
    """On CUDA each model is built, timed and dropped before the next (peaks count no other row); OOM -> None."""
    events = []

    def fake_time_once(model, x, case, device):
        events.append(("run", model))
        if model == "big":
            raise torch.OutOfMemoryError("out of memory")
        return 1.0, 2.0, x

    monkeypatch.setattr(vae_speed, "time_once", fake_time_once)
    monkeypatch.setattr(vae_speed, "tiling_report", lambda model: {})
    runs = [lambda name=name: events.append(("build", name)) or (name, name) for name in ("a", "big", "c")]
    results = vae_speed.time_rows(runs, None, "cuda", repeats=1, warmup=True)
    assert events == [("build", "a"), ("run", "a"), ("run", "a"), ("build", "big"), ("run", "big")] + [
        ("build", "c"),
        ("run", "c"),
        ("run", "c"),
    ]
    assert results == [(1.0, 2.0, "a", {}), None, (1.0, 2.0, "c", {})]


@slow
def test_vae_speed_benchmark_writes_its_table(tmp_path):
    argv = ["--small", "--device", "cpu", "--repeats", "1", "--tiling", "off"]  # fp32 by default on a CPU
    argv += ["--variants", "eager", "channels_last"]
    vae_speed.main(argv + ["--out", str(tmp_path)])
    rows = json.loads((tmp_path / "vae_speed.json").read_text())["rows"]
    assert [(r["work"], r["variant"]) for r in rows] == [
        ("encode", "eager"),
        ("encode", "channels_last"),
        ("decode", "eager"),
        ("decode", "channels_last"),
    ]
    eager, channels_last = rows[0], rows[1]
    assert eager["max_abs_err"] == 0  # fp32 untiled eager is the reference itself
    assert channels_last["max_abs_err"] < 1e-4 and channels_last["tflop"] == eager["tflop"]


@slow
def test_tiling_accuracy_benchmark_reports_errors_and_work(tmp_path):
    from benchmarks import tiling_accuracy

    out = tmp_path / "acc.json"
    tiling_accuracy.main(["--model", "random", "--frames", "17", "--size", "48", "160", "--json", str(out)])
    rows = {r["run"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"release", "ours, tile", "ours, pooled", "ours, exact"}
    assert rows["release"]["decode"] > rows["ours, exact"]["decode"]  # three 64 px tiles across 160 px
    assert rows["ours, pooled"]["decode_work"] == 2 * rows["ours, tile"]["decode_work"] > 1  # two passes


@slow
def test_host_memory_benchmark_measures_fresh_processes(tmp_path, capsys):
    from conftest import CLIP

    from benchmarks import host_memory

    host_memory.main(["--video", str(CLIP), "--frames", "5", "9", "--size", "32", "48", "--repeat", "1"])
    runs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(runs) == {"5", "9"} and all(0.1 < gb[0] < 8 for gb in runs.values())


@slow
def test_gpu_script_dry_run_writes_every_step(tmp_path):
    """benchmarks/gpu.sh --dry-run: the steps of the GPU run at tiny sizes on the CPU, each with its figures."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [line.split()[0] for line in (tmp_path / "summary.txt").read_text().splitlines()]
    assert steps == ["gpu-tests", "vae-speed", "svd-speed", "finetune-speed", "conv-layers"]
    assert (tmp_path / "vae" / "vae_speed.json").is_file() and (tmp_path / "svd" / "svd_speed_generate.md").is_file()
    assert "| upsample |" in (tmp_path / "conv-layers.log").read_text()


def fake_release(folder: Path, body: str) -> Path:
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "__init__.py").write_text("")
    (folder / "models" / "modeling_vae.py").write_text(body)
    return folder


@pytest.mark.parametrize(
    "repo, argv, message",
    [
        (None, [], "--tiling release-code needs --release-repo DIR"),
        ("empty", [], "has no models/modeling_vae.py"),
        ("broken", [], "could not import"),
        ("no-groups", ["--small"], "cannot run with --small: the released CVVAEModel takes no norm_num_groups"),
    ],
)
def test_vae_speed_release_code_refuses_a_missing_or_unusable_release(tmp_path, capsys, repo, argv, message):
    if repo == "empty":
        (tmp_path / "empty").mkdir()
    elif repo == "broken":
        fake_release(tmp_path / "broken", "import a_module_that_is_not_there\n")
    elif repo == "no-groups":
        fake_release(tmp_path / "no-groups", "class CVVAEModel:\n    def __init__(self, ch=128):\n        pass\n")
    argv = ["--device", "cpu", "--tiling", "release-code", "off", "--out", str(tmp_path / "out"), *argv]
    if repo:
        argv += ["--release-repo", str(tmp_path / repo)]
    with pytest.raises(SystemExit) as stop:
        vae_speed.main(argv)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()  # stopped before any work


@slow
def test_vae_speed_times_the_released_code_next_to_ours(tmp_path):
    """The release's own CVVAEModel (a clone named by CVVAE_RELEASE_REPO) at full width, with our weights."""
    repo = os.environ.get("CVVAE_RELEASE_REPO")
    if not repo or not (Path(repo) / "models" / "modeling_vae.py").is_file():
        pytest.skip("set CVVAE_RELEASE_REPO to a clone of https://github.com/AILab-CVC/CV-VAE")
    argv = ["--device", "cpu", "--cases", "9x16x16", "--repeats", "1", "--no-warmup", "--release-repo", repo]
    vae_speed.main(argv + ["--tiling", "release-code", "off", "--dtypes", "fp32", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "vae_speed.json").read_text())["rows"]
    assert [(r["work"], r["tiling"]) for r in rows] == [
        ("encode", "release-code"),
        ("encode", "off"),
        ("decode", "release-code"),
        ("decode", "off"),
    ]
    for release, ours in (rows[0:2], rows[2:4]):
        assert release["attention"] and "attention" not in ours
        assert release["max_abs_err"] < 1e-4 and ours["max_abs_err"] == 0  # the same network, the same weights
        assert release["seconds"] > 0 and release["tflop"] > 0 and release["tflops_per_s"] > 0
    report = (tmp_path / "vae_speed.md").read_text()
    assert "| encode | 9 | 16x16 | fp32 | release-code | eager |" in report
    assert "relative to the `release-code` row" in report
    baselines = [line for line in report.splitlines() if "| release-code |" in line]
    assert len(baselines) == 2 and all(" | 1.00x | " in line for line in baselines)  # each its own baseline


@pytest.mark.parametrize("has_bf16, cpu", [(True, ["fp32", "bf16"]), (False, ["fp32"])])
def test_vae_speed_times_our_default_precision_next_to_the_release_one(monkeypatch, has_bf16, cpu):
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: has_bf16)
    assert vae_speed.default_dtypes("cpu", small=False) == cpu  # fp32 is the release's precision on a CPU
    assert vae_speed.default_dtypes("cpu", small=True) == ["fp32"]
    assert vae_speed.default_dtypes("cuda", small=False) == ["bf16", "fp16"]


def test_vae_speed_relates_each_row_to_the_release_at_its_own_precision(tmp_path):
    def row(tiling, dtype, seconds):
        return dict(work="encode", frames=9, height=16, width=16, dtype=dtype, tiling=tiling, variant="eager",
                    seconds=seconds, fps=9 / seconds, peak_gib=0.0, tflop=1.0, tflops_per_s=1 / seconds)  # fmt: skip

    rows = [row("release-code", "fp32", 4.0), row("release-code", "bf16", 2.5), row("default", "bf16", 2.0)]
    vae_speed.write_reports(rows, argparse.Namespace(out=tmp_path, repeats=1, small=False, device="cpu"))
    ours = next(line for line in (tmp_path / "vae_speed.md").read_text().splitlines() if "| default |" in line)
    assert " | 0.80x | 0.50x | " in ours  # against the release in bf16, and in fp32 (its precision on a CPU)


def test_conv_layers_prints_the_machine_rate_and_each_layer_against_its_direct_form(capsys):
    from benchmarks import conv_layers

    w = torch.zeros(6, 5, 3, 3, 3)
    assert conv_layers.conv_gflop(torch.zeros(1, 6, 2, 4, 4), w) == 2 * (6 * 2 * 4 * 4) * (5 * 27) / 1e9
    conv_layers.main(["--frames", "5", "--size", "16", "--repeats", "1", "--ways", "phases", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.startswith("fp32 4096x4096 matrix product: ") and " GFLOP/s" in out.splitlines()[0]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| upsample")]
    assert len(rows) == 3 and all(row[2] == "phases" for row in rows)  # the three upsamplers
    assert all(float(row[-1].rstrip(" |")) < 1e-5 for row in rows)  # phases equal the direct form


def test_vae_speed_a_row_that_runs_out_of_memory_while_built_is_reported_alone(monkeypatch):
    monkeypatch.setattr(vae_speed, "time_once", lambda model, x, case, device: (1.0, 2.0, x))
    monkeypatch.setattr(vae_speed, "tiling_report", lambda model: {})

    def too_big():  # the FLOP count while building runs out of memory
        raise torch.OutOfMemoryError("out of memory")

    results = vae_speed.time_rows([too_big, lambda: ("a", "a")], None, "cuda", repeats=1, warmup=False)
    assert results == [None, (1.0, 2.0, "a", {})]
