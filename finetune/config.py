"""Fine-tuning configuration: nested dataclasses, read from YAML with ``section.key=value`` overrides
(``cvvae.config`` does the reading and type checks)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cvvae import config as config_io
from cvvae.config import ConfigError
from cvvae.hub import CVVAE_HUB_ID, DEFAULT_SUBFOLDER
from cvvae.pipelines.adapters import MODES, MODULE_NAME
from cvvae.pipelines.defaults import LIMITS, MOTION_BUCKET_ID

LORA_LAYERS = ("all", "spatial", "temporal")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRAIN_MODES = (*MODES, "full")  # full: the whole UNet (written as a UNet folder, not an adapter)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
__all__ = ["ConfigError", "FinetuneConfig", "LatentCacheConfig", "LoraSettings", "ModelConfig", "load_config"]


@dataclass
class ModelConfig:
    base: str = "stabilityai/stable-video-diffusion-img2vid-xt"  # "tiny", a hub id or a local SVD folder
    cvvae: str = CVVAE_HUB_ID  # "tiny", a hub id or a local folder
    cvvae_subfolder: str | None = DEFAULT_SUBFOLDER
    revision: str | None = None

    def validate(self):
        if not self.base or not self.cvvae:
            raise ConfigError("model.base and model.cvvae must name a model ('tiny', a hub id or a folder)")
        if (self.base == "tiny") != (self.cvvae == "tiny"):
            raise ConfigError("model.base and model.cvvae must both be 'tiny' or both be real models")


@dataclass
class LatentCacheConfig:
    """Which clips the latent cache holds and how they are cut (the ``data`` section)."""

    videos: str = ""  # a folder of videos, or a .csv / .jsonl list (columns: path, optional fps)
    cache_dir: str = "cache"
    height: int = 320
    width: int = 576
    num_latent_frames: int = 25  # clips of 1 + 4 (n - 1) frames
    stride: int = 1  # take every stride-th source frame (ignored when fps is set)
    fps: float | None = None  # resample clips to about this fps (stride = round(source fps / fps))
    clips_per_video: int = 1  # at most this many non-overlapping clips per video
    shard_size: int = 8  # clips per safetensors shard
    resize: str = "crop"  # "crop" (cover + centre crop) or "stretch"
    tiling: bool = True  # the model's default: whole clips when they fit the GPU, else the cheapest tiling that fits

    def num_frames(self, temporal_factor: int = 4) -> int:
        """Frames of one clip for a VAE of ``temporal_factor`` (CV-VAE: 1 + 4 (n - 1); an image VAE: n)."""
        return 1 + temporal_factor * (self.num_latent_frames - 1)

    def validate(self):
        r = LIMITS["height"]  # the sizes generation takes
        if any(v % r.step or v not in r for v in (self.height, self.width)):
            raise ConfigError(
                f"data.height and data.width must be multiples of {r.step:g} in {r.low:g}..{r.high:g}, "
                f"got {self.height}x{self.width}"
            )
        if self.num_latent_frames < 2:
            raise ConfigError(f"data.num_latent_frames must be >= 2, got {self.num_latent_frames}")
        if self.stride < 1 or self.clips_per_video < 1 or self.shard_size < 1:
            raise ConfigError("data.stride, data.clips_per_video and data.shard_size must be >= 1")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"data.fps must be > 0, got {self.fps}")
        if self.resize not in ("crop", "stretch"):
            raise ConfigError(f"data.resize must be 'crop' or 'stretch', got {self.resize!r}")


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    layers: str = "all"  # "all", "spatial" (transformer_blocks) or "temporal" (temporal_transformer_blocks)

    def validate(self):
        if self.rank < 1 or self.alpha <= 0:
            raise ConfigError(f"lora.rank must be >= 1 and lora.alpha > 0, got {self.rank}, {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (e.g. to_q)")
        if not isinstance(self.target_modules, list) or not all(
            isinstance(t, str) and re.fullmatch(MODULE_NAME, t) for t in self.target_modules
        ):
            raise ConfigError(
                f"lora.target_modules must be a list of module names (letters, digits, '_' and '.'), "
                f"got {self.target_modules!r:.200}"
            )
        if self.layers not in LORA_LAYERS:
            raise ConfigError(f"lora.layers must be one of {LORA_LAYERS}, got {self.layers!r}")


@dataclass
class AdapterTrainConfig:
    """How the adapter is trained (the ``train`` section)."""

    output_dir: str = "runs/finetune"
    mode: str = "conv_out"  # conv_out | lora | lora+conv_out | full
    max_steps: int = 5000  # optimizer steps
    batch_size: int = 1  # per GPU
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    # EDM noise levels (log-normal) and conditioning, as in SVD fine-tuning practice
    p_mean: float = 0.7
    p_std: float = 1.6
    noise_aug_mean: float = -3.0  # log-normal strength of the conditioning image's noise (in pixels, as at inference)
    noise_aug_std: float = 0.5
    conditioning_dropout: float = 0.1  # drop image embedding and image latent (classifier-free guidance)
    motion_bucket_id: int = MOTION_BUCKET_ID
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 0  # 0: no sample clips during training
    sample_steps: int = 25
    sample_preset: str = "svd-xt"  # generation preset for samples (the tiny base always samples with "tiny")
    sample_image: str | None = None  # conditioning image of the samples (default: first frame of the first clip)
    stop_after: int | None = None  # stop (after checkpointing) at this step, e.g. to end a time-boxed job
    num_workers: int = 0
    report_to: str = "tensorboard"  # or "none"
    merge_unet: bool = False  # also write the adapter merged into a full UNet folder
    heldout_cache: str | None = None  # a latent cache of held-out clips: its EDM loss at every checkpoint
    heldout_repeats: int = 4  # noise draws per held-out clip (fixed across checkpoints and runs)

    def validate(self):
        if self.mode not in TRAIN_MODES:
            raise ConfigError(f"train.mode must be one of {', '.join(TRAIN_MODES)}, got {self.mode!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"train.lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"train.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not 0 <= self.conditioning_dropout < 1:
            raise ConfigError(f"train.conditioning_dropout must be in [0, 1), got {self.conditioning_dropout}")
        if self.p_std <= 0 or self.noise_aug_std < 0:
            raise ConfigError("train.p_std must be > 0 and train.noise_aug_std >= 0")
        if self.motion_bucket_id not in LIMITS["motion_bucket_id"]:
            raise ConfigError(f"train.motion_bucket_id must be in [0, 255], got {self.motion_bucket_id}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.max_steps:
            raise ConfigError(f"train.stop_after must be in [1, max_steps={self.max_steps}], got {self.stop_after}")
        if self.report_to not in ("tensorboard", "none"):
            raise ConfigError(f"train.report_to must be 'tensorboard' or 'none', got {self.report_to!r}")


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: LatentCacheConfig = field(default_factory=LatentCacheConfig)
    train: AdapterTrainConfig = field(default_factory=AdapterTrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> FinetuneConfig:
        for section in (self.model, self.data, self.train, self.lora):
            section.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    return config_io.load_config(FinetuneConfig, path, overrides or [])


def config_from_dict(data: dict) -> FinetuneConfig:
    """Rebuild (and validate) a config from ``FinetuneConfig.to_dict()``."""
    return config_io.build(FinetuneConfig, data).validate()
