"""How close tiled encode/decode come to whole-clip results, next to the release's tiling (CPU is fine).

    python -m benchmarks.tiling_accuracy --model nano --frames 33 --size 96 160
    python -m benchmarks.tiling_accuracy --model random --frames 33 --size 96 160

Encoder and decoder are measured apart: tiled encode of the clip against the whole-clip latents, and
tiled decode of the whole-clip latents against the whole-clip decode (mean absolute difference), at
the same window and tile settings for

- ``release``: the released implementation's algorithm, rewritten here from its description
  (temporal chunks with a one-frame overlap and hard cuts, spatial tiles blended by one-sided ramps
  in raster order, GroupNorm statistics per tile, no context beyond a tile);
- ours with ``norm="tile"`` (per-box statistics), ``"pooled"`` (the default) and ``"exact"``, with
  the settings' halos.

``--model random`` is a small model of the released structure with random weights (chaotic: every
difference is amplified), ``nano`` the small trained model shipped in ``cvvae/weights/nano``. Seconds are CPU
seconds for the whole clip and each tiled run (one thread); "work" is that of the full-resolution
stages relative to the whole clip (``cvvae.tiling.work``: boxes with their halos, times passes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from cvvae import CVVAEModel
from cvvae.loading import load_vae
from cvvae.tiling import work
from cvvae.video import frames_to_tensor, read_video

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "assets" / "examples" / "coffee_pan.mp4"


# ----------------------------------------------------------------------------- the release's algorithm


def _origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins 0, stride, ... up to the first tile that reaches the end."""
    out = [0]
    while out[-1] + tile < length:
        out.append(out[-1] + stride)
    return out


def _blend_stitch(tiles: list[list[torch.Tensor]], overlap: int, stride: int) -> torch.Tensor:
    """Raster-order one-sided ramps (the already blended neighbour wins the first row), then crop and stitch."""
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            if i > 0:
                up = tiles[i - 1][j]
                o = min(overlap, up.shape[3], t.shape[3])
                for k in range(o):
                    t[:, :, :, k] = up[:, :, :, up.shape[3] - o + k] * (1 - k / o) + t[:, :, :, k] * (k / o)
            if j > 0:
                left = row[j - 1]
                o = min(overlap, left.shape[4], t.shape[4])
                for k in range(o):
                    t[:, :, :, :, k] = left[:, :, :, :, left.shape[4] - o + k] * (1 - k / o) + t[:, :, :, :, k] * (
                        k / o
                    )
    rows = []
    for i, row in enumerate(tiles):
        last_row = i == len(tiles) - 1
        cols = [
            t[:, :, :, : None if last_row else stride, : None if j == len(row) - 1 else stride]
            for j, t in enumerate(row)
        ]
        rows.append(torch.cat(cols, dim=4))
    return torch.cat(rows, dim=3)


def release_encode(model: CVVAEModel, x: torch.Tensor, frames: int, tile: int, ratio: float) -> torch.Tensor:
    s, t = frames, x.shape[2]
    chunks = []
    for r in range(max(1, math.ceil((t - 1) / s))):
        xc = x[:, :, r * s : r * s + s + 1]
        lt, sp = tile // 8, round(tile * (1 - ratio))
        ol = round(lt * ratio)
        tiles = [
            [model.encoder(xc[:, :, :, i : i + tile, j : j + tile]) for j in _origins(x.shape[4], tile, sp)]
            for i in _origins(x.shape[3], tile, sp)
        ]
        m = _blend_stitch(tiles, ol, lt - ol)
        chunks.append(m if r == 0 else m[:, :, 1:])
    return torch.cat(chunks, dim=2).chunk(2, dim=1)[0]  # the mean


