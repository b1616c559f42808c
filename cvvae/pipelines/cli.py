"""``python -m cvvae generate i2v|t2v``: argparse over :func:`cvvae.pipelines.api.generate`.

Registered by ``cvvae.cli`` through :func:`add_parser`. Values are checked by
``GenerationSettings.validate`` (bad input -> ``InputError`` -> exit 2 with one ``error:`` line).
"""

from __future__ import annotations

import argparse

DEFAULT_PRESET = {"i2v": "svd-xt", "t2v": "animatediff"}


def _component(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH_OR_HUB_ID (e.g. svd=/models/svd-xt), got {text!r}")
    return key, value


def _add_common(p: argparse.ArgumentParser, mode: str) -> None:
    from .presets import CVVAE_SUBFOLDERS, PRESETS

    p.add_argument(
        "--out", required=True, help="output .mp4 (a .json sidecar with every setting is written next to it)"
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET[mode],
        help=f"models and defaults (default: {DEFAULT_PRESET[mode]}; 'tiny' = random weights, no download)",
    )
    p.add_argument("--num-latent-frames", type=int, default=None, help="n latents -> 1 + 4(n-1) frames")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (preset default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=float, default=None, help="output fps (SVD is conditioned on round(fps/4) - 1)")
    p.add_argument("--conditioning-fps", type=int, default=None, help="override the SVD UNet's fps conditioning")
    p.add_argument("--motion-bucket-id", type=int, default=127, help="SVD motion amount (default 127)")
    p.add_argument("--noise-aug-strength", type=float, default=0.02, help="SVD conditioning-image noise")
    p.add_argument("--guidance", type=float, default=None, help="t2v: text guidance (7.5); i2v: = --max-guidance")
    p.add_argument("--min-guidance", type=float, default=1.0, help="SVD guidance at the first frame")
    p.add_argument("--max-guidance", type=float, default=None, help="SVD guidance at the last frame (3.0)")
    p.add_argument("--height", type=int, default=None, help="multiple of 64 (preset default)")
    p.add_argument("--width", type=int, default=None, help="multiple of 64 (preset default)")
    p.add_argument("--adapter", default=None, help="fine-tuned SVD UNet adapter folder (adapter.json + .safetensors)")
    p.add_argument("--vae", choices=("cvvae", "native"), default="cvvae", help="native: the backbone's own VAE")
    p.add_argument("--decode-frames-per-window", type=int, default=None, help="CV-VAE decode window (frames)")
    p.add_argument("--decode-tile-size", type=int, default=None, help="CV-VAE decode tile size (pixels)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until used (small GPUs)")
    p.add_argument("--cvvae-subfolder", choices=CVVAE_SUBFOLDERS, default="vae3d_v1-1", help="CV-VAE release")
    p.add_argument(
        "--component",
        type=_component,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="replace a model by a local folder or hub id (cvvae, svd, sd21, sd15, motion_adapter); repeatable",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate, mode=mode)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``generate i2v`` and ``generate t2v`` on ``subparsers``."""
    gen = subparsers.add_parser("generate", help="generate video in CV-VAE latent space (SVD, AnimateDiff, SD 2.1)")
    sub = gen.add_subparsers(dest="generate_mode", required=True)
    i2v = sub.add_parser("i2v", help="image -> video with SVD; n latents -> 1 + 4(n-1) frames")
    i2v.add_argument("--image", required=True, help="conditioning image (scaled and centre-cropped to the size)")
    _add_common(i2v, "i2v")
    t2v = sub.add_parser("t2v", help="text -> video with AnimateDiff, or SD 2.1 text -> image -> SVD")
    t2v.add_argument("--prompt", required=True)
    t2v.add_argument("--negative-prompt", default="")
    t2v.add_argument(
        "--t2v-backbone", choices=("animatediff", "sd21"), default=None, help="default: the preset's (animatediff)"
    )
    _add_common(t2v, "t2v")
    return gen


def settings_from_args(args: argparse.Namespace):
    from .api import GenerationSettings

    max_guidance = args.max_guidance
    if max_guidance is None:
        max_guidance = args.guidance if args.mode == "i2v" and args.guidance is not None else 3.0
    text_guidance = args.guidance if args.mode == "t2v" and args.guidance is not None else 7.5
    return GenerationSettings(
        mode=args.mode,
        image=getattr(args, "image", None),
        prompt=getattr(args, "prompt", None),
        negative_prompt=getattr(args, "negative_prompt", ""),
        t2v_backbone=getattr(args, "t2v_backbone", None),
        num_latent_frames=args.num_latent_frames,
        steps=args.steps,
        seed=args.seed,
        fps=args.fps,
        conditioning_fps=args.conditioning_fps,
        motion_bucket_id=args.motion_bucket_id,
        min_guidance=args.min_guidance,
        max_guidance=max_guidance,
        guidance=text_guidance,
        noise_aug_strength=args.noise_aug_strength,
        height=args.height,
        width=args.width,
        adapter=args.adapter,
        vae=args.vae,
        decode_frames_per_window=args.decode_frames_per_window,
        decode_tile_size=args.decode_tile_size,
    )


def run_generate(args: argparse.Namespace) -> int:
    from ..loading import RANDOM_WEIGHTS_NOTICE
    from .api import check_output_path, generate

    settings = settings_from_args(args).validate()  # fail on bad values before loading anything
    check_output_path(args.out)
    result = generate(
        settings,
        args.out,
        preset=args.preset,
        device=args.device,
        cpu_offload=args.cpu_offload,
        cvvae_subfolder=args.cvvae_subfolder,
        components=dict(args.component),
        progress=not args.quiet,
    )
    m = result.metadata
    print(
        f"wrote {result.video_path} ({result.frames} frames from {m['latent_frames']} latents, "
        f"{m['width']}x{m['height']} at {result.fps:g} fps, {m['backbone']} + {m['settings']['vae']} VAE) "
        f"and {result.sidecar_path} in {result.seconds:.1f} s"
    )
    if args.preset == "tiny":
        print(f"note: {RANDOM_WEIGHTS_NOTICE}")
    return 0
