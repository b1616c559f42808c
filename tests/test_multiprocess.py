"""Scale-out, tested on this machine: batch generation and fine-tuning under ``accelerate launch`` with
2 CPU processes (torch.distributed with gloo), against the same work in one process.

(``accelerate launch --cpu`` starts a single process; ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``
starts the processes through torchrun and they talk over gloo.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import IMAGE, REPO
from safetensors.torch import load_file


def launch(*args: str, cwd) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(port), "-m", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["ACCELERATE_USE_CPU"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_batch_jobs_split_between_two_processes_and_resume(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"id": f"j{i}", "mode": "i2v", "image": str(IMAGE), "num_latent_frames": 2, "seed": i} for i in range(5)]
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    launch("app.batch", str(jobs), "--out-dir", str(out), "--preset", "tiny", "--quiet", cwd=tmp_path)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == [f"j{i}" for i in range(5)]  # every job once, none twice
    assert {r["process"] for r in results} == {0, 1}  # both processes took jobs
    assert all(r["status"] == "done" for r in results) and len(list(out.glob("*.mp4"))) == 5
    proc = launch("app.batch", str(jobs), "--out-dir", str(out), "--preset", "tiny", "--quiet", cwd=tmp_path)
    assert "5 skipped" in proc.stdout and len((out / "results.jsonl").read_text().splitlines()) == 5


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    from test_finetune import BASE, _write_clips

    from finetune.config import load_config
    from finetune.data import build_cache
    from finetune.models import load_encoders, model_ids
    from finetune.trainer import train

    _write_clips(tmp_path / "videos")
    cfg = load_config(None, [*BASE, f"data.videos={tmp_path / 'videos'}", f"data.cache_dir={tmp_path / 'cache'}"])
    build_cache(cfg.data, load_encoders(cfg.model), model_ids(cfg.model))
    common = [*BASE, f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2", "train.checkpoint_every=1"]
    common += ["train.mode=lora+conv_out", "lora.rank=2", "train.learning_rate=1e-3"]
    one = train(load_config(None, [*common, "train.batch_size=2", f"train.output_dir={tmp_path / 'one'}"]))
    other = train(load_config(None, [*common, "train.batch_size=1", f"train.output_dir={tmp_path / 'other'}"]))
    out = launch(
        "finetune", "train", *common, "train.batch_size=1", f"train.output_dir={tmp_path / 'two'}", cwd=tmp_path
    )
    two = json.loads(out.stdout.strip().splitlines()[-1])
    # the last step's loss (over the whole global batch) follows from the first step's update: with the two
    # processes' gradients averaged it is the loss of one process with the same global batch
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-3)
    assert other["loss"] != pytest.approx(one["loss"], rel=0.05)
    weights = [load_file(str(tmp_path / n / "adapter" / "adapter.safetensors")) for n in ("one", "two", "other")]

    def gap(a: dict, b: dict) -> float:  # relative distance of all trained tensors together
        return (sum((a[k] - b[k]).square().sum() for k in b) / sum(b[k].square().sum() for k in b)).sqrt().item()

    assert weights[0].keys() == weights[1].keys() and gap(weights[1], weights[0]) < 0.1 * gap(weights[2], weights[0])
    ckpt = tmp_path / "two" / "checkpoint-2"
    files = sorted(p.name for p in ckpt.iterdir())  # written once, with both processes' random states
    assert files == ["adapter", "complete.json", "optimizer.safetensors", "rng_0.safetensors", "rng_1.safetensors",
                     "state.json", "trainable.safetensors"]  # fmt: skip
