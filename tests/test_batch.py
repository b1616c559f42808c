"""Batch generation: resume, failure isolation, summary, bad jobs files (tiny preset, CPU)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from app.batch import main


def _jobs(tmp_path, lines):
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def test_batch_isolates_failures_and_resumes(tmp_path, capsys):
    Image.fromarray(np.full((48, 80, 3), 120, np.uint8)).save(tmp_path / "img.png")
    whole = (tmp_path / "img.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(whole[:60])  # a sound header (checked up front), no pixels when its job runs
    jobs = _jobs(
        tmp_path,
        [
            {"id": "good1", "mode": "i2v", "image": "img.png", "num_latent_frames": 2, "seed": 1},
            {"id": "lost", "mode": "i2v", "image": "broken.png"},
            {"id": "good2", "mode": "i2v", "image": "img.png", "num_latent_frames": 2, "fps": 24},
        ],
    )
    out = tmp_path / "out"
    rc = main([str(jobs), "--out-dir", str(out), "--preset", "tiny", "--quiet"])
    printed = capsys.readouterr()
    assert rc == 2  # a job failed on bad input; the others still ran
    assert "batch: 2 done, 0 skipped, 1 failed" in printed.out and "job lost failed" in printed.err
    assert sorted(p.name for p in out.iterdir()) == [
        "good1.json",
        "good1.mp4",
        "good2.json",
        "good2.mp4",
        "results.jsonl",
    ]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["id"]: r["status"] for r in results} == {"good1": "done", "lost": "failed", "good2": "done"}
    assert "broken.png" in next(r["error"] for r in results if r["id"] == "lost")
    assert json.loads((out / "good2.json").read_text())["fps"] == 24

    rc = main([str(jobs), "--out-dir", str(out), "--preset", "tiny", "--quiet"])  # resume
    printed = capsys.readouterr().out
    assert "skipping 2 finished job(s): good1, good2" in printed
    assert "batch: 0 done, 2 skipped, 1 failed" in printed and rc == 2


def test_bad_jobs_files_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    cases = [
        (["{not json"], "not valid JSON"),
        ([{"id": "a", "mode": "t2v", "prompt": "x"}, {"id": "a", "mode": "t2v", "prompt": "y"}], "duplicate id"),
        ([{"id": "../x", "mode": "t2v", "prompt": "x"}], "id"),
        ([{"id": "a", "mode": "t2v", "prompt": "x", "colour": "red"}], "unknown setting"),
        ([{"id": "a", "mode": "dance"}], "mode"),
        (
            [{"id": "a", "mode": "t2v", "prompt": "x"}, {"id": "b", "mode": "i2v", "image": "missing.png"}],
            "not a file",
        ),
    ]
    for lines, match in cases:
        rc = main([str(_jobs(tmp_path, lines)), "--out-dir", out, "--preset", "tiny", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and match in err[0], (lines, err)
    rc = main([str(tmp_path / "none.jsonl"), "--out-dir", out, "--preset", "tiny"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
