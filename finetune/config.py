"""Fine-tuning configuration: nested dataclasses, read from YAML, with ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from cvvae.errors import InputError

MODES = ("conv_out", "lora", "lora+conv_out")
LORA_LAYERS = ("all", "spatial", "temporal")
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class ConfigError(InputError):
    """A configuration file, key or value that cannot be used."""


@dataclass
class ModelConfig:
    base: str = "stabilityai/stable-video-diffusion-img2vid-xt"  # "tiny", a hub id or a local SVD folder
    cvvae: str = "AILab-CVC/CV-VAE"  # "tiny", a hub id or a local folder
    cvvae_subfolder: str | None = "vae3d_v1-1"
    revision: str | None = None

    def validate(self):
        if not self.base or not self.cvvae:
            raise ConfigError("model.base and model.cvvae must name a model ('tiny', a hub id or a folder)")
        if (self.base == "tiny") != (self.cvvae == "tiny"):
            raise ConfigError("model.base and model.cvvae must both be 'tiny' or both be real models")


@dataclass
class DataConfig:
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
    tiling: bool = False  # encode with CV-VAE tiling (long or large clips on small GPUs)

    @property
    def num_frames(self) -> int:
        return 1 + 4 * (self.num_latent_frames - 1)

    def validate(self):
        if self.height % 64 or self.width % 64 or self.height < 64 or self.width < 64:
            raise ConfigError(f"data.height and data.width must be multiples of 64, got {self.height}x{self.width}")
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
        if self.layers not in LORA_LAYERS:
            raise ConfigError(f"lora.layers must be one of {LORA_LAYERS}, got {self.layers!r}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/finetune"
    mode: str = "conv_out"  # conv_out | lora | lora+conv_out
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
    noise_aug_mean: float = -3.0  # log-normal noise augmentation of the conditioning latent
    noise_aug_std: float = 0.5
    conditioning_dropout: float = 0.1  # drop image embedding and image latent (classifier-free guidance)
    motion_bucket_id: int = 127
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

    def validate(self):
        if self.mode not in MODES:
            raise ConfigError(f"train.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
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
        if not 0 <= self.motion_bucket_id <= 255:
            raise ConfigError(f"train.motion_bucket_id must be in [0, 255], got {self.motion_bucket_id}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.max_steps:
            raise ConfigError(f"train.stop_after must be in [1, max_steps={self.max_steps}], got {self.stop_after}")
        if self.report_to not in ("tensorboard", "none"):
            raise ConfigError(f"train.report_to must be 'tensorboard' or 'none', got {self.report_to!r}")


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
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


def _coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp`` (int, float, str, bool, list[str], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML reads a bare no/yes as a boolean
            return "no" if not value else "yes"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) onto the nested dict ``data``."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.learning_rate=1e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse the value of override {item!r}: {err}") from err
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {item!r}: {parts[0]} is not a config section")
        section[parts[1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
    data = apply_overrides(data, overrides or [])
    return _build(FinetuneConfig, data, "").validate()


def config_from_dict(data: dict) -> FinetuneConfig:
    """Rebuild (and validate) a config from ``FinetuneConfig.to_dict()``."""
    return _build(FinetuneConfig, data, "").validate()
