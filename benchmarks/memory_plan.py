"""What the default tiling chooses for a clip on a device of a given size, without the device or the weights.

    python -m benchmarks.memory_plan --frames 97 --size 576 1024 --dtype bf16 --gib 24 --device cuda

Builds the released architecture on ``meta`` tensors and runs :func:`cvvae.tiling.choose` with the device's
free memory set to ``--gib``: the estimated peak of every candidate tried, the choice and its work.
"""

from __future__ import annotations

import argparse
import json
from unittest import mock

import torch

from cvvae import CVVAEModel, memory
from cvvae.devices import DTYPES
from cvvae.tiling import choose


def plan(frames: int, size: tuple[int, int], dtype: torch.dtype, gib: float, device: str) -> dict:
    with torch.device("meta"):
        vae = CVVAEModel().to(dtype)
    h, w = size
    x = torch.empty(1, 3, frames, h, w, dtype=dtype, device="meta")
    z = torch.empty(1, vae.latent_channels, 1 + (frames - 1) // 4, h // 8, w // 8, dtype=dtype, device="meta")
    conv = memory.conv_factor(torch.device(device), dtype)
    with (
        mock.patch.object(memory, "available", lambda _device: int(gib * memory.GiB)),
        mock.patch.object(memory, "conv_factor", lambda _device, _dtype: conv),
    ):
        choose(vae.encoder, x, vae.tiling, False, 2 * vae.latent_channels)
        choose(vae.decoder, z, vae.tiling, True, 3)
    return {"encode": vae.encoder.tiling_choice, "decode": vae.decoder.tiling_choice}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=97)
    parser.add_argument("--size", type=int, nargs=2, default=(576, 1024))
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--gib", type=float, default=24.0, help="free device memory to plan for")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="scratch model to assume")
    args = parser.parse_args(argv)
    result = plan(args.frames, tuple(args.size), DTYPES[args.dtype], args.gib, args.device)
    for stage, c in result.items():
        print(f"{stage}: {c['chosen']} (work {c['work']}x): {c['reason']}; tried {json.dumps(c['tried'])}")


if __name__ == "__main__":
    main()
