"""Peak host memory (RSS) of ``python -m cvvae reconstruct`` against the clip's length (CPU).

    python -m benchmarks.host_memory --video CV-VAE/data/19216241-hd_1280_720_30fps.mp4 \
        --frames 60 349 --size 64 96

Each length runs in a fresh process (so peaks do not mix) that reads the clip frame by frame, resized
as it is decoded, reconstructs it with ``--model`` and writes an mp4; the process reports its own
peak resident set size. The peak moves by ~0.1 GB from run to run (allocator and thread pools), so
each length runs ``--repeat`` times: the table gives the median and the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cvvae.commands import Parser, run_command
from cvvae.errors import InputError

CHILD = """
import resource, runpy, sys
sys.argv = ["cvvae", *sys.argv[1:]]
try:
    runpy.run_module("cvvae", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_gb(video: Path, frames: int, size: tuple[int, int], model: str, out_dir: Path) -> float:
    out = out_dir / f"rec_{frames}.mp4"
    args = ["reconstruct", str(video), str(out), "--model", model, "--frames", str(frames)]
    args += ["--height", str(size[0]), "--width", str(size[1]), "--overwrite"]
    run = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False)
    if run.returncode == 2:  # bad input (a --model that does not load, ...): its one error line
        errors = [ln.removeprefix("error: ") for ln in run.stderr.splitlines() if ln.startswith("error:")]
        raise InputError(errors[-1] if errors else "reconstruct refused its input")
    if run.returncode:
        raise RuntimeError(f"reconstruct failed:\n{run.stderr[-2000:]}")
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("PEAK_RSS_KB"))
    return int(line.split()[1]) / 2**20  # KB -> GB


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.host_memory", description=__doc__.splitlines()[0])
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--frames", type=_count, nargs="+", default=[60, 349])
    p.add_argument("--size", type=_count, nargs=2, default=(64, 96), metavar=("HEIGHT", "WIDTH"))
    p.add_argument("--model", default="nano")
    p.add_argument("--repeat", type=_count, default=3)
    args = p.parse_args(argv)
    return run_command(lambda: _measure(args))


def _measure(args) -> int:
    from cvvae.video import probe

    probe(args.video)  # a missing or unreadable clip is one error line, before any run
    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            n: [peak_rss_gb(args.video, n, size, args.model, Path(tmp)) for _ in range(args.repeat)]
            for n in args.frames
        }
    print("| frames | peak RSS, median (GB) | range (GB) |\n|---|---|---|")
    for n, gb in runs.items():
        print(f"| {n} | {statistics.median(gb):.3f} | {min(gb):.3f}-{max(gb):.3f} |")
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
