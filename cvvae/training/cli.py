"""``python -m cvvae.train --config CONFIG.yaml [key=value ...]`` and ``python -m cvvae.train evaluate ...``."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cvvae.train",
        description="Train CV-VAE with latent regularisation (or its small 2-D reference VAE). "
        "Re-running the same command resumes from the newest checkpoint in output_dir. "
        "Use `python -m cvvae.train evaluate --help` for the compatibility evaluation.",
    )
    p.add_argument("--config", help="YAML config (see cvvae/training/configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. loss.mapping=slice steps=200")
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this global step")
    return p


def _train(argv: list[str]) -> int:
    from .config import load_config
    from .train import Trainer

    args = _train_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    Trainer(cfg, stop_after=args.stop_after).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "evaluate":
            from .evaluate import main as evaluate_main

            return evaluate_main(argv[1:])
        return _train(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
