"""The training loop: accelerate (mixed precision, DDP via ``accelerate launch``), PEFT modes, checkpoints.

Checkpoints (``checkpoint-STEP/``) hold the trainable tensors of the UNet and the optimizer state as
safetensors, the LR scheduler and the data position (:class:`TrainState`) as JSON, and every process's
random state: nothing in them is unpickled, and a completion marker is written last
(``cvvae.checkpoints``). Every random draw of the objective comes from a generator seeded by (seed,
global sample index), so a resumed run repeats exactly the draws an uninterrupted run makes, and two
processes with batch 1 the draws of one process with batch 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from cvvae import checkpoints
from cvvae.errors import InputError
from cvvae.outputs import write_json_atomic

from .config import FinetuneConfig
from .data import LatentCache
from .models import adapter_info, load_cvvae, load_unet, model_ids, setup_trainable, trainable_parameters
from .objective import edm_loss, sample_generator

log = logging.getLogger(__name__)
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CKPT_PREFIX = "checkpoint-"


class TrainState:
    """Optimizer step, epoch and batch within the epoch: the data position a resume restarts from."""

    def __init__(self):
        self.step = self.epoch = self.batch = self.micro = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "micro": self.micro}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batch, self.micro = (int(state[k]) for k in ("step", "epoch", "batch", "micro"))


def save_checkpoint(
    accelerator, unet, optimizer, scheduler, state: TrainState, out: Path, keep: int, write_adapter=None
) -> Path:
    """Write ``checkpoint-STEP``: every process its random state, the main process the rest; keep ``keep``.
    ``write_adapter(folder, unet)`` also makes ``checkpoint-STEP/adapter`` a usable adapter."""
    from safetensors.torch import save_file

    final = out / f"{CKPT_PREFIX}{state.step}"
    tmp = checkpoints.temporary(final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file(checkpoints.rng_state(), str(tmp / f"rng_{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:

        def write(folder: Path) -> None:
            model = accelerator.unwrap_model(unet)
            tensors = {k: v.detach().cpu().contiguous() for k, v in trainable_parameters(model).items()}
            save_file(tensors, str(folder / TRAINABLE_FILE))
            opt_tensors, opt_meta = checkpoints.optimizer_tensors(optimizer)
            save_file(opt_tensors, str(folder / OPTIMIZER_FILE))
            meta = {"train": state.state_dict(), "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
            (folder / STATE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            if write_adapter is not None:
                write_adapter(folder / "adapter", model, state.step)

        checkpoints.write_checkpoint(final, write, state.step, prepared=True)
        checkpoints.prune(out, CKPT_PREFIX, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, unet, optimizer, scheduler, state: TrainState, folder: Path) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` (InputError when it belongs to another run)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / TRAINABLE_FILE))
    params = trainable_parameters(accelerator.unwrap_model(unet))
    if set(tensors) != set(params):
        raise InputError(f"{folder} was saved by a run with another mode or LoRA config")
    meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    opt_tensors = load_file(str(folder / OPTIMIZER_FILE))
    rng = folder / f"rng_{accelerator.process_index}.safetensors"
    rng_state = load_file(str(rng)) if rng.is_file() else None
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    checkpoints.load_optimizer_tensors(optimizer, opt_tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    state.load_state_dict(meta["train"])
    if rng_state is not None:
        checkpoints.set_rng_state(rng_state)


def list_checkpoints(output_dir: Path) -> list[Path]:
    return checkpoints.list_checkpoints(output_dir, CKPT_PREFIX)


def _check_cache(dataset: LatentCache, cfg: FinetuneConfig, processes: int = 1) -> None:
    """The cache (and the held-out cache) belong to this run's models and hold a batch for every process."""
    want = model_ids(cfg.model)
    for cache in (dataset, LatentCache(cfg.train.heldout_cache) if cfg.train.heldout_cache else None):
        have = cache.manifest.get("models", {}) if cache else want
        if have != want:
            raise InputError(f"the latent cache {cache.cache_dir} was built for {have}, but this run uses {want}")
    need = cfg.train.batch_size * processes
    if len(dataset) < need:
        raise InputError(
            f"the cache holds {len(dataset)} clips, fewer than train.batch_size={cfg.train.batch_size} x "
            f"{processes} process(es); add clips or lower train.batch_size"
        )


