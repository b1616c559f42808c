"""SVD-XT in CV-VAE latent space: seconds and peak memory of generation and of fine-tuning steps.

Full-size components with random weights (speed and memory do not depend on their values; nothing is
downloaded): the SVD-XT UNet (diffusers' default ``UNetSpatioTemporalConditionModel`` config), a ViT-H/14
CLIP image encoder, the released CV-VAE config and SVD's temporal-decoder VAE.

    python -m benchmarks.svd_speed generate --out benchmarks/results   # CUDA: 25 latents -> 97 frames at 576x1024
    python -m benchmarks.svd_speed finetune --out benchmarks/results   # CUDA: each mode, +- gradient checkpointing
    python -m benchmarks.svd_speed generate --small --device cpu       # smoke test anywhere (tiny components)

``generate`` times one whole clip after a warm-up and splits it into the UNet's, the CV-VAE's (conditioning
encode + decode) and the CLIP encoder's shares; ``--native`` adds SVD's own VAE decoding the same 25 latents
(25 frames) for comparison. ``finetune`` times optimizer steps (batch 1, bf16 autocast, trainable weights in
fp32, AdamW) of SVD's EDM objective for each PEFT mode. Both write ``svd_speed_<task>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

SVD_XT_CLIP = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
    hidden_act="gelu",
)
SVD_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def build_unet(small: bool, device: str, dtype: torch.dtype):
    """The random SVD-XT UNet alone (``small``: the ``tiny`` preset's), trainable parameters untouched."""
    from diffusers import UNetSpatioTemporalConditionModel

    from cvvae.pipelines.tiny import tiny_svd_unet

    torch.manual_seed(0)
    with torch.device(device):
        unet = tiny_svd_unet() if small else UNetSpatioTemporalConditionModel()
    return unet.to(dtype=dtype)


def build_components(small: bool, device: str, dtype: torch.dtype) -> dict:
    """Random SVD-XT components (``small``: the ``tiny`` preset's), on ``device`` in ``dtype``."""
    from cvvae.pipelines.tiny import build_tiny_svd

    parts = build_tiny_svd()  # scheduler and feature extractor are SVD's; full size replaces the models
    parts["unet"] = build_unet(small, device, dtype)
    if not small:
        from diffusers import AutoencoderKLTemporalDecoder
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from cvvae import CVVAEModel

        with torch.device(device):  # initialise on the GPU: seconds instead of minutes
            parts.update(
                image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_XT_CLIP)),
                native_vae=AutoencoderKLTemporalDecoder(**SVD_VAE),
                vae=CVVAEModel(),
            )
    for key in ("unet", "image_encoder", "native_vae", "vae"):
        parts[key] = parts[key].to(device=device, dtype=dtype).eval().requires_grad_(False)
    return parts


class PhaseTimer:
    """Wraps methods of modules to add up their synchronised seconds and the peak memory during them.

    The CUDA peak counter is reset at the start of every phase, so ``overall`` keeps the call's peak.
    """

    def __init__(self, device: str):
        self.device = device
        self.reset()

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            sync(self.device)
            self.overall = max(self.overall, peak_gib(self.device))  # the peak before this phase
            reset_peak(self.device)
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(self.device)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            if self.device == "cuda":
                self.peak[phase] = max(self.peak.get(phase, 0.0), peak_gib(self.device))
            return out

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds, self.peak, self.overall = {}, {}, 0.0

    def total_peak(self) -> float:
        return max(self.overall, peak_gib(self.device)) if self.device == "cuda" else float("nan")


def bench_generate(args) -> list[dict]:
    from PIL import Image

    from cvvae.pipelines.svd import CVVAEVideoPipeline

    dtype = torch.float16 if args.device == "cuda" else torch.float32
    parts = build_components(args.small, args.device, dtype)
    pipe = CVVAEVideoPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    timer = PhaseTimer(args.device)
    timer.wrap(pipe.unet, "forward", "unet")
    timer.wrap(pipe.image_encoder, "forward", "clip")
    for method in ("encode", "decode"):
        timer.wrap(pipe.vae, method, "cvvae")
    timer.wrap(pipe.native_vae, "decode", "native_vae")
    height, width = (64, 64) if args.small else (args.height, args.width)
    image = Image.new("RGB", (width, height), (120, 90, 60))
    rows = []
    for vae in ["cvvae"] + (["native"] if args.native else []):
        for n in args.latents:
            row = dict(task="generate", vae=vae, latents=n, height=height, width=width, steps=args.steps)
            call = dict(
                image=image,
                num_latent_frames=n,
                height=height,
                width=width,
                num_inference_steps=args.steps,
                output_type="pt",
                vae=vae,
                generator=torch.Generator().manual_seed(0),
            )
            try:
                with torch.inference_mode():
                    pipe(**call)  # warm-up
                    timer.reset()
                    reset_peak(args.device)
                    sync(args.device)
                    start = time.perf_counter()
                    frames = pipe(**call).frames
                    sync(args.device)
                total = time.perf_counter() - start
                row.update(frames=int(frames.shape[1]), seconds=total, peak_gib=timer.total_peak())
                row.update({f"{k}_s": v for k, v in timer.seconds.items()})
                row.update({f"{k}_peak_gib": v for k, v in timer.peak.items()})
            except torch.OutOfMemoryError:
                row.update(error="out of memory")
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def synthetic_batch(latents: int, height: int, width: int, embed_dim: int, device: str) -> dict:
    """What the latent cache yields for one clip (shapes as ``finetune.data`` writes them)."""
    g = torch.Generator().manual_seed(0)
    h, w = height // 8, width // 8
    batch = dict(
        latents_mean=torch.randn(1, 4, latents, h, w, generator=g),
        latents_logvar=torch.full((1, 4, latents, h, w), -6.0),
        cond_pixels=torch.randint(0, 256, (1, 3, height, width), generator=g, dtype=torch.uint8),
        image_embeds=torch.randn(1, 1, embed_dim, generator=g),
        fps=torch.tensor([28.0]),
    )
    return {k: v.to(device) for k, v in batch.items()}


