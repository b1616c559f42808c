"""How close tiled encode/decode come to whole-clip results (CPU is fine).

    python -m benchmarks.tiling_accuracy [--model DIR] [--frames 33] [--size 96 128]

Without --model it uses the parity fixture's random weights (../shared/fixtures/cvvae_parity).
Inputs are a smooth moving pattern (random weights, so only the *difference* matters).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cvvae import CVVAEModel

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cvvae_parity"


def moving_pattern(frames: int, height: int, width: int) -> torch.Tensor:
    t = torch.arange(frames)[:, None, None]
    y = torch.arange(height)[None, :, None]
    x = torch.arange(width)[None, None, :]
    chans = [torch.sin((x + 2 * t) / (5 + c) + y / (7 + 2 * c)) for c in range(3)]
    return torch.stack(chans)[None].float() * 0.8  # (1, 3, T, H, W)


def run(model, x, settings):
    if settings is None:
        model.disable_tiling()
    else:
        model.enable_tiling(**settings)
    start = time.perf_counter()
    with torch.no_grad():
        z = model.encode(x).latent_dist.mean
        y = model.decode(z).sample
    return z, y, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(FIXTURE))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 96))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CVVAEModel.from_pretrained(args.model).eval()
    x = moving_pattern(args.frames, *args.size)
    z_ref, y_ref, t_ref = run(model, x, None)
    rows = [dict(setting="whole clip", seconds=round(t_ref, 2))]
    for norm in ("tile", "pooled"):
        for label, settings in [
            ("windows of 8 frames", dict(frames_per_window=8, tile_size=None)),
            ("windows of 4 frames", dict(frames_per_window=4, tile_size=None)),
            ("tiles of 32 px", dict(frames_per_window=None, tile_size=32, overlap=0.25)),
            ("windows 8 + tiles 32", dict(frames_per_window=8, tile_size=32, overlap=0.25)),
        ]:
            z, y, sec = run(model, x, dict(settings, norm=norm))
            rows.append(
                row := dict(
                    setting=f"{label}, norm={norm}",
                    latent_max=round((z - z_ref).abs().max().item(), 4),
                    latent_mean=round((z - z_ref).abs().mean().item(), 5),
                    decode_max=round((y - y_ref).abs().max().item(), 4),
                    decode_mean=round((y - y_ref).abs().mean().item(), 5),
                    seconds=round(sec, 2),
                )
            )
            print(row, flush=True)
    print(f"input {tuple(x.shape)}, latent std {z_ref.std():.3f}, output std {y_ref.std():.3f}")
    print("| setting | latent max | latent mean | video max | video mean | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['setting']} | {r.get('latent_max', '')} | {r.get('latent_mean', '')} | "
            f"{r.get('decode_max', '')} | {r.get('decode_mean', '')} | {r['seconds']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
