"""``python -m cvvae reconstruct|encode|decode|generate``: thin argparse over ``cvvae.api`` and
``cvvae.pipelines.api``.

Exit codes: 0 done; 2 bad input or arguments (one ``error:`` line on stderr, no output file);
1 unexpected failure (with a traceback).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .commands import Parser, run_command
from .errors import InputError
from .hub import CVVAE_HUB_ID, CVVAE_SUBFOLDERS, DEFAULT_SUBFOLDER, default_subfolder, model_label

# ----------------------------------------------------------------------------- options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to 2**63 - 1, got {value}")
    return value


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (and its .json sidecar)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=CVVAE_HUB_ID,
        help=f"a CV-VAE hub id or local folder, a named VAE (nano, nano-2d, tiny = random weights, sd21-vae, "
        f"svd-temporal, ...) or Class:model for a diffusers VAE (default: {CVVAE_HUB_ID} with subfolder "
        f"{DEFAULT_SUBFOLDER})",
    )
    g.add_argument(
        "--subfolder", default=None, help=f"subfolder of the hub repo or folder ({', '.join(CVVAE_SUBFOLDERS)})"
    )
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="default: fp16 on cuda; on a cpu, for CV-VAEs, bf16 where it has bf16 instructions (AVX512-BF16 or "
        "AMX: about 2x faster than fp32, at about 50 dB to it), else fp32",
    )
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
        default=None,
        metavar="MODE",
        help="GroupNorm statistics: exact for the whole clip (default when tiling; one pass, the boxes wait in "
        "lockstep), pooled over the clip in passes (memory flat in its length) or per tile (the release's)",
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
    g.add_argument("--seed", type=_seed, default=0, help="seed for --sample")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m cvvae", description="CV-VAE video autoencoder tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("reconstruct", help="encode + decode a video; print quality metrics as one JSON line")
    p.add_argument("input", help="video (mp4, webm, mov, mkv, gif) or still image")
    p.add_argument("output", help="output .mp4 (a .json sidecar is written next to it)")
    _add_input_options(p)
    p.add_argument("--side-by-side", action="store_true", help="write input | reconstruction side by side")
    _add_output_options(p)
    _add_model_options(p)
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser("encode", help="encode a video to raw latents in a .safetensors file")
    p.add_argument("input", help="video or still image")
    p.add_argument("output", help="output .safetensors (latents + metadata for decoding)")
    _add_input_options(p)
    _add_output_options(p)
    _add_model_options(p)
    p.set_defaults(func=run_encode)

    p = sub.add_parser("decode", help="decode latents written by `encode` to an .mp4")
    p.add_argument("input", help="latents .safetensors from `encode`")
    p.add_argument("output", help="output .mp4 (a .json sidecar is written next to it)")
    _add_output_options(p)
    _add_model_options(p)
    p.set_defaults(func=run_decode)

    _add_generate_parser(sub)
    _add_compare_parser(sub)
    return parser


# ----------------------------------------------------------------------------- model


def _model_loader(args: argparse.Namespace):
    """A callable loading the model (called by ``cvvae.api`` after the input was read)."""

    def load():
        from .devices import resolve_device, resolve_dtype
        from .loading import RANDOM_WEIGHTS_NOTICE
        from .vaes import default_dtype_for, load_video_vae

        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device) if args.dtype else default_dtype_for(args.model, device)
        vae = load_video_vae(args.model, device, dtype, subfolder=args.subfolder, allow_pickle=args.allow_pickle)
        if vae.random_weights:
            print(f"note: {RANDOM_WEIGHTS_NOTICE}", file=sys.stderr)
        return vae

    return load


def tiling_from_args(args: argparse.Namespace) -> dict:
    """The tiling options as changes to the model's own settings (validated now, before any work)."""
    from .tiling import TilingSettings

    if args.no_tiling:
        return {"enabled": False}
    names = {"frames_per_window": "frames_per_window", "tile_size": "tile_size", "overlap": "tile_overlap"}
    changes = {key: getattr(args, arg) for key, arg in names.items() if getattr(args, arg) is not None}
    if args.tile_norm is not None:
        changes["norm"] = args.tile_norm
    try:
        TilingSettings().replace(**changes)
    except InputError as err:
        raise InputError(f"invalid tiling option: {err}") from err
    return changes


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


def _model_kwargs(args: argparse.Namespace) -> dict:
    from .devices import resolve_device

    resolve_device(args.device)  # an unusable device fails before the input is read
    label = model_label(args.model, default_subfolder(args.model, args.subfolder))
    return dict(model_id=label, tiling=tiling_from_args(args), overwrite=args.overwrite)


# ----------------------------------------------------------------------------- commands


def _print_result(result: dict) -> None:
    from .outputs import to_json

    print(to_json(result), flush=True)