def bench_finetune(args) -> list[dict]:
    from finetune.config import AdapterTrainConfig

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    sizes = [(64, 64)] if args.small else [tuple(s) for s in args.sizes]
    rows = []
    for mode in args.modes:
        for checkpointing in args.checkpointing:
            for height, width in sizes:
                row = dict(task="finetune", mode=mode, checkpointing=checkpointing, latents=args.latents[0])
                row.update(height=height, width=width)
                try:
                    row.update(time_steps(args, mode, checkpointing, height, width, AdapterTrainConfig(), dtype))
                except torch.OutOfMemoryError:
                    row.update(error="out of memory")
                    torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def time_steps(args, mode, checkpointing, height, width, cfg, dtype) -> dict:
    """A fresh UNet with ``mode`` applied; seconds per optimizer step (median after a warm-up) and peak memory.

    Each step includes the CV-VAE encode of the noise-augmented conditioning frame, as in training.
    """
    from cvvae import CVVAEModel
    from cvvae.latents import LatentScaling
    from cvvae.loading import build_tiny_vae
    from cvvae.vaes import as_video_vae
    from finetune.config import LoraSettings
    from finetune.models import setup_trainable, trainable_parameters
    from finetune.objective import edm_loss

    unet = build_unet(args.small, args.device, dtype)
    with torch.device(args.device):
        vae = build_tiny_vae() if args.small else CVVAEModel()
    vae = vae.to(device=args.device, dtype=dtype).eval().requires_grad_(False)
    scaling = LatentScaling.of(vae)
    vae = as_video_vae(vae)  # the interface the fine-tuning objective takes
    setup_trainable(unet, mode, LoraSettings())
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = list(trainable_parameters(unet).values())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    batch = synthetic_batch(args.latents[0], height, width, unet.config.cross_attention_dim, args.device)
    times = []
    reset_peak(args.device)
    for i in range(args.repeats + 1):
        sync(args.device)
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32):
            loss = edm_loss(unet, vae, batch, cfg, scaling, [torch.Generator().manual_seed(i)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    out = dict(trainable=sum(p.numel() for p in params), s_per_step=statistics.median(times))
    out.update(peak_gib=peak_gib(args.device), loss=loss.item())
    del unet, vae, optimizer, params
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def write_reports(task: str, rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    meta = dict(device=device, torch=torch.__version__, small=args.small, repeats=args.repeats)
    (args.out / f"svd_speed_{task}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    if task == "generate":
        columns = ["vae", "latents", "frames", "size", "steps", "s", "UNet s", "CV-VAE s", "native VAE s", "CLIP s"]
        columns += ["peak GiB", "CV-VAE peak GiB"]
        keys = ["seconds", "unet_s", "cvvae_s", "native_vae_s", "clip_s", "peak_gib", "cvvae_peak_gib"]
        head = ["vae", "latents", "frames", None, "steps"]
    else:
        columns = ["mode", "grad ckpt", "latents", "size", "trainable", "s/step", "peak GiB", "loss"]
        keys = ["s_per_step", "peak_gib", "loss"]
        head = ["mode", "checkpointing", "latents", None, "trainable"]
    lines = [f"Device: {device}, torch {torch.__version__}, random weights.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        cells = [f"{r['height']}x{r['width']}" if k is None else r.get(k, "") for k in head]
        if "error" in r:
            cells += [r["error"]] + [""] * (len(keys) - 1)
        else:
            cells += [f"{r[k]:.2f}" if isinstance(r.get(k), float) and r[k] == r[k] else "" for k in keys]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    (args.out / f"svd_speed_{task}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["generate", "finetune"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny components and sizes (smoke test)")
    parser.add_argument("--latents", type=int, nargs="+", default=[25], help="latent frames (25 -> 97 frames)")
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (generate)")
    parser.add_argument("--native", action="store_true", help="also decode with SVD's own VAE (generate)")
    parser.add_argument("--modes", nargs="+", default=["conv_out", "lora", "lora+conv_out"])
    parser.add_argument("--checkpointing", nargs="+", type=int, default=[1, 0], help="1: gradient checkpointing")
    parser.add_argument("--sizes", type=int, nargs=2, action="append", help="H W (finetune; repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="timed optimizer steps (finetune)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.sizes = args.sizes or [[320, 576], [576, 1024]]
    diffusers_logging.set_verbosity_error()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = bench_generate(args) if args.task == "generate" else bench_finetune(args)
    write_reports(args.task, rows, args)


if __name__ == "__main__":
    main()
