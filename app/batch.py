"""Batch generation: ``python -m app.batch JOBS.jsonl --out-dir DIR [--preset ...]``.

One job per line: ``{"id": "cat1", "mode": "t2v", "prompt": "a cat", "seed": 3}`` or
``{"id": "beach", "mode": "i2v", "image": "beach.png", "num_latent_frames": 14}``; other keys are
``GenerationSettings`` fields. Relative image paths are looked up next to the jobs file first.
Each job writes ``DIR/<id>.mp4`` + ``DIR/<id>.json`` atomically; a job whose two files exist is
skipped (so an interrupted batch resumes); every outcome is appended to ``DIR/results.jsonl``.
Several GPUs: ``accelerate launch -m app.batch JOBS.jsonl --out-dir DIR``: accelerate's
``PartialState.split_between_processes`` gives each process its share of the pending jobs.
Exit code: 0 when no job failed; 2 for a bad jobs file or when the failures were all bad input;
1 when a job failed unexpectedly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from cvvae.errors import InputError, UserError

RESULTS = "results.jsonl"
MAX_JOBS_BYTES = 100_000_000
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def read_jobs(path: str | Path) -> list[tuple[str, object]]:
    """Parse the jobs file into ``(id, GenerationSettings)``; InputError (exit 2) on any malformed line."""
    from cvvae.pipelines.api import GenerationSettings

    path = Path(path)
    if not path.is_file():
        raise InputError(f"jobs file {path} does not exist")
    if path.stat().st_size > MAX_JOBS_BYTES:
        raise InputError(f"jobs file {path} is larger than {MAX_JOBS_BYTES:,} bytes; split it")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line} is not UTF-8 text (byte {err.start}); save the jobs file as UTF-8") from err
    jobs, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{n} is not valid JSON ({err.msg})") from err
        if not isinstance(data, dict):
            raise InputError(f"{path}:{n} must be a JSON object with at least id and mode")
        job_id = str(data.pop("id", ""))
        if not ID_PATTERN.fullmatch(job_id):
            raise InputError(f"{path}:{n}: id {job_id!r} must be 1-128 letters, digits, '.', '_' or '-'")
        if job_id in seen:
            raise InputError(f"{path}:{n}: duplicate id {job_id!r}")
        seen.add(job_id)
        if data.get("mode") not in ("i2v", "t2v"):
            raise InputError(f"{path}:{n}: mode must be 'i2v' or 't2v', got {data.get('mode')!r}")
        if isinstance(data.get("image"), str) and not Path(data["image"]).is_absolute():
            beside = path.parent / data["image"]
            data["image"] = str(beside) if beside.exists() else data["image"]
        try:
            jobs.append((job_id, GenerationSettings.from_dict(data).validate()))
        except (InputError, TypeError) as err:
            raise InputError(f"{path}:{n}: {err}") from err
    if not jobs:
        raise InputError(f"{path} holds no jobs (one JSON object per line)")
    return jobs


def check_jobs(jobs: list[tuple[str, object]], preset: str) -> None:
    """Every job's settings with the preset's defaults, its image (the header: readable, within the size
    limits) and adapter folder: all checked before the first job runs."""
    from cvvae.pipelines.adapters import load_adapter_info
    from cvvae.pipelines.presets import get_preset
    from cvvae.video import read_image

    p = get_preset(preset)
    for job_id, settings in jobs:
        try:
            settings.resolved(p).validate()
            if settings.image is not None:
                if not Path(settings.image).is_file():
                    raise InputError(f"image {settings.image} is not a file")
                read_image(settings.image, decode=False)  # its header: readable, within the size limits
            if settings.adapter:
                load_adapter_info(settings.adapter)
        except UserError as err:
            raise InputError(f"job {job_id}: {err}") from err


def make_out_dir(out_dir: Path) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # under a file, a file itself, not writable
        raise InputError(f"--out-dir {out_dir} cannot be made ({err.strerror}); give a writable folder") from err
    return out_dir


def is_finished(out_dir: Path, job_id: str) -> bool:
    """A job is finished when its video and a readable sidecar exist (both are written atomically)."""
    video, side = out_dir / f"{job_id}.mp4", out_dir / f"{job_id}.json"
    if not (video.is_file() and side.is_file()):
        return False
    try:
        return isinstance(json.loads(side.read_text(encoding="utf-8")), dict)
    except (OSError, json.JSONDecodeError):
        return False


def record(out_dir: Path, entry: dict) -> None:
    """Append one outcome line to results.jsonl (one write call, so lines from processes do not mix)."""
    entry = {**entry, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with open(out_dir / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


def run_job(job_id: str, settings, out_dir: Path, options: dict) -> dict:
    """Generate one job; never raises: the outcome (done or failed with its error) is returned."""
    from cvvae.pipelines.api import generate

    t0 = time.perf_counter()
    try:
        # an unfinished job may have left one of its two files: it is redone
        result = generate(settings, out_dir / f"{job_id}.mp4", progress=False, overwrite=True, **options)
    except Exception as err:  # noqa: BLE001 - one bad job must not stop the batch
        if not isinstance(err, UserError):
            traceback.print_exc()
        message = " ".join(str(err).split()) or type(err).__name__
        return {
            "id": job_id,
            "status": "failed",
            "error": f"{type(err).__name__}: {message}",
            "user_error": isinstance(err, UserError),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    return {
        "id": job_id,
        "status": "done",
        "video": str(result.video_path),
        "frames": result.frames,
        "seconds": round(result.seconds, 3),
    }


def run_batch(
    jobs_path, out_dir, preset: str = "svd-xt", device: str | None = None, progress: bool = True, **options
) -> dict:
    """Run every unfinished job of ``jobs_path`` into ``out_dir``; returns the summary counts."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    jobs = read_jobs(jobs_path)
    check_jobs(jobs, preset)  # one bad job stops the batch before any work
    if device is not None:
        from cvvae.devices import resolve_device

        resolve_device(device)
    out_dir = make_out_dir(Path(out_dir))
    # on CPUs, processes launched together talk over gloo only when told they are CPU processes
    use_cpu = str(device or "").startswith("cpu") or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=use_cpu)
    finished = [j for j, _ in jobs if is_finished(out_dir, j)]
    pending = [(j, s) for j, s in jobs if j not in set(finished)]
    if finished and state.is_main_process:
        shown = ", ".join(finished[:20]) + (f", ... ({len(finished) - 20} more)" if len(finished) > 20 else "")
        print(f"skipping {len(finished)} finished job(s): {shown}")
    if device is None and state.num_processes > 1:
        device = str(state.device)
    options = {**options, "preset": preset, "device": device}
    outcomes = []
    with state.split_between_processes(pending) as mine:
        bar = tqdm(
            mine, desc=f"jobs[{state.process_index}]", unit="job", disable=not progress, position=state.process_index
        )
        for job_id, settings in bar:
            outcome = {**run_job(job_id, settings, out_dir, options), "process": state.process_index}
            record(out_dir, outcome)
            if outcome["status"] == "failed":
                tqdm.write(f"job {job_id} failed: {outcome['error']}", file=sys.stderr)
            outcomes.append(outcome)
    outcomes = gather_object(outcomes) if state.num_processes > 1 else outcomes
    summary = {
        "done": sum(o["status"] == "done" for o in outcomes),
        "skipped": len(finished),
        "failed": sum(o["status"] == "failed" for o in outcomes),
        "failed_unexpectedly": sum(o["status"] == "failed" and not o["user_error"] for o in outcomes),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if state.is_main_process:
        print(
            f"batch: {summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
            f"in {summary['seconds']} s (outcomes in {out_dir / RESULTS})"
        )
    if state.num_processes > 1:  # leave the process group together: a group left to the interpreter's exit can
        import torch.distributed as dist  # abort the process from gloo's threads ("terminate called ...")

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return summary


def build_parser() -> argparse.ArgumentParser:
    from cvvae.cli import add_pipeline_options
    from cvvae.commands import Parser
    from cvvae.pipelines.presets import PRESETS

    p = Parser(prog="python -m app.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", help="JSON Lines file: one job per line (id, mode, prompt or image, settings)")
    p.add_argument("--out-dir", required=True, help="folder for <id>.mp4, <id>.json and results.jsonl")
    p.add_argument("--preset", choices=sorted(PRESETS), default="svd-xt", help="models and defaults for every job")
    add_pipeline_options(p)  # --device (each process takes its own GPU under accelerate), --component, ...
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    from cvvae.commands import run_command
    from cvvae.loading import RANDOM_WEIGHTS_NOTICE
    from cvvae.pipelines.presets import parse_components

    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.preset == "tiny":
            print(f"note: {RANDOM_WEIGHTS_NOTICE}")
        summary = run_batch(
            args.jobs,
            args.out_dir,
            preset=args.preset,
            device=args.device,
            progress=not args.quiet,
            cpu_offload=args.cpu_offload,
            cvvae_subfolder=args.cvvae_subfolder,
            components=parse_components(args.component),
        )
        if summary["failed_unexpectedly"]:
            return 1
        return 2 if summary["failed"] else 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
