"""The CV-VAE core's convolutions, one way against another, at the released model's shapes.

    python -m benchmarks.conv_layers --threads 2                 # 33x64x64 clip, full widths
    python -m benchmarks.conv_layers --threads 2 --frames 9 --size 32   # quicker
    python -m benchmarks.conv_layers --device cuda --dtype bf16 --frames 33 --size 576   # on a GPU

First it prints the device's rate on a 4096x4096 matrix product (the practical peak to read the rest
against); then each row times one layer computed as written (``direct``, with its GFLOP/s) and as an
alternative, in one process, median of ``--repeats`` after a warm-up, with the alternative's error
relative to the direct output:

- ``upsample, phases``: the decoder's upsampler as 2x2 phase kernels on the low-resolution frames
  (what ``cvvae.blocks.Upsample`` does) against nearest x2 then the 3x3x3 conv (the release);
- ``channels-last``: the same conv with NDHWC activations and weights;
- ``frames as batch``: a per-frame 3x3 conv as ``conv2d`` on ``[(B T), C, H, W]`` (the release's way);
- ``winograd``: F(2x2, 3x3) in space (2.25x fewer multiplications) written with torch operations:
  the transforms are separate memory-bound passes, which is why the library does not use it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cvvae.blocks import phase_kernel, upsampled_conv
from cvvae.devices import DTYPES


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (oneDNN builds its kernels for the shape, cuDNN picks its algorithms)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize() if out.is_cuda else None
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize() if out.is_cuda else None
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def matmul_rate(device: str, dtype: torch.dtype, repeats: int, n: int = 4096) -> float:
    """GFLOP/s of an ``n x n`` matrix product on ``device`` in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    sec, _ = timed(lambda: a @ b, repeats)
    return 2 * n**3 / sec / 1e9


def conv_gflop(out: torch.Tensor, w: torch.Tensor) -> float:
    """Multiply-adds x 2 of a conv with weight ``[O, I, kt, kh, kw]`` producing ``out``, in GFLOP."""
    return 2 * out.numel() * w[0].numel() / 1e9


