"""``python -m cvvae.training --config CONFIG.yaml [key=value ...]``, ``... evaluate ...`` and ``... plot ...``."""

from __future__ import annotations

import argparse
import sys


def _step(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a step number >= 1, got {text!r}")
    return int(text)


def _train_parser() -> argparse.ArgumentParser:
    from ..commands import Parser

    p = Parser(
        prog="python -m cvvae.training",
        description="Train CV-VAE with latent regularisation (or its small 2-D reference VAE). "
        "Re-running the same command resumes from the newest checkpoint in output_dir. "
        "Use `python -m cvvae.training evaluate --help` for the compatibility evaluation and "
        "`python -m cvvae.training plot --help` for its plot over training steps.",
    )
    p.add_argument("--config", help="YAML config (see cvvae/training/configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. loss.mapping=slice steps=200")
    p.add_argument("--stop-after", type=_step, default=None, help="stop (with a checkpoint) after this global step")
    return p


def _train(argv: list[str]) -> int:
    from .config import load_config
    from .trainer import Trainer

    args = _train_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    Trainer(cfg, stop_after=args.stop_after).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..commands import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "evaluate":
        from .evaluate import main as evaluate_main

        return run_command(lambda: evaluate_main(argv[1:]))
    if argv and argv[0] == "plot":
        from .plots import main as plot_main

        return run_command(lambda: plot_main(argv[1:]))
    return run_command(lambda: _train(argv))


if __name__ == "__main__":
    raise SystemExit(main())
