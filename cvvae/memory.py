"""Peak memory of running a network on a clip, estimated without running it, and what a device holds.

The estimate runs the network on ``meta`` tensors (shapes only, no data, milliseconds) and follows every
tensor the ops create: bytes are added when a storage appears and removed when its last tensor dies, so
the peak is that of the eager allocator at tensor granularity, for any model, dtype, input size and
tiling. What the kernels allocate internally is added per convolution: ``conv_factor`` times its input
and output (measured with peak RSS on CPU: oneDNN reorders both; see ``tests/test_memory.py``).
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

GiB = 2**30


class _LiveBytes(TorchDispatchMode):
    """Bytes held by the tensors ops create, and their peak (convolutions count ``factor`` x in + out more)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor, self.now, self.peak = factor, 0, 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [tensors alive, bytes]

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata  # views share their base's storage: counted once
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [0, t.untyped_storage().nbytes()]
            self.now += entry[1]
            self.peak = max(self.peak, self.now)
        entry[0] += 1
        weakref.finalize(t, self._drop, key)

    def _drop(self, key: int) -> None:
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            scratch = self.factor * (_nbytes(args[0]) + _nbytes(out))
            self.peak = max(self.peak, int(self.now + _nbytes(out) + scratch))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def conv_factor(device: torch.device, dtype: torch.dtype) -> float:
    """Scratch memory of a convolution, in units of its input + output bytes (fitted to peak RSS on CPU;
    on CUDA an allowance for cuDNN's workspace and the caching allocator, not yet measured)."""
    if device.type == "cpu":
        return 1.0 if dtype == torch.float32 else 2.5
    return 0.5


def meta_copy(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """``module`` with every parameter and buffer on ``meta`` (no data copied), in ``dtype`` if given."""
    memo = {}
    for t in [*module.parameters(), *module.buffers()]:
        m = torch.empty_like(t, device="meta", dtype=dtype if dtype is not None and t.is_floating_point() else None)
        memo[id(t)] = nn.Parameter(m, requires_grad=False) if isinstance(t, nn.Parameter) else m
    return copy.deepcopy(module, memo)


def estimate_peak(run: Callable[[], object], device: torch.device, dtype: torch.dtype) -> int:
    """Peak bytes of the tensors ``run()`` creates (on meta tensors) plus convolution scratch."""
    with _disable_current_modes(), torch.no_grad(), _LiveBytes(conv_factor(device, dtype)) as live:
        run()  # outside any mode the caller runs under (e.g. a FLOP counter)
    return live.peak


def available(device: torch.device) -> int:
    """Bytes a new computation can take on ``device``: free GPU memory plus what torch's cache holds unused,
    or the host's available RAM. ``CVVAE_MEMORY_GIB`` caps it (e.g. to plan for a smaller card)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        free = _host_available()
    cap = os.environ.get("CVVAE_MEMORY_GIB")
    return int(min(free, float(cap) * GiB)) if cap else int(free)


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
