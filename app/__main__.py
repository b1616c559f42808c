"""``python -m app``: the CV-VAE web demo (Gradio), on 127.0.0.1:7860 by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before gradio / huggingface_hub are imported: no analytics, no telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REAL_WEIGHTS_HINT = (
    "To generate with real weights, run on a CUDA machine with the models in the Hugging Face cache "
    "(or online): python -m app --preset svd-xt  (see README.md, section 'Web demo')"
)


OUTPUTS_MARKER = ".cvvae-app-outputs"  # in a folder the app made or found empty: the only folder it serves


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


def check_outputs_folder(folder: Path) -> Path:
    """The results folder, which the browser can read: one the app made or found empty (it gets a marker),
    never a folder of other files (``--outputs ~`` would serve the home folder). UserError otherwise."""
    from cvvae.errors import InputError

    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--outputs {folder}: {existing} is a file, not a folder")
    if folder.is_dir() and not (folder / OUTPUTS_MARKER).exists() and any(folder.iterdir()):
        raise InputError(
            f"--outputs {folder} holds files the app did not write, and the browser may read what is in it: "
            "give a new or empty folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / OUTPUTS_MARKER).touch()
    except OSError as err:
        raise InputError(f"--outputs {folder} cannot be written ({err.strerror}); give a writable folder") from err
    return folder


def check_local_folders(cvvae: str | None, components: dict) -> None:
    """Model folders given to the app exist (hub ids are checked when a tab first loads them; a missing
    --adapters folder lists no adapters until fine-tuning makes it)."""
    from cvvae.errors import InputError
    from cvvae.hub import looks_local

    named = [("--cvvae", cvvae), *((f"--component {k}", v) for k, v in components.items())]
    for option, name in named:
        if name and looks_local(name) and not Path(name).expanduser().is_dir():
            raise InputError(f"{option} folder {name} does not exist: check the path")


def parse_args(argv=None) -> argparse.Namespace:
    from cvvae.cli import add_pipeline_options
    from cvvae.commands import Parser

    p = Parser(prog="python -m app", description="The CV-VAE web demo (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument(
        "--preset",
        default=None,
        help="model preset: svd-xt, svd, animatediff, sd21, sd3, nano or tiny (default: svd-xt with CUDA and the "
        "weights; without, nano (small trained models, image to video) if installed, else tiny (random))",
    )
    p.add_argument("--outputs", type=Path, default=Path("outputs"), help="folder for results (default ./outputs)")
    p.add_argument("--adapters", type=Path, default=None, help="folder of fine-tuned adapters to offer (optional)")
    p.add_argument(
        "--cvvae",
        default=None,
        help="CV-VAE for the Reconstruct tab: hub id, folder, 'nano' or 'tiny' "
        "(default: the preset's; 'nano' on the nano and tiny presets)",
    )
    add_pipeline_options(p)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    return p.parse_args(argv)


NANO_NOTICE = (
    "the demo runs the 'nano' preset: a small SVD and CV-VAE trained on a CPU (image to video only, "
    "17 frames at 64x64; far from the real models' quality)"
)


def nano_installed() -> bool:
    """Whether the nano SVD ships with this installation (its folder holds ``model_index.json``)."""
    from cvvae.weights import NANO_SVD

    return (NANO_SVD / "model_index.json").is_file()


def choose_preset(
    requested: str | None, cuda: bool, weights: bool = True, nano: bool | None = None
) -> tuple[str, str]:
    """The preset to run and a notice for the page ('' when real weights are used).

    Without CUDA, or without reachable weights (offline and not cached), an unspecified preset falls back
    to ``nano`` when its SVD is installed (``nano``: see :func:`nano_installed`), else to the random
    ``tiny``; an explicit ``--preset`` is always honoured.
    """
    from cvvae.loading import RANDOM_WEIGHTS_NOTICE

    if requested is None and not (cuda and weights):
        why = (
            "No CUDA GPU found, so "
            if not cuda
            else "The svd-xt weights are not in the Hugging Face cache and HF_HUB_OFFLINE is set, so "
        )
        if nano_installed() if nano is None else nano:
            return "nano", f"{why}{NANO_NOTICE}. {REAL_WEIGHTS_HINT}"
        return "tiny", f"{why}the demo runs the 'tiny' preset. {RANDOM_WEIGHTS_NOTICE}. {REAL_WEIGHTS_HINT}"
    if requested == "tiny":
        return "tiny", f"{RANDOM_WEIGHTS_NOTICE}. {REAL_WEIGHTS_HINT}"
    if requested == "nano":
        return "nano", f"{NANO_NOTICE[:1].upper()}{NANO_NOTICE[1:]}. {REAL_WEIGHTS_HINT}"
    preset = requested or "svd-xt"
    notice = "" if cuda else "No CUDA GPU found: real models run on the CPU and are very slow."
    return preset, notice


def weights_reachable(preset: str = "svd-xt") -> bool:
    """False only when the hub is offline and the preset's SVD and CV-VAE are not in the local cache."""
    from cvvae.hub import is_offline
    from cvvae.pipelines.presets import weights_cached

    return not is_offline() or weights_cached(preset)


def make_handlers(args: argparse.Namespace):
    import torch

    from cvvae.devices import resolve_device
    from cvvae.pipelines.presets import get_preset, parse_components

    from .handlers import CPU_PIXEL_BUDGET, AppConfig, Handlers

    if args.device:
        resolve_device(args.device)
    components = parse_components(args.component)
    check_local_folders(args.cvvae, components)

    cuda = torch.cuda.is_available() and args.device != "cpu"
    preset, notice = choose_preset(args.preset, cuda, weights=args.preset is not None or weights_reachable())
    get_preset(preset)  # InputError for an unknown preset
    if preset == "nano" and "svd" not in components and not nano_installed():
        from cvvae.errors import ModelLoadError
        from cvvae.weights import NANO_SVD

        raise ModelLoadError(
            f"the nano SVD is not in this installation ({NANO_SVD} has no model_index.json): "
            "pass its folder with --component svd=FOLDER, or run --preset tiny (random models)"
        )
    args.outputs = check_outputs_folder(args.outputs)  # made only once everything else is known to be good
    device = args.device or ("cuda" if cuda else "cpu")
    config = AppConfig(
        preset=preset,
        outputs=args.outputs,
        adapters=args.adapters,
        device=device,
        cvvae=args.cvvae,
        pixel_budget=None if device.startswith("cuda") else CPU_PIXEL_BUDGET,
        notice=notice,
        components=components,
        cpu_offload=args.cpu_offload,
        cvvae_subfolder=args.cvvae_subfolder,
    )
    return Handlers(config)


def main(argv=None) -> int:
    from cvvae.errors import UserError

    args = parse_args(argv)
    try:
        handlers = make_handlers(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .ui import build_demo, launch

    if handlers.config.notice:
        print(f"notice: {handlers.config.notice}", file=sys.stderr)
    demo = build_demo(handlers)
    try:
        launch(demo, handlers, host=args.host, port=args.port, share=args.share)
    except OSError as err:  # port in use, address not available
        print(
            f"error: cannot serve on {args.host}:{args.port} ({err}); choose another --port or --host", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
