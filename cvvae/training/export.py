"""``python -m cvvae.training.export CVVAE_DIR VAE2D_DIR OUT_DIR``: fp16 copies for shipping (cvvae/weights/nano)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def export_fp16(cvvae_dir: str | Path, vae2d_dir: str | Path, out: str | Path) -> None:
    from diffusers import AutoencoderKL

    from ..loading import model_class

    out = Path(out)
    model_class(cvvae_dir).from_pretrained(cvvae_dir).to(torch.float16).save_pretrained(out / "cvvae")
    AutoencoderKL.from_pretrained(vae2d_dir).to(torch.float16).save_pretrained(out / "vae2d")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cvvae_dir")
    p.add_argument("vae2d_dir")
    p.add_argument("out_dir")
    args = p.parse_args(argv)
    export_fp16(args.cvvae_dir, args.vae2d_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
