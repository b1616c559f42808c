"""Fine-tuned UNet adapters: one folder, ``adapter.safetensors`` + ``adapter.json``.

The format is shared by the fine-tuning script (which writes it) and every pipeline (which reads
it). An adapter holds only what was trained:

- ``conv_out``: a replacement for the UNet's output convolution (``conv_out.weight``/``.bias``),
  the cheapest way to re-map the UNet's noise prediction onto CV-VAE latents;
- ``lora``: PEFT LoRA tensors, keyed as ``peft.get_peft_model_state_dict`` returns them;
- ``lora+conv_out``: both.

``adapter.json`` holds the :class:`AdapterInfo` (mode, the LoRA config as a JSON dict, the base
UNet and CV-VAE it was trained for, the training step, data and free-form extras) and a format tag.
The SVD UNet has no ``PeftAdapterMixin``, so LoRA goes through ``peft.inject_adapter_in_model``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..outputs import atomic_path, write_json_atomic

ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "cvvae-unet-adapter"
FORMAT_VERSION = 1
MODES = ("conv_out", "lora", "lora+conv_out")
CONV_OUT = "conv_out"
ADAPTER_NAME = "default"


@dataclass
class AdapterInfo:
    """What an adapter folder holds and what it was trained for."""

    mode: str
    peft_config: dict | None = None  # LoraConfig.to_dict()-style, JSON-safe (see lora_config_dict)
    base_unet: str = ""
    cvvae: str = ""
    step: int = 0
    data: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    base_signature: dict = field(default_factory=dict)  # "unet" / "vae" -> signature() of the models trained on

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"adapter mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.has_lora and not self.peft_config:
            raise InputError(f"adapter mode {self.mode!r} needs a peft_config (the LoRA settings)")

    @property
    def has_lora(self) -> bool:
        return "lora" in self.mode

    @property
    def has_conv_out(self) -> bool:
        return "conv_out" in self.mode


SIGNATURE_VALUES = 16


def signature(module: nn.Module) -> list[float]:
    """A few weights of ``module``'s first parameter (for a UNet ``conv_in``, which no adapter mode trains):
    enough to tell two models apart, the same in fp32, fp16 or bf16 (compare with :func:`same_model`)."""
    first = next(module.parameters()).detach().flatten().float().cpu()
    picks = torch.linspace(0, len(first) - 1, SIGNATURE_VALUES).long()
    return [round(float(v), 6) for v in first[picks]]


def same_model(a: list[float], b: list[float]) -> bool:
    """Signatures of the same weights (within half precision's rounding)."""
    return len(a) == len(b) and bool(torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-3))


def base_mismatch(info: AdapterInfo, unet: nn.Module | None = None, vae: nn.Module | None = None) -> str | None:
    """What differs between the models an adapter was trained on and ``unet`` / ``vae`` (None: nothing
    recorded differs; adapters without signatures are not checked)."""
    problems = []
    for what, module, name in (("unet", unet, info.base_unet), ("vae", vae, info.cvvae)):
        recorded = info.base_signature.get(what)
        if module is not None and recorded and not same_model(recorded, signature(module)):
            label = "UNet" if what == "unet" else "VAE"
            problems.append(f"its base {label} ({name or 'unnamed'}) is not the one loaded")
    return "; ".join(problems) or None


def lora_config_dict(config) -> dict:
    """A ``peft.LoraConfig`` (or its ``to_dict()``) as a JSON-safe dict (sets -> sorted lists, enums -> values)."""

    def clean(v):
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (set, frozenset)):
            return sorted(clean(x) for x in v)
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        return v

    data = config if isinstance(config, dict) else config.to_dict()
    return {k: clean(v) for k, v in data.items()}


# The LoRA fields adapters use, each a plain value: every other field of an adapter's config is dropped.
LORA_FIELDS = {
    "r": int,
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "target_modules": (str, list),
    "bias": str,
    "init_lora_weights": (bool, str),
    "use_rslora": bool,
}
LORA_CHOICES = {"bias": ("none",), "init_lora_weights": (True, False, "gaussian")}
MAX_PATTERN = 1000  # characters of a target_modules regular expression
MODULE_NAME = r"[\w.]{1,200}"  # a target_modules entry that is a module name, not a pattern
MATCH_SECONDS = 0.05  # per module name: a pathological expression is refused instead of hanging


