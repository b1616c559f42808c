"""`python -m cvvae reconstruct|encode|decode|generate`: thin argparse over ``cvvae.api``.

Exit codes: 0 done; 2 bad input or arguments (one ``error:`` line on stderr, no output file);
1 unexpected failure (with a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import traceback
import warnings
from collections.abc import Sequence

from .errors import InputError, UserError

DEFAULT_MODEL = "AILab-CVC/CV-VAE"
DEFAULT_SUBFOLDER = "vae3d_v1-1"  # used when --model is DEFAULT_MODEL and no --subfolder is given
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


# ----------------------------------------------------------------------------- options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local folder, 'tiny' (random weights, for trying the mechanics) or 'nano' "
        f"(default: {DEFAULT_MODEL} with subfolder {DEFAULT_SUBFOLDER})",
    )
    g.add_argument("--subfolder", default=None, help="subfolder of the hub repo or folder (e.g. vae3d, vae3d_v1-1)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on cuda, fp32 on cpu")
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow loading pickle (.ckpt/.bin) weights; only for files you trust",
    )
    t = p.add_argument_group("tiling (bounds memory; defaults come from the model's config.json)")
    t.add_argument(
        "--frames-per-window",
        type=_positive_int,
        default=None,
        help="video frames per temporal window (a multiple of 4)",
    )
    t.add_argument("--tile-size", type=_positive_int, default=None, help="spatial tile size in pixels (multiple of 8)")
    t.add_argument("--tile-overlap", type=float, default=None, help="fraction of a tile shared with its neighbour")
    t.add_argument(
        "--tile-norm",
        choices=("pooled", "tile"),
        default=None,
        help="GroupNorm statistics over the whole clip (pooled, closest to untiled) or per tile",
    )
    t.add_argument("--no-tiling", action="store_true", help="process the clip whole (fastest, most memory)")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input selection")
    g.add_argument("--frames", type=_positive_int, default=None, help="number of frames to read (default: all)")
    g.add_argument("--start", type=int, default=0, help="first frame index (default 0)")
    g.add_argument("--stride", type=_positive_int, default=1, help="take every K-th frame (default 1)")
    g.add_argument("--height", type=_positive_int, default=None, help="resize to this height (needs --width)")
    g.add_argument("--width", type=_positive_int, default=None, help="resize to this width (needs --height)")
    g.add_argument(
        "--resize",
        choices=("crop", "stretch"),
        default="crop",
        help="crop: scale to cover and centre-crop (default); stretch: scale each axis",
    )
    g.add_argument("--sample", action="store_true", help="sample the posterior instead of taking its mode")
    g.add_argument("--seed", type=int, default=0, help="seed for --sample")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvvae", description="CV-VAE video autoencoder tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("reconstruct", help="encode + decode a video; print quality metrics as one JSON line")
    p.add_argument("input", help="video (mp4, webm, mov, mkv, gif) or still image")
    p.add_argument("output", help="output .mp4 (a .json sidecar is written next to it)")
    _add_input_options(p)
    p.add_argument("--side-by-side", action="store_true", help="write input | reconstruction side by side")
    _add_model_options(p)
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser("encode", help="encode a video to raw latents in a .safetensors file")
    p.add_argument("input", help="video or still image")
    p.add_argument("output", help="output .safetensors (latents + metadata for decoding)")
    _add_input_options(p)
    _add_model_options(p)
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help="decode latents written by `encode` to an .mp4")
    p.add_argument("input", help="latents .safetensors from `encode`")
    p.add_argument("output", help="output .mp4 (a .json sidecar is written next to it)")
    _add_model_options(p)
    p.set_defaults(func=run_decode)

    if importlib.util.find_spec("cvvae.pipelines.cli") is not None:
        importlib.import_module("cvvae.pipelines.cli").add_parser(sub)
    return parser


# ----------------------------------------------------------------------------- model


def _model_loader(args: argparse.Namespace):
    """A callable loading the model (called by ``cvvae.api`` after the input was read)."""

    def load():
        import torch

        from .loading import RANDOM_WEIGHTS_NOTICE, load_vae

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
        subfolder = args.subfolder or (DEFAULT_SUBFOLDER if args.model == DEFAULT_MODEL else None)
        try:
            torch_device = torch.device(device)
        except RuntimeError as err:
            raise InputError(f"unknown device {device!r} ({err})") from err
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but CUDA is not available here; use --device cpu")
        vae = load_vae(
            args.model,
            subfolder=subfolder,
            device=torch_device,
            dtype=None if dtype_name == "fp32" else getattr(torch, DTYPES[dtype_name]),
            allow_pickle=args.allow_pickle,
        )
        wanted = getattr(torch, DTYPES[dtype_name])
        if next(vae.parameters()).dtype != wanted:
            vae = vae.to(dtype=wanted)
        _apply_tiling(vae, args)
        if args.model == "tiny":
            print(f"note: {RANDOM_WEIGHTS_NOTICE}", file=sys.stderr)
        return vae

    return load


def _apply_tiling(vae, args: argparse.Namespace) -> None:
    if args.no_tiling:
        vae.disable_tiling()
        return
    options = (args.frames_per_window, args.tile_size, args.tile_overlap, args.tile_norm)
    if all(v is None for v in options):
        return
    cur = vae.tiling
    try:
        vae.enable_tiling(
            frames_per_window=args.frames_per_window or cur.frames_per_window,
            tile_size=args.tile_size or cur.tile_size,
            overlap=cur.overlap if args.tile_overlap is None else args.tile_overlap,
            temporal_overlap=None if args.frames_per_window else cur.temporal_overlap,
            norm=args.tile_norm or cur.norm,
        )
    except ValueError as err:
        raise InputError(f"invalid tiling option: {err}") from err


def _model_id(args: argparse.Namespace) -> str:
    subfolder = args.subfolder or (DEFAULT_SUBFOLDER if args.model == DEFAULT_MODEL else None)
    return args.model + (f"/{subfolder}" if subfolder else "")


def _selection(args: argparse.Namespace) -> dict:
    if (args.height is None) != (args.width is None):
        raise InputError("--height and --width go together: give both or neither")
    size = (args.height, args.width) if args.height else None
    return dict(
        start=args.start,
        num_frames=args.frames,
        stride=args.stride,
        size=size,
        resize=args.resize,
        sample=args.sample,
        seed=args.seed,
    )


# ----------------------------------------------------------------------------- commands


def _print_result(result: dict) -> None:
    from .outputs import to_json

    print(to_json(result), flush=True)


def run_reconstruct(args: argparse.Namespace) -> int:
    from .api import reconstruct_file

    result = reconstruct_file(
        args.input,
        args.output,
        _model_loader(args),
        side_by_side=args.side_by_side,
        model_id=_model_id(args),
        **_selection(args),
    )
    _print_result(result)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from .api import encode_file

    _print_result(
        encode_file(args.input, args.output, _model_loader(args), model_id=_model_id(args), **_selection(args))
    )
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from .api import decode_file

    result = decode_file(args.input, args.output, _model_loader(args), model_id=_model_id(args))
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    _print_result(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; returns the exit code (argparse errors exit 2 through SystemExit)."""
    args = build_parser().parse_args(argv)
    # huggingface_hub deprecation noise from inside diffusers' loader: not actionable for a user
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
