"""Device and precision defaults: one place for "cuda if available", "fp16 on CUDA, fp32 elsewhere" and the
VAE commands' "bf16 on a CPU that multiplies bf16 in hardware"."""

from __future__ import annotations

import torch

from .errors import InputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device`` (default: cuda when available, else cpu); InputError when unusable."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device} was asked for but MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device} cannot run the models; use cpu, cuda or cuda:N")
    return device


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (what the released pipelines use), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX: AMD Zen 4 and later, Intel Xeon from
    Sapphire Rapids), where oneDNN runs bf16 convolutions at about twice the fp32 rate."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private API)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_vae_dtype(device: str | torch.device) -> torch.dtype:
    """The VAE commands' default (reconstruct, encode, decode, the app's Reconstruct tab): fp16 on CUDA; bf16 on a
    CPU with bf16 instructions (:func:`cpu_has_bf16`: about 2x faster than fp32 there, at about 50 dB to the
    fp32 output, far closer than the released model's own chunking); fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return default_dtype(device)


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` or a torch dtype; ``None`` means :func:`default_dtype`."""
    if name is None:
        return default_dtype(device)
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
