"""How close tiled encode/decode come to whole-clip results (CPU is fine).

    python -m benchmarks.tiling_accuracy --model assets/nano/cvvae --frames 41 --size 96 160

Encoder and decoder are measured apart: tiled encode of the clip against the whole-clip latents, and
tiled decode of the whole-clip latents against the whole-clip decode (mean and max absolute
difference), for per-box GroupNorm statistics (``norm="tile"``, as the release) and statistics pooled
over the whole clip (``norm="pooled"``, the default). Use trained weights: random ones are chaotic and
amplify every difference. The input is a real clip (``--video``; default: the shared sample clip,
else the repo's own ``assets/examples/coffee_pan.mp4``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cvvae import CVVAEModel
from cvvae.video import frames_to_tensor, read_video

REPO = Path(__file__).resolve().parents[1]
SHARED_CLIP = REPO.parent / "shared" / "data" / "videos" / "19216241-hd_1280_720_30fps.mp4"
OWN_CLIP = REPO / "assets" / "examples" / "coffee_pan.mp4"
SETTINGS = [
    ("windows of 16 frames", dict(frames_per_window=16, tile_size=None)),
    ("windows of 8 frames", dict(frames_per_window=8, tile_size=None)),
    ("tiles of 64 px, overlap 0.25", dict(frames_per_window=None, tile_size=64, overlap=0.25)),
    ("windows 16 + tiles 64 px", dict(frames_per_window=16, tile_size=64, overlap=0.25)),
]


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return dict(mean=round(d.mean().item(), 5), max=round(d.max().item(), 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "assets" / "nano" / "cvvae"))
    parser.add_argument("--video", type=Path, default=SHARED_CLIP if SHARED_CLIP.is_file() else OWN_CLIP)
    parser.add_argument("--frames", type=int, default=41)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 160))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = CVVAEModel.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    x = frames_to_tensor(read_video(args.video, num_frames=args.frames, size=tuple(args.size))[0])
    model.disable_tiling()
    z_ref, enc_s = timed(lambda: model.encode(x).latent_dist.mean)
    y_ref, dec_s = timed(lambda: model.decode(z_ref).sample)
    rows = [dict(setting="whole clip", encode_s=round(enc_s, 2), decode_s=round(dec_s, 2))]
    for label, settings in SETTINGS:
        for norm in ("tile", "pooled"):
            model.enable_tiling(**settings, norm=norm)
            z, enc_s = timed(lambda: model.encode(x).latent_dist.mean)
            y, dec_s = timed(lambda: model.decode(z_ref).sample)
            row = dict(setting=label, norm=norm, encode=diff(z, z_ref), decode=diff(y, y_ref))
            row.update(encode_s=round(enc_s, 2), decode_s=round(dec_s, 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    shape = tuple(x.shape)
    print(f"{args.video.name}: input {shape}, |z| mean {z_ref.abs().mean():.3f}, |x| mean {x.abs().mean():.3f}")
    print("| setting | encode, tile stats | encode, pooled | decode, tile stats | decode, pooled |")
    print("| --- | --- | --- | --- | --- |")
    for i in range(1, len(rows), 2):
        tile, pooled = rows[i], rows[i + 1]
        cells = [tile["encode"]["mean"], pooled["encode"]["mean"], tile["decode"]["mean"], pooled["decode"]["mean"]]
        print(f"| {tile['setting']} | " + " | ".join(f"{c:.5f}" for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