def run_reconstruct(args: argparse.Namespace) -> int:
    from .api import reconstruct_file

    kwargs = _model_kwargs(args)
    result = reconstruct_file(
        args.input, args.output, _model_loader(args), side_by_side=args.side_by_side, **kwargs, **_selection(args)
    )
    _print_result(result)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from .api import encode_file

    kwargs = _model_kwargs(args)
    _print_result(encode_file(args.input, args.output, _model_loader(args), **kwargs, **_selection(args)))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from .api import decode_file

    result = decode_file(args.input, args.output, _model_loader(args), **_model_kwargs(args))
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    _print_result(result)
    return 0


# ----------------------------------------------------------------------------- generate

DEFAULT_PRESET = {"i2v": None, "t2v": "animatediff", "t2i": "sd3"}  # i2v: svd-xt, or nano on a CPU without it


I2V_DEFAULT = "svd-xt with a GPU or its weights cached, else nano"


def _add_generate_options(p: argparse.ArgumentParser, mode: str) -> None:
    from .pipelines.defaults import VAE_CHOICES
    from .pipelines.presets import PRESETS

    kind = ".png" if mode == "t2i" else ".mp4"
    p.add_argument(
        "--out", required=True, help=f"output {kind} (a .json sidecar with every setting is written beside it)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET[mode],
        help=f"models and defaults (default: {DEFAULT_PRESET[mode] or I2V_DEFAULT}; 'tiny' = random weights)",
    )
    p.add_argument("--num-latent-frames", type=int, default=None, help="n latents -> 1 + 4(n-1) frames")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (preset default)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--fps", type=float, default=None, help="output fps (SVD is conditioned on fps / 4 - 1)")
    p.add_argument("--conditioning-fps", type=float, default=None, help="override the SVD UNet's fps id")
    p.add_argument("--motion-bucket-id", type=int, default=None, help="SVD motion amount, 0-255 (127)")
    p.add_argument("--noise-aug-strength", type=float, default=None, help="SVD conditioning-image noise (0.02)")
    p.add_argument("--guidance", type=float, default=None, help="t2v: text guidance (7.5); i2v: = --max-guidance")
    p.add_argument("--min-guidance", type=float, default=None, help="SVD guidance at the first frame (1.0)")
    p.add_argument("--max-guidance", type=float, default=None, help="SVD guidance at the last frame (3.0)")
    p.add_argument("--height", type=int, default=None, help="multiple of 64 (preset default)")
    p.add_argument("--width", type=int, default=None, help="multiple of 64 (preset default)")
    p.add_argument("--adapter", default=None, help="fine-tuned SVD UNet adapter folder (adapter.json + .safetensors)")
    p.add_argument("--vae", choices=VAE_CHOICES, default="cvvae", help="native: the backbone's own VAE")
    p.add_argument(
        "--decode-tiling",
        default="default",
        metavar="CHOICE",
        help="CV-VAE decode tiling: default (the model's), off, N (frames per window) or N/P (and P-pixel tiles)",
    )
    add_pipeline_options(p)
    _add_output_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate, mode=mode)


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Where generation runs and which models it loads: shared by ``generate``, batch jobs and the web demo."""
    from .pipelines.backbones import component_keys

    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--cpu-offload", action="store_true", help="keep each model on the CPU until it runs (small GPUs)")
    p.add_argument("--cvvae-subfolder", choices=CVVAE_SUBFOLDERS, default=DEFAULT_SUBFOLDER, help="CV-VAE release")
    p.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"replace a model by a local folder or hub id ({', '.join(component_keys())}); repeatable",
    )


def _add_generate_parser(subparsers) -> None:
    from .pipelines.backbones import backbones_for

    gen = subparsers.add_parser("generate", help="generate video in CV-VAE latent space (SVD, AnimateDiff, SD 2.1)")
    sub = gen.add_subparsers(dest="generate_mode", required=True, parser_class=Parser)
    i2v = sub.add_parser("i2v", help="image -> video with SVD; n latents -> 1 + 4(n-1) frames")
    i2v.add_argument("--image", required=True, help="conditioning image (scaled and centre-cropped to the size)")
    _add_generate_options(i2v, "i2v")
    t2v = sub.add_parser("t2v", help="text -> video with AnimateDiff, or SD 2.1 text -> image -> SVD")
    t2v.add_argument("--prompt", required=True)
    t2v.add_argument("--negative-prompt", default="")
    t2v.add_argument(
        "--t2v-backbone", choices=backbones_for("t2v"), default=None, help="default: the preset's (animatediff)"
    )
    _add_generate_options(t2v, "t2v")
    t2i = sub.add_parser("t2i", help="text -> image with SD3, decoded by the SD3-compatible CV-VAE (.png)")
    t2i.add_argument("--prompt", required=True)
    t2i.add_argument("--negative-prompt", default="")
    _add_generate_options(t2i, "t2i")


def settings_from_args(args: argparse.Namespace):
    """``GenerationSettings`` from the options given; what is not given keeps the settings' defaults."""
    from .pipelines.settings import GenerationSettings

    names = (
        "num_latent_frames", "steps", "seed", "fps", "conditioning_fps", "motion_bucket_id", "noise_aug_strength",
        "min_guidance", "max_guidance", "height", "width", "adapter", "vae", "decode_tiling",
        "image", "prompt", "negative_prompt", "t2v_backbone",
    )  # fmt: skip
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if args.guidance is not None and args.mode in ("t2v", "t2i"):
        given["guidance"] = args.guidance
    elif args.guidance is not None:
        given.setdefault("max_guidance", args.guidance)  # i2v: SVD's guidance at the last frame
    return GenerationSettings(mode=args.mode, **given)