def release_decode(model: CVVAEModel, z: torch.Tensor, frames: int, tile: int, ratio: float) -> torch.Tensor:
    s, n = frames // 4, z.shape[2]
    chunks = []
    for r in range(max(1, math.ceil((n - 1) / s))):
        zc = z[:, :, r * s : r * s + s + 1]
        lt = tile // 8
        sl, op = round(lt * (1 - ratio)), round(tile * ratio)
        tiles = [
            [model.decoder(zc[:, :, :, i : i + lt, j : j + lt]) for j in _origins(z.shape[4], lt, sl)]
            for i in _origins(z.shape[3], lt, sl)
        ]
        y = _blend_stitch(tiles, op, tile - op)
        chunks.append(y if r == 0 else y[:, :, 1:])
    return torch.cat(chunks, dim=2)


# ----------------------------------------------------------------------------- measurement


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def build(name: str) -> CVVAEModel:
    if name == "random":
        torch.manual_seed(0)  # the released structure (4 levels, 2 res blocks, both attentions), small widths
        return CVVAEModel(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=2, norm_num_groups=8).eval()
    return load_vae(name).float()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nano", help="nano, random, or a CV-VAE folder")
    parser.add_argument("--video", type=Path, default=CLIP)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 160))
    parser.add_argument("--frames-per-window", type=int, default=8)
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--temporal-halo", type=int, default=None, help="decoder's temporal halo (default: 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build(args.model)
    x = frames_to_tensor(read_video(args.video, num_frames=args.frames, size=tuple(args.size))[0])
    x = model._pad(x)
    z_ref, enc_s = timed(lambda: model.encode(x, tiling={"enabled": False}).latent_dist.mean)
    y_ref, dec_s = timed(lambda: model.decode(z_ref, tiling={"enabled": False}).sample)
    fpw, tile, ov = args.frames_per_window, args.tile_size, args.overlap
    runs = {
        "release": (
            lambda: release_encode(model, x, fpw, tile, ov),
            lambda: release_decode(model, z_ref, fpw, tile, ov),
        )
    }
    base = dict(enabled=True, frames_per_window=fpw, tile_size=tile, overlap=ov)
    if args.temporal_halo is not None:
        base["temporal_halo"] = args.temporal_halo
    for norm in ("tile", "pooled", "exact"):
        s = model.tiling.replace(**base, norm=norm)
        runs[f"ours, {norm}"] = (
            lambda s=s: model.encode(x, tiling=s).latent_dist.mean,
            lambda s=s: model.decode(z_ref, tiling=s).sample,
        )
    latents = tuple(z_ref.shape[2:])
    rows = []
    for name, (enc, dec) in runs.items():
        z, es = timed(enc)
        y, ds = timed(dec)
        s = model.tiling.replace(**base, norm=name.split(", ")[-1]) if name != "release" else None
        rows.append(dict(run=name, encode=(z - z_ref).abs().mean().item(), decode=(y - y_ref).abs().mean().item(),
                         encode_s=es, decode_s=ds, encode_work=work(s, latents, False) if s else None,
                         decode_work=work(s, latents, True) if s else None))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    rel = rows[0]
    s = model.tiling.replace(**base)
    print(f"\n{args.model}: clip {tuple(x.shape)}, mean |z| {z_ref.abs().mean():.3f}, "
          f"mean |x| {y_ref.abs().mean():.3f}; windows of {fpw} frames, tiles of {tile} px, overlap {ov}; "
          f"halo {s.halo} latent px, temporal halo {s.temporal_halo} latent frames; "
          f"whole clip {enc_s:.1f} s encode, {dec_s:.1f} s decode")  # fmt: skip
    print("| tiling | encode error | vs release | decode error | vs release | encode s (work) | decode s (work) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def cost(seconds, work):
        return f"{seconds:.1f}" + (f" ({work:.1f}x)" if work else "")

    for r in rows:
        print(f"| {r['run']} | {r['encode']:.5f} | {r['encode'] / rel['encode']:.3f}x | {r['decode']:.5f} | "
              f"{r['decode'] / rel['decode']:.3f}x | {cost(r['encode_s'], r['encode_work'])} | "
              f"{cost(r['decode_s'], r['decode_work'])} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, whole=dict(encode_s=enc_s, decode_s=dec_s)), indent=2))


if __name__ == "__main__":
    main()