def lora_settings(data: dict) -> dict:
    """The fields of ``LORA_FIELDS`` from an adapter's LoRA config, checked; InputError for anything else."""
    import math

    import regex

    if not isinstance(data, dict):
        raise InputError(f"the adapter's LoRA config must be a mapping, got {type(data).__name__}")
    kept = {k: data[k] for k in LORA_FIELDS if data.get(k) is not None}
    for key, value in kept.items():
        if not isinstance(value, LORA_FIELDS[key]) or (key != "init_lora_weights" and isinstance(value, bool)) != (
            LORA_FIELDS[key] is bool
        ):
            raise InputError(f"LoRA field {key} has a value of the wrong type: {value!r}")
        if key in LORA_CHOICES and value not in LORA_CHOICES[key]:
            raise InputError(f"LoRA field {key} must be one of {LORA_CHOICES[key]}, got {value!r}")
    if not 1 <= kept.get("r", 8) <= 4096 or not math.isfinite(kept.get("lora_alpha", 8)):
        raise InputError(
            f"LoRA rank must be in 1..4096 and alpha finite, got {kept.get('r')}, {kept.get('lora_alpha')}"
        )
    if not 0 <= kept.get("lora_dropout", 0) < 1:
        raise InputError(f"LoRA dropout must be in [0, 1), got {kept['lora_dropout']}")
    targets = kept.get("target_modules")
    if isinstance(targets, str):
        if len(targets) > MAX_PATTERN:
            raise InputError(f"LoRA target_modules is a pattern of {len(targets)} characters; at most {MAX_PATTERN}")
        try:
            regex.compile(targets)
        except regex.error as err:
            raise InputError(f"LoRA target_modules is not a valid regular expression ({err})") from err
    elif isinstance(targets, list) and not all(
        isinstance(t, str) and regex.fullmatch(MODULE_NAME, t) for t in targets
    ):
        raise InputError("LoRA target_modules must be module names (letters, digits, '_' and '.') or one pattern")
    return kept


def matching_modules(model: nn.Module, pattern: str) -> list[str]:
    """The names of ``model``'s modules that ``pattern`` fully matches, each match bounded in time."""
    import regex

    try:
        return [n for n, _ in model.named_modules() if n and regex.fullmatch(pattern, n, timeout=MATCH_SECONDS)]
    except TimeoutError as err:
        raise InputError(
            f"LoRA target_modules {pattern[:60]!r} takes too long to match (a pathological pattern)"
        ) from err


def lora_config_from_dict(data: dict, model: nn.Module | None = None):
    """Rebuild a ``peft.LoraConfig`` from the checked ``LORA_FIELDS`` only; with ``model``, a pattern in
    ``target_modules`` is matched here (bounded) and peft gets the module names."""
    from peft import LoraConfig

    kwargs = lora_settings(data)
    if isinstance(kwargs.get("target_modules"), list):
        kwargs["target_modules"] = set(kwargs["target_modules"])
    elif model is not None and isinstance(kwargs.get("target_modules"), str):
        names = matching_modules(model, kwargs["target_modules"])
        if not names:
            raise InputError(f"LoRA target_modules {kwargs['target_modules'][:60]!r} matches no layer of the UNet")
        kwargs["target_modules"] = set(names)
    kwargs["inference_mode"] = True
    return LoraConfig(**kwargs)


def _conv_out_module(unet: nn.Module) -> nn.Module:
    module = getattr(unet, CONV_OUT, None)
    if module is None:
        raise InputError(f"{type(unet).__name__} has no conv_out layer, so a conv_out adapter cannot apply")
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def adapter_state_dict(unet: nn.Module, info: AdapterInfo) -> dict[str, torch.Tensor]:
    """The tensors an adapter of ``info.mode`` holds, taken from ``unet``."""
    tensors: dict[str, torch.Tensor] = {}
    if info.has_lora:
        lora = get_lora_state_dict(unet)
        if not lora:
            raise InputError("the UNet has no LoRA layers to save (inject them first, e.g. with add_lora)")
        tensors.update(lora)
    if info.has_conv_out:
        for name, p in _conv_out_module(unet).state_dict().items():
            tensors[f"{CONV_OUT}.{name}"] = p
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def get_lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``unet`` (empty when none are injected)."""
    from peft import get_peft_model_state_dict

    if not any("lora_" in n for n, _ in unet.named_parameters()):
        return {}
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)


def add_lora(unet: nn.Module, config) -> nn.Module:
    """Inject fresh LoRA layers described by ``config`` (a LoraConfig or its dict) into ``unet``, in place."""
    from peft import inject_adapter_in_model

    config = lora_config_from_dict(lora_config_dict(config), unet)  # our fields only, pattern matched here
    return inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)


def save_adapter(folder: str | Path, unet: nn.Module, info: AdapterInfo) -> Path:
    """Write the trainable adapter tensors of ``unet`` and ``adapter.json`` into ``folder`` (atomically each)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(unet, info)
    if info.peft_config is not None:
        info.peft_config = lora_config_dict(info.peft_config)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "mode": info.mode}
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    # The JSON goes last: a folder with adapter.json is complete.
    write_json_atomic(folder / ADAPTER_CONFIG, {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(info)})
    return folder


