"""``python -m finetune cache|train|evaluate|params ...`` (exit codes: 0 done, 2 bad input, 1 failure)."""

from __future__ import annotations

import argparse
import json
import sys

from cvvae.errors import UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see finetune/configs/); defaults apply where it says nothing")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.learning_rate=1e-4")


def cmd_cache(args) -> int:
    from .config import load_config
    from .data import build_cache
    from .models import load_encoders, model_ids

    cfg = load_config(args.config, args.overrides)
    if not cfg.data.videos:
        raise UserError("data.videos is not set: give a folder of videos or a .csv/.jsonl list")
    encoders = load_encoders(cfg.model, device=args.device)
    manifest = build_cache(cfg.data, encoders, model_ids(cfg.model))
    print(f"{manifest['num_clips']} clips cached in {cfg.data.cache_dir}; {len(manifest['skipped'])} skipped")
    return 0


def cmd_train(args) -> int:
    import torch

    from .config import load_config
    from .trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import PartialState

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    PartialState().print(json.dumps(result))  # once, from the main process
    return 0


def cmd_evaluate(args) -> int:
    from cvvae.pipelines.presets import parse_components

    from .evaluate import EvalSettings, evaluate

    settings = EvalSettings(
        adapter=args.adapter,
        inputs=args.inputs,
        out_dir=args.out,
        preset=args.preset,
        seeds=args.seeds,
        steps=args.steps,
        num_latent_frames=args.num_latent_frames,
        height=args.height,
        width=args.width,
        fps=args.fps,
        device=args.device,
        components=parse_components(args.component),
        allow_other_base=args.allow_other_base,
    )
    report = evaluate(settings)
    print(report["markdown"])
    if report.get("notice"):
        print(f"note: {report['notice']}")
    return 0


def cmd_params(args) -> int:
    from .models import count_parameters

    print(json.dumps(count_parameters(), indent=2))
    return 0


def _threads(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(
            f"expected a number of threads from 0 (torch's default) to 1024, got {text!r}"
        )
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    from cvvae.commands import Parser

    parser = Parser(prog="python -m finetune", description="Adapt the SVD UNet to CV-VAE latents")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("cache", help="encode training clips into the latent cache (resumable)")
    _add_config_args(p)
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    p.set_defaults(func=cmd_cache)
    p = sub.add_parser("train", help="train an adapter (run under `accelerate launch` for several GPUs)")
    _add_config_args(p)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint-STEP folder")
    p.add_argument("--threads", type=_threads, default=0, help="CPU threads for torch (0: torch's default)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="base vs adapted clips: flicker, PSNR/SSIM, side-by-side grids")
    p.add_argument("--adapter", required=True, help="adapter folder written by `train`")
    p.add_argument("--inputs", required=True, nargs="+", help="held-out videos or images (or folders of them)")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md and the grids")
    p.add_argument("--preset", default="svd-xt", help="generation preset (tiny, nano, svd-xt, svd)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--num-latent-frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--fps", type=float, default=None, help="output fps (default: the preset's)")
    p.add_argument("--device", default=None)
    p.add_argument("--component", action="append", default=[], metavar="NAME=PATH", help="replace a preset model")
    p.add_argument(
        "--allow-other-base", action="store_true", help="evaluate on models the adapter was not trained for"
    )
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("params", help="trainable parameters of each mode on the SVD(-XT) UNet (meta device)")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv=None) -> int:
    from cvvae.commands import run_command

    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
