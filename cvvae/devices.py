"""Device and precision defaults: one place for "cuda if available" and "fp16 on CUDA, fp32 elsewhere"."""

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
