"""The training loop (accelerate): a CV-VAE against a frozen 2-D VAE, or the 2-D VAE itself.

Every step's data and noise come from generators seeded with ``(seed, step)``, and checkpoints
hold weights, optimisers, schedulers, EMA and the step, so a run killed and resumed ends exactly
where an uninterrupted run ends (on the same hardware and thread count).

Fixes to the release's training (reference facts section 5, items 14-17): the cosine schedule is
clamped at its floor after ``steps``; each scheduler steps only when its optimiser steps; the
``random`` mapping draws per sample; the discriminator is optional; no undefined ``logvar_2d``
(fixed loss weights instead of learned log-variances); the discriminator has no unused parameters.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import checkpoints
from .config import VAETrainConfig, config_to_dict
from .data import CropSampler, StillSampler, TrainingData, load_clips, load_stills, split_clip
from .discriminator import PatchDiscriminator3D
from .inflate import load_frozen_vae2d
from .losses import (
    adaptive_weight,
    decoder_side_reg,
    discriminator_loss,
    encoder_side_reg,
    generator_loss,
    kl_loss,
)

CKPT_PREFIX, CKPT_MARKER = "checkpoint-", "state.json"  # the marker is written last
VAE2D_BLOCKS = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def build_vae2d(cfg: VAETrainConfig):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        kwargs = {"latent_channels": 4, "layers_per_block": 1, **VAE2D_BLOCKS, **cfg.vae2d_model}
        kwargs["block_out_channels"] = tuple(kwargs["block_out_channels"])
        return AutoencoderKL(**kwargs)


class GeneratorLoss(nn.Module):
    """Holds the trainable VAE and the frozen helpers; ``forward`` returns the generator losses."""

    def __init__(self, cfg: VAETrainConfig, model: nn.Module, vae2d: nn.Module | None, lpips: nn.Module | None):
        super().__init__()
        self.cfg, self.model, self.vae2d, self.lpips = cfg, model, vae2d, lpips

    def _perceptual(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.lpips is None or self.cfg.loss.lpips_weight == 0:
            return recon.new_zeros(())
        # [B, 3, T, H, W] -> [(B T), 3, H, W]
        return self.lpips(recon.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1)).mean()

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        if self.cfg.kind == "vae2d":
            post = self.model.encode(x[:, :, 0]).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(post.mean)
            recon = self.model.decode(z).sample[:, :, None]
        else:
            post = self.model.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(post.mean)
            recon = self.model.decode(z).sample[:, :, : x.shape[2]]
        out = {"recon": recon, "l1": (recon - x).abs().mean(), "kl": kl_loss(post.mean, post.logvar, x[0].numel())}
        out["lpips"] = self._perceptual(recon, x)
        nll = lc.l1_weight * out["l1"] + lc.lpips_weight * out["lpips"]
        if self.cfg.kind == "cvvae" and lc.reg_decoder > 0:
            out["reg_dec"], out["dec2d"] = decoder_side_reg(self.vae2d, z, x, lc.mapping, lc.reg_kind, generator)
            nll = nll + lc.reg_decoder * out["reg_dec"]
        if self.cfg.kind == "cvvae" and lc.reg_encoder > 0:
            decode = lambda zz: self.model.decode(zz).sample  # noqa: E731
            out["reg_enc"], _ = encoder_side_reg(self.vae2d, decode, x, lc.mapping, lc.reg_kind, generator)
            nll = nll + lc.reg_encoder * out["reg_enc"]
        out["nll"] = nll  # every reconstruction term, regularisation included (the GAN's adaptive weight uses it)
        out["total"] = nll + lc.kl_weight * out["kl"]
        return out


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up, cosine to ``floor`` at ``total``, then flat (never rises again)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Builds everything from a ``VAETrainConfig``; ``run()`` trains to ``cfg.steps`` (resuming if it can)."""

    def __init__(self, cfg: VAETrainConfig, stop_after: int | None = None) -> None:
        from accelerate import Accelerator

        self.cfg, self.stop_after = cfg, stop_after
        self.out = Path(cfg.output_dir)
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(self.out))
        self.model, self.vae2d = self._models()
        lpips = None
        if cfg.loss.lpips_weight > 0:
            from ..lpips import load_lpips

            lpips = load_lpips(cfg.loss.lpips_weights)
        self.gen_loss = GeneratorLoss(cfg, self.model, self.vae2d, lpips)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
        lam = lambda s: lr_factor(s, cfg.warmup, cfg.steps, cfg.lr_floor)  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lam)
        self.disc = self.dopt = self.dsched = None
        if cfg.loss.disc_weight > 0:
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed + 1)
                self.disc = PatchDiscriminator3D(cfg.loss.disc_channels)
            self.dopt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
            self.dsched = torch.optim.lr_scheduler.LambdaLR(self.dopt, lam)
            self.disc, self.dopt = self.acc.prepare(self.disc, self.dopt)
        self.gen_loss, self.opt = self.acc.prepare(self.gen_loss, self.opt)
        self.ema = None
        if cfg.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.model.parameters(), decay=cfg.ema_decay)
        self.step = 0

    def _models(self):
        cfg = self.cfg
        if cfg.kind == "vae2d":
            return build_vae2d(cfg).train(), None
        from ..loading import model_class
        from .inflate import inflate_vae

        vae2d = load_frozen_vae2d(cfg.vae2d)
        model = model_class(cfg.init).from_pretrained(cfg.init) if cfg.init else inflate_vae(vae2d, seed=cfg.seed)
        model.disable_tiling()
        return model.train(), vae2d

    # ------------------------------------------------------------------ data

    def _data(self) -> TrainingData:
        d = self.cfg.data
        clips = load_clips(d.videos, d.short_side, d.cache_dir)
        train = [split_clip(c, d.holdout)[0] for c in clips]
        frames = CropSampler(train, d.size, d.frames, d.frame_stride) if self.cfg.kind == "cvvae" else None
        stills = StillSampler(load_stills(d.images), d.size) if d.images else None
        return TrainingData(CropSampler(train, d.size, 1), frames, stills, d.synthetic_ratio)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Generator]:
        """The batch and noise generator of ``step`` (functions of ``(seed, step)`` only)."""
        rng = np.random.default_rng([self.cfg.seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        d = self.cfg.data
        if self.data.frames is None or rng.random() < d.image_ratio:
            x = self.data.images(d.image_batch, rng)
        else:
            x = self.data.clips(d.video_batch, rng)
        return x.to(self.acc.device), gen

    # ------------------------------------------------------------------ steps

    def train_step(self, step: int) -> dict[str, float]:
        cfg, lc = self.cfg, self.cfg.loss
        x, gen = self.batch(step)
        gan_on = self.disc is not None and step >= lc.disc_start
        with self.acc.autocast():
            out = self.gen_loss(x, gen)
            total = out["total"]
            if gan_on:
                g_loss = generator_loss(self.disc(out["recon"]))
                last = self.acc.unwrap_model(self.gen_loss).model.decoder.conv_out.weight
                d_weight = adaptive_weight(out["nll"], g_loss, last) * lc.disc_weight
                total = total + d_weight * g_loss
                out["g_loss"], out["d_weight"] = g_loss, d_weight
        self.opt.zero_grad(set_to_none=True)
        self.acc.backward(total)
        if cfg.grad_clip:
            self.acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        if gan_on:
            with self.acc.autocast():
                out["d_loss"] = discriminator_loss(lc.disc_loss, self.disc(x), self.disc(out["recon"].detach()))
            self.dopt.zero_grad(set_to_none=True)
            self.acc.backward(out["d_loss"])
            self.dopt.step()
            self.dsched.step()
        logs = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}
        logs["lr"] = self.sched.get_last_lr()[0]
        return logs

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Write ``checkpoint-STEP`` (temporary folder, ``state.json`` last, then rename); keep the newest few."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            model = self.acc.unwrap_model(self.model)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            state = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}
            if self.disc is not None:
                state.update(
                    disc=self.acc.unwrap_model(self.disc).state_dict(),
                    dopt=self.dopt.state_dict(),
                    dsched=self.dsched.state_dict(),
                )
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            torch.save(state, tmp / "training_state.pt")  # tensors and numbers: loaded with weights_only=True
            meta = {"step": self.step, "config": config_to_dict(self.cfg)}
            (tmp / CKPT_MARKER).write_text(json.dumps(meta, indent=1))

        final = checkpoints.write_checkpoint(
            self.out / f"{CKPT_PREFIX}{self.step:07d}", write, self.step, marker=CKPT_MARKER
        )
        checkpoints.prune(self.out, CKPT_PREFIX, self.cfg.keep_checkpoints, CKPT_MARKER)
        return final

    def load(self, ckpt: Path) -> None:
        """Restore everything :meth:`save` wrote."""
        from safetensors.torch import load_file

        weights = load_file(str(ckpt / "model.safetensors"))
        state = torch.load(ckpt / "training_state.pt", weights_only=True)
        step = json.loads((ckpt / CKPT_MARKER).read_text())["step"]
        self.acc.unwrap_model(self.model).load_state_dict(weights)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.disc is not None and "disc" in state:
            self.acc.unwrap_model(self.disc).load_state_dict(state["disc"])
            self.dopt.load_state_dict(state["dopt"])
            self.dsched.load_state_dict(state["dsched"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.step = int(step)

    def resume(self) -> bool:
        """Load the newest complete checkpoint of ``output_dir`` that loads (older ones when it does not)."""
        return checkpoints.resume(self.out, CKPT_PREFIX, self.load, "latest", CKPT_MARKER) is not None

    # ------------------------------------------------------------------ run

    def run(self) -> Path:
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.data = self._data()  # bad clips fail before the run folder exists
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=1))
        resumed = self.resume()
        self.acc.init_trackers("logs")
        end = cfg.steps if self.stop_after is None else min(cfg.steps, self.stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.kind}", disable=not self.acc.is_main_process)
        if resumed:
            bar.write(f"resumed from step {self.step}")
        t0 = time.time()
        if cfg.eval_every and self.step == 0 and self.acc.is_main_process:
            self.log_compatibility()  # the starting point (for an inflated model: compatible by construction)
        while self.step < end:
            logs = self.train_step(self.step)
            self.step += 1
            bar.update()
            if self.step % cfg.log_every == 0 or self.step == end:
                self.acc.log(logs, step=self.step)
                bar.set_postfix(l1=f"{logs['l1']:.4f}", reg=f"{logs.get('reg_dec', 0.0):.4f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == end:
                if self.acc.is_main_process:
                    self.save()
                self.acc.wait_for_everyone()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.acc.is_main_process:
                self.write_sample()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.acc.is_main_process:
                self.log_compatibility()
        bar.close()
        final = self.out / "final"
        if self.step >= cfg.steps and self.acc.is_main_process:
            self.export(final)
            if cfg.kind == "cvvae":
                self.write_sample()
        self.acc.end_training()
        print(f"{self.step} steps in {time.time() - t0:.0f} s -> {self.out}")
        return final

    def export(self, folder: Path) -> None:
        """``save_pretrained`` of the trained model (EMA weights when EMA is on)."""
        model = self.acc.unwrap_model(self.model)
        if self.ema is not None:
            self.ema.store(model.parameters())
            self.ema.copy_to(model.parameters())
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        if self.ema is not None:
            self.ema.restore(model.parameters())

    @torch.no_grad()
    def log_compatibility(self) -> dict:
        """Append the (a)-(d) compatibility measures on held-out windows to ``output_dir/compatibility.jsonl``."""
        from .evaluate import evaluate_model, held_out_windows

        if self.cfg.kind != "cvvae":
            return {}
        d = self.cfg.data
        if not hasattr(self, "_eval_windows"):
            self._eval_windows = held_out_windows(d.videos, d.short_side, d.frames, d.holdout, 4, d.cache_dir)
        model = self.acc.unwrap_model(self.model).eval()
        result = evaluate_model(model, self.vae2d, self._eval_windows, "slice")
        model.train()
        row = {"step": self.step, **{k: v for k, v in result.items() if k != "d_latents"}}
        row["frechet"] = result["d_latents"]["frechet"]
        with open(self.out / "compatibility.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return row

    @torch.no_grad()
    def write_sample(self) -> Path:
        """mp4 of a held-out clip: input | 3-D reconstruction | frozen 2-D decoder on 3-D latents."""
        from .. import video
        from .losses import batch_to_frames, frames_to_batch

        d = self.cfg.data
        clip = split_clip(load_clips(d.videos, d.short_side, d.cache_dir)[0], d.holdout)[1]
        frames = clip[: 1 + 4 * ((min(len(clip), 33) - 1) // 4)]
        x = video.frames_to_tensor(np.ascontiguousarray(frames)).to(self.acc.device)  # (1, 3, T, H, W)
        model = self.acc.unwrap_model(self.model).eval()
        z = model.encode(x).latent_dist.mode()
        recon = model.decode(z).sample[:, :, : x.shape[2], : x.shape[3], : x.shape[4]]
        dec2d = batch_to_frames(self.vae2d.decode(frames_to_batch(z)).sample, z.shape[2])
        dec2d = dec2d.repeat_interleave(4, dim=2)[:, :, 3 : 3 + x.shape[2]]  # latent k shown for frames 4k-3..4k
        model.train()
        panels = [video.tensor_to_frames(t) for t in (x, recon, dec2d)]
        path = self.out / "samples" / f"step-{self.step:07d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        return video.write_video(path, video.side_by_side(*panels), fps=30.0)