def run_generate(args: argparse.Namespace) -> int:
    from .outputs import check_output_path
    from .pipelines.backbones import output_suffix
    from .pipelines.presets import check_models, get_preset, parse_components

    settings = settings_from_args(args).validate()  # fail on bad values before loading anything (no torch yet)
    if args.preset is None:
        from .devices import resolve_device
        from .pipelines.presets import default_i2v_preset

        args.preset, note = default_i2v_preset(cuda=resolve_device(args.device).type == "cuda")
        if note:
            print(f"note: {note}", file=sys.stderr)
    check_output_path(args.out, output_suffix(args.mode), overwrite=args.overwrite)
    backbone = settings.backbone(get_preset(args.preset))
    check_models(args.preset, backbone, parse_components(args.component), args.cvvae_subfolder)
    from .devices import resolve_device  # torch from here on

    resolve_device(args.device)  # an unusable device stops here, before any model is loaded
    # the models are there: now the heavy imports
    from .pipelines.api import generate

    result = generate(
        settings,
        args.out,
        preset=args.preset,
        device=args.device,
        cpu_offload=args.cpu_offload,
        cvvae_subfolder=args.cvvae_subfolder,
        components=parse_components(args.component),
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    m = result.metadata
    size = f"{m['width']}x{m['height']}"
    if result.fps is None:
        what = f"an image, {size}"
    else:
        what = f"{result.frames} frames from {m['latent_frames']} latents, {size} at {result.fps:g} fps"
    print(
        f"wrote {result.video_path} ({what}, {m['backbone']} + {m['settings']['vae']} VAE) "
        f"and {result.sidecar_path} in {result.seconds:.1f} s"
    )
    if notice := result.metadata.get("notice"):
        print(f"note: {notice}")
    return 0


# ----------------------------------------------------------------------------- compare


def _add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="measure video VAEs on the same clips by the same protocol")
    p.add_argument("clips", nargs="+", metavar="CLIP", help="videos to measure every VAE on")
    p.add_argument(
        "--vae",
        action="append",
        required=True,
        metavar="SPEC",
        help="cvvae, cvvae-v1, cvvae-sd3, sd21-vae, svd-temporal, nano, nano-2d, tiny, tiny-wan (random), ..., "
        "Class:hub_id[/subfolder] (e.g. AutoencoderKLWan:Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae) or a CV-VAE folder; "
        "repeatable",
    )
    p.add_argument("--out", default="runs/compare", help="results folder; a run there resumes (default runs/compare)")
    p.add_argument("--frames", default="17,33", help="frame counts from the start of each clip (default 17,33)")
    p.add_argument("--size", default="256x256", help="HEIGHTxWIDTH, or 'native' (default 256x256)")
    p.add_argument("--resize", choices=("crop", "stretch"), default="crop", help="crop (default) or stretch")
    p.add_argument("--start", type=int, default=0, help="first frame index (default 0)")
    p.add_argument("--stride", type=_positive_int, default=1, help="take every K-th frame (default 1)")
    p.add_argument("--sample", action="store_true", help="sample the posterior (seeded) instead of its mode")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None, help="default: each VAE's own")
    p.add_argument("--no-tiling", action="store_true", help="whole clips instead of each VAE's own tiling")
    p.add_argument("--lpips", default=None, help="LPIPS weights (default: $CVVAE_LPIPS_WEIGHTS; else no LPIPS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from .compare import Protocol, compare, parse_frames, parse_size
    from .devices import resolve_device

    protocol = Protocol(
        frames=parse_frames(args.frames),
        size=parse_size(args.size),
        resize=args.resize,
        start=args.start,
        stride=args.stride,
        sample=args.sample,
        seed=args.seed,
        tiling=not args.no_tiling,
        dtype=args.dtype,
        device=str(resolve_device(args.device)),
    )
    result = compare(args.clips, args.vae, args.out, protocol, args.lpips, progress=not args.quiet)
    print(result["markdown"])
    files = result["files"]
    print(f"wrote {files['markdown']}, {files['json']}, {files['plot']} and {len(files['grids'])} grid video(s)")
    return 0


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; returns the exit code (argparse errors exit 2 through SystemExit)."""
    args = build_parser().parse_args(argv)
    # huggingface_hub deprecation noise from inside diffusers' loader: not actionable for a user
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    return run_command(lambda: args.func(args))
