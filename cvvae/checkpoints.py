"""Checkpoint folders that are complete or absent: written under a temporary name, a completion marker
last, then renamed; resuming takes the newest complete one that loads, falling back to older ones.

Nothing here unpickles: tensors are safetensors, the rest JSON (``torch.load`` only with
``weights_only=True`` for older state files).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import InputError

log = logging.getLogger(__name__)
COMPLETE = "complete.json"


def step_of(folder: Path, prefix: str) -> int | None:
    tail = folder.name[len(prefix) :]
    return int(tail) if folder.name.startswith(prefix) and tail.isdigit() else None


def list_checkpoints(output_dir: Path, prefix: str, marker: str = COMPLETE) -> list[Path]:
    """Complete checkpoint folders ``PREFIX<step>`` (holding ``marker``) in ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and step_of(p, prefix) is not None]
    return sorted((p for p in found if (p / marker).is_file()), key=lambda p: step_of(p, prefix))


def temporary(final: Path) -> Path:
    """Where ``final`` is written before it is complete."""
    return final.with_name(f".{final.name}.tmp")


def write_checkpoint(
    final: Path, write: Callable[[Path], None], step: int, prepared: bool = False, marker: str = COMPLETE
) -> Path:
    """Run ``write(tmp)`` in a temporary folder, add the completion ``marker``, rename it to ``final``.

    ``prepared``: the temporary folder exists already (other processes wrote their parts into it).
    """
    tmp = temporary(final)
    if not prepared:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    write(tmp)
    if not (tmp / marker).is_file():
        (tmp / marker).write_text(json.dumps({"step": step}) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prune(output_dir: Path, prefix: str, keep: int, marker: str = COMPLETE) -> None:
    """Keep the newest ``keep`` complete checkpoints; remove older ones and leftover temporary folders."""
    for old in list_checkpoints(output_dir, prefix, marker)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in output_dir.glob(f".{prefix}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def resume(
    output_dir: Path,
    prefix: str,
    load: Callable[[Path], None],
    requested: str | None = "latest",
    marker: str = COMPLETE,
) -> Path | None:
    """Load a checkpoint with ``load(folder)``; returns the folder, or None when there is none to resume.

    ``latest`` tries complete checkpoints from the newest down, warning about each one that does not load
    (truncated, corrupt, from another run); a named folder must load, else InputError.
    """
    if not requested:
        return None
    if requested != "latest":
        folder = Path(requested)
        if not (folder / marker).is_file():
            raise InputError(f"{folder} is not a complete checkpoint (it has no {marker}); use --resume latest")
        try:
            load(folder)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file in it
            raise InputError(f"checkpoint {folder} cannot be loaded ({type(err).__name__}: {err})") from err
        return folder
    candidates = list_checkpoints(output_dir, prefix, marker)
    for folder in reversed(candidates):
        try:
            load(folder)
            return folder
        except Exception as err:  # noqa: BLE001 - fall back to the previous one
            log.warning(
                "checkpoint %s cannot be loaded (%s: %s); trying the previous one", folder, type(err).__name__, err
            )
            print(f"warning: checkpoint {folder} cannot be loaded ({type(err).__name__}); trying the previous one")
    if candidates:
        raise InputError(f"none of the checkpoints in {output_dir} can be loaded; move them away to start afresh")
    return None


def rng_state() -> dict[str, torch.Tensor]:
    """The CPU (and CUDA) random states as tensors."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as safetensors-ready tensors plus JSON (its hyper-parameters)."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, values in sd["state"].items():
        for name, value in values.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