def build_training(cfg: FinetuneConfig):
    """Accelerator, UNet (mode applied), optimizer, LR scheduler and data loader, prepared by accelerate,
    plus the frozen CV-VAE that encodes the conditioning frames."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    t, out = cfg.train, cfg.output_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=t.mixed_precision,
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
    )
    set_seed(t.seed)
    dataset = LatentCache(cfg.data.cache_dir)
    _check_cache(dataset, cfg, accelerator.num_processes)
    unet = load_unet(cfg.model)
    peft_config = setup_trainable(unet, t.mode, cfg.lora, seed=t.seed)
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision, torch.float32)
    for p in unet.parameters():
        if not p.requires_grad:
            p.data = p.data.to(weight_dtype)  # frozen weights in half precision; trainable ones stay fp32
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = list(trainable_parameters(unet).values())
    optimizer = torch.optim.AdamW(
        params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay
    )
    scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=t.max_steps * accelerator.num_processes,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=t.batch_size, shuffle=True, drop_last=True, num_workers=t.num_workers
    )
    unet, optimizer, loader, scheduler = accelerator.prepare(unet, optimizer, loader, scheduler)
    vae = load_cvvae(cfg.model, device=accelerator.device, dtype=weight_dtype)
    return accelerator, unet, vae, optimizer, scheduler, loader, dataset, peft_config


def train(cfg: FinetuneConfig, resume: str | None = None) -> dict:
    """Run (or resume) training; returns a summary with the final step, last loss and the adapter folder."""
    out = cfg.output_dir
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, resume)
    except BaseException:
        if not list_checkpoints(out):  # nothing to resume from: leave no half-made run folder behind
            for name in ("config.json", "peft_config.json", HELDOUT_LOG):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "logs", ignore_errors=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        raise


def _train(cfg: FinetuneConfig, resume: str | None) -> dict:
    t, out = cfg.train, cfg.output_dir
    accelerator, unet, vae, optimizer, scheduler, loader, dataset, peft_config = build_training(cfg)
    state = TrainState()
    ckpt = checkpoints.resume(
        out, CKPT_PREFIX, lambda f: load_checkpoint(accelerator, unet, optimizer, scheduler, state, f), resume
    )
    if ckpt is not None:
        accelerator.print(f"resumed from {ckpt} at step {state.step}")
    if accelerator.is_main_process:
        write_json_atomic(out / "config.json", cfg.to_dict())
        write_json_atomic(out / "peft_config.json", {"mode": t.mode, "peft_config": peft_config})
    if t.report_to != "none":
        accelerator.init_trackers("finetune", config={k: str(v) for k, v in _flat(cfg.to_dict()).items()})
    write_adapter = None
    if t.mode != "full":

        def write_adapter(folder: Path, model, step: int) -> None:
            from cvvae.pipelines.adapters import save_adapter

            save_adapter(folder, model, adapter_info(cfg, peft_config, dataset.summary(), step, signatures(model)))

    def signatures(model) -> dict:
        """The base models' signatures (no adapter mode trains the UNet's first layer, conv_in)."""
        from cvvae.pipelines.adapters import signature

        return {"unet": signature(model), "vae": signature(vae.module)}

    loss_value = _loop(cfg, accelerator, unet, vae, optimizer, scheduler, loader, state, write_adapter)
    result = None
    if state.step >= t.max_steps:
        result = save_final(cfg, accelerator, unet, peft_config, dataset, state.step, signatures)
    accelerator.end_training()
    key = "unet" if t.mode == "full" else "adapter"
    return {"step": state.step, "loss": loss_value, key: str(result) if result else None}


def _loop(cfg, accelerator, unet, vae, optimizer, scheduler, loader, state: TrainState, write_adapter=None) -> float:
    from tqdm.auto import tqdm

    t, out = cfg.train, cfg.output_dir
    scaling = LatentCache(cfg.data.cache_dir).scaling
    stop = t.stop_after or t.max_steps
    params = [p for p in unet.parameters() if p.requires_grad]
    bar = tqdm(total=t.max_steps, initial=state.step, desc="training", disable=not accelerator.is_local_main_process)
    loss_value = math.nan
    while state.step < stop:
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batch) if state.batch else loader
        for batch in batches:
            # global sample indices of this process's part of the micro-batch (as accelerate splits batches)
            first = (state.micro * accelerator.num_processes + accelerator.process_index) * t.batch_size
            gens = [sample_generator(t.seed, first + j) for j in range(t.batch_size)]
            with accelerator.accumulate(unet):
                loss = edm_loss(unet, vae, batch, t, scaling, gens)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batch += 1
            state.micro += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            loss_value = accelerator.gather(loss.detach()).mean().item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss became {loss_value} at step {state.step}; lower the learning rate")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if state.step % t.log_every == 0 or state.step == 1:
                accelerator.log({"loss": loss_value, "lr": scheduler.get_last_lr()[0]}, step=state.step)
            if state.step % t.checkpoint_every == 0 or state.step == stop:
                save_checkpoint(accelerator, unet, optimizer, scheduler, state, out, t.keep_checkpoints, write_adapter)
                if t.heldout_cache and accelerator.is_main_process:
                    _log_heldout(cfg, accelerator, unet, vae, state.step)
            if t.sample_every and state.step % t.sample_every == 0:
                _sample(cfg, accelerator, unet, state.step)
            if state.step >= stop:
                break
        else:
            state.epoch, state.batch = state.epoch + 1, 0
    bar.close()
    return loss_value


HELDOUT_LOG = "heldout.jsonl"


def heldout_loss(unet, vae, cache: LatentCache, cfg, repeats: int, batch_size: int = 8) -> float:
    """Mean EDM loss over every clip of ``cache``, ``repeats`` draws each, from generators fixed by (clip,
    draw) alone: the same draws at every checkpoint and in every run, so losses compare across learning rates."""
    t = cfg.train
    items = [(i, r) for i in range(len(cache)) for r in range(repeats)]
    device = next(unet.parameters()).device
    total, was_training = 0.0, unet.training
    unet.eval()
    with torch.no_grad():
        for k in range(0, len(items), batch_size):
            part = items[k : k + batch_size]
            batch = torch.utils.data.default_collate([cache[i] for i, _ in part])
            batch = {name: v.to(device) for name, v in batch.items()}
            gens = [sample_generator(10**9 + i, r) for i, r in part]  # never a training sample's stream
            total += edm_loss(unet, vae, batch, t, cache.scaling, gens).item() * len(part)
    unet.train(was_training)
    return total / len(items)


def _log_heldout(cfg, accelerator, unet, vae, step: int) -> None:
    """Append ``{"step", "heldout_loss"}`` to ``OUTPUT/heldout.jsonl`` (and to the trackers)."""
    cache = LatentCache(cfg.train.heldout_cache)
    with accelerator.autocast():
        loss = heldout_loss(accelerator.unwrap_model(unet), vae, cache, cfg, cfg.train.heldout_repeats)
    accelerator.log({"heldout_loss": loss}, step=step)
    with open(cfg.output_dir / HELDOUT_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "heldout_loss": loss}) + "\n")


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        flat.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return flat


def save_final(cfg, accelerator, unet, peft_config, dataset, step: int, signatures=None) -> Path | None:
    """Write ``OUTPUT/adapter`` (and ``OUTPUT/unet`` merged, when asked) from the main process; mode
    ``full`` writes only ``OUTPUT/unet``, a whole diffusers UNet folder."""
    from cvvae.pipelines.adapters import save_adapter

    accelerator.wait_for_everyone()
    if cfg.train.mode == "full":
        folder = cfg.output_dir / "unet"
        if accelerator.is_main_process:
            save_unet(accelerator.unwrap_model(unet), folder)
        accelerator.wait_for_everyone()
        return folder
    folder = cfg.output_dir / "adapter"
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        sig = signatures(model) if signatures else None
        save_adapter(folder, model, adapter_info(cfg, peft_config, dataset.summary(), step, sig))
        if cfg.train.merge_unet:
            merge_to_unet(cfg.model, folder, cfg.output_dir / "unet")
    accelerator.wait_for_everyone()
    return folder


def merge_to_unet(model_cfg, adapter: Path, out: Path) -> Path:
    """Load a fresh base UNet, apply ``adapter``, fold LoRA in and save a full diffusers UNet folder (atomically)."""
    from cvvae.pipelines.adapters import apply_adapter, merge_adapter

    unet = load_unet(model_cfg)
    apply_adapter(unet, adapter)
    merge_adapter(unet)
    return save_unet(unet, out)


def save_unet(unet, out: Path) -> Path:
    """``unet.save_pretrained`` (fp32 safetensors) into a temporary folder renamed to ``out`` when complete."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _sample(cfg, accelerator, unet, step: int) -> None:
    """Write a sample clip with the current weights (main process only; see evaluate.sample_during_training)."""
    if not accelerator.is_main_process:
        return
    from .evaluate import sample_during_training

    try:
        sample_during_training(cfg, accelerator.unwrap_model(unet), step)
    except Exception as err:  # a failed preview must not end a long run
        log.warning("sample at step %d failed: %s", step, err)