def nearest_then_conv(x, w, b):
    return F.conv3d(F.pad(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"), (1, 1, 1, 1)), w, b)


def frames_as_batch(x, w, b):
    bsz, c, t, h, ww = x.shape
    y = F.conv2d(x.transpose(1, 2).reshape(bsz * t, c, h, ww), w[:, :, 0], b, padding=1)  # ((B T), O, H, W)
    return y.reshape(bsz, t, -1, h, ww).transpose(1, 2)


def winograd_weights(w: torch.Tensor) -> torch.Tensor:
    """``[O, C, kt, 3, 3] -> [16, kt, O, C]``: G g G^T per temporal tap."""
    g = w.new_tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = torch.einsum("ik,octkl,jl->ijtoc", g, w, g)
    return u.reshape(16, *u.shape[2:]).contiguous()


def _input_rows(d0, d1, d2, d3, out):  # B^T d along one axis
    torch.sub(d0, d2, out=out[0]), torch.add(d1, d2, out=out[1])
    torch.sub(d2, d1, out=out[2]), torch.sub(d1, d3, out=out[3])


def winograd_conv(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3-D conv of ``x`` ``[1, C, T, H, W]`` (zero padding 1 in space, none in time) with F(2x2, 3x3)."""
    _, c, t, h, w = x.shape
    kt, o = u.shape[1], u.shape[2]
    nr, nc = (h + 1) // 2, (w + 1) // 2
    xp = F.pad(x[0], (1, 2 * nc + 1 - w, 1, 2 * nr + 1 - h))  # (C, T, 2 nr + 2, 2 nc + 2)
    rows = xp.new_empty(4, c, t, nr, 2 * nc + 2)
    _input_rows(*(xp[:, :, k : k + 2 * nr : 2] for k in range(4)), rows)
    v = xp.new_empty(4, 4, c, t, nr, nc)
    for i in range(4):
        _input_rows(*(rows[i, ..., k : k + 2 * nc : 2] for k in range(4)), v[i])
    p, tt = nr * nc, t - kt + 1
    v = v.view(16, c, t * p)
    m = torch.bmm(u[:, 0], v[:, :, : tt * p])  # (16, O, T' P)
    for k in range(1, kt):
        m.baddbmm_(u[:, k], v[:, :, k * p : (k + tt) * p])
    m = m.view(4, 4, o, tt, nr, nc)
    s = torch.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])  # A^T m along rows: (2, 4, O, T', nr, nc)
    out = m.new_empty(o, tt, nr, 2, nc, 2)
    for a in range(2):
        out[:, :, :, a, :, 0] = s[a, 0] + s[a, 1] + s[a, 2] + bias.view(o, 1, 1, 1)
        out[:, :, :, a, :, 1] = s[a, 1] - s[a, 2] - s[a, 3] + bias.view(o, 1, 1, 1)
    return out.view(o, tt, 2 * nr, 2 * nc)[:, :, :h, :w].unsqueeze(0)


def layers(frames: int, size: int) -> list[tuple[str, tuple, tuple]]:
    """(name, input shape, weight shape) of the released model's layers on a clip of ``frames`` x ``size``^2."""
    lat, s = 1 + (frames - 1) // 4, size
    mid = 1 + (frames - 1) // 2
    return [
        ("upsample", (1, 512, lat + 2, s // 8, s // 8), (1024, 512, 3, 3, 3)),  # temporal, to 1/4 size
        ("upsample", (1, 512, mid + 2, s // 4, s // 4), (512, 512, 3, 3, 3)),  # spatial only, to 1/2 size
        ("upsample", (1, 256, mid + 2, s // 2, s // 2), (512, 256, 3, 3, 3)),  # temporal, to full size
        ("conv 3x3x3", (1, 128, frames + 2, s, s), (128, 128, 3, 3, 3)),
        ("conv 3x3x3", (1, 512, mid + 2, s // 4, s // 4), (512, 512, 3, 3, 3)),
        ("frame conv 3x3", (1, 128, frames, s, s), (128, 128, 1, 3, 3)),
    ]


def compare(name, x, w, b, repeats, only=None) -> list[dict]:
    rows = []
    if name == "upsample":
        direct = lambda: nearest_then_conv(x, w, b)  # noqa: E731
        kernel = phase_kernel(w)
        ways = {"phases": lambda: upsampled_conv(x, kernel, b, "zeros")}
    else:
        pad = (0, 1, 1)
        direct = lambda: F.conv3d(x, w, b, padding=pad)  # noqa: E731
        xc, wc = (v.contiguous(memory_format=torch.channels_last_3d) for v in (x, w))
        ways = {"channels-last": lambda: F.conv3d(xc, wc, b, padding=pad)}
        if w.shape[2] == 1:
            ways["frames as batch"] = lambda: frames_as_batch(x, w, b)
        u = winograd_weights(w)
        ways["winograd"] = lambda: winograd_conv(x, u, b)
    ways = {k: v for k, v in ways.items() if not only or k in only}
    if not ways:
        return rows
    base, ref = timed(direct, repeats)
    for way, fn in ways.items():
        sec, out = timed(fn, repeats)
        err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        rows.append(dict(layer=name, input=list(x.shape), weight=list(w.shape), way=way, direct_s=base, s=sec,
                         direct_gflops=conv_gflop(ref, w) / base, speedup=base / sec, max_rel_err=err))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=64, help="frame height and width (multiple of 8)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--ways", nargs="+", default=None, help="only these alternatives (e.g. phases)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        rate = matmul_rate(args.device, dtype, args.repeats)
        print(f"{args.dtype} 4096x4096 matrix product: {rate:.0f} GFLOP/s\n")
        print("| layer | input | way | direct ms | direct GFLOP/s | ms | speed-up | max rel. error |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, xs, ws in layers(args.frames, args.size):
            x, w = torch.randn(xs, generator=g), torch.randn(ws, generator=g) / (ws[1] * 27) ** 0.5
            b = torch.randn(ws[0], generator=g)
            x, w, b = (v.to(args.device, dtype) for v in (x, w, b))
            for r in compare(name, x, w, b, args.repeats, args.ways):
                shape = "x".join(map(str, r["input"][1:]))
                direct = f"{r['direct_s'] * 1e3:.0f} | {r['direct_gflops']:.0f}"
                print(f"| {r['layer']} | {shape} | {r['way']} | {direct} | {r['s'] * 1e3:.0f} | {r['speedup']:.2f}x | "
                      f"{r['max_rel_err']:.1e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