def load_adapter_info(folder: str | Path) -> AdapterInfo:
    """Read ``adapter.json``; InputError on a missing or invalid adapter folder."""
    folder = Path(folder)
    cfg, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not folder.is_dir():
        raise InputError(f"adapter folder {folder} does not exist")
    if not cfg.is_file() or not weights.is_file():
        raise InputError(f"{folder} is not an adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {cfg}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{cfg} is not a CV-VAE adapter description (format tag {FORMAT!r} missing)")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{cfg} has format version {data['format_version']}; this code reads <= {FORMAT_VERSION}")
    fields = {k: data[k] for k in AdapterInfo.__dataclass_fields__ if k in data}
    try:
        return AdapterInfo(**fields)
    except TypeError as err:
        raise InputError(f"{cfg} is incomplete: {err}") from err


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(f"cannot read adapter weights {path}: {err}") from err


def apply_adapter(unet: nn.Module, folder: str | Path) -> AdapterInfo:
    """Load the adapter in ``folder`` into ``unet`` in place (LoRA injected, conv_out replaced); strict keys."""
    from peft import set_peft_model_state_dict

    info = load_adapter_info(folder)
    tensors = _load_tensors(Path(folder) / ADAPTER_WEIGHTS)
    conv = {k[len(CONV_OUT) + 1 :]: v for k, v in tensors.items() if k.startswith(CONV_OUT + ".") and "lora_" not in k}
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    unknown = set(tensors) - set(lora) - {f"{CONV_OUT}.{k}" for k in conv}
    if unknown or bool(lora) != info.has_lora or bool(conv) != info.has_conv_out:
        raise InputError(
            f"adapter {folder} does not match its mode {info.mode!r}: "
            f"{len(lora)} LoRA tensors, {len(conv)} conv_out tensors, unknown keys {sorted(unknown)[:5]}"
        )
    if info.has_lora:
        if get_lora_state_dict(unet):
            raise InputError("the UNet already has LoRA layers; load adapters into a fresh UNet")
        add_lora(unet, info.peft_config)
        result = set_peft_model_state_dict(unet, lora, adapter_name=ADAPTER_NAME)
        expected = set(get_lora_state_dict(unet))
        if result.unexpected_keys or expected != set(lora):
            raise InputError(
                f"adapter {folder} does not fit this UNet (was it trained for {info.base_unet or 'another UNet'}?): "
                f"unexpected {sorted(result.unexpected_keys)[:5]}, missing {sorted(expected - set(lora))[:5]}"
            )
    if info.has_conv_out:
        module = _conv_out_module(unet)
        if not hasattr(unet, "_cvvae_base_conv_out"):  # kept so remove_adapter can restore it
            unet._cvvae_base_conv_out = {k: v.detach().clone() for k, v in module.state_dict().items()}
        try:
            ref = next(module.parameters())
            module.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in conv.items()}, strict=True)
        except RuntimeError as err:
            raise InputError(f"adapter {folder} conv_out does not fit this UNet: {str(err).splitlines()[0]}") from err
    return info


def merge_adapter(unet: nn.Module) -> nn.Module:
    """Fold injected LoRA layers into the base weights and remove them (for saving a full UNet folder)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    return unet


def remove_adapter(unet: nn.Module) -> nn.Module:
    """Undo :func:`apply_adapter` in place: drop LoRA layers (unmerged) and restore the base conv_out."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
    base = getattr(unet, "_cvvae_base_conv_out", None)
    if base is not None:
        _conv_out_module(unet).load_state_dict(base)
        del unet._cvvae_base_conv_out
    return unet
