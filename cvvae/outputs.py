"""Output files written atomically (temporary name, then rename), with JSON sidecars."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it onto ``path`` on success.

    On an exception the temporary file is deleted and ``path`` is left untouched, so no partial
    output is ever visible under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporaries(path: Path) -> list[Path]:
    """Temporary files :func:`atomic_path` leaves for ``path`` (and its sidecar) when a run is killed."""
    if not path.parent.is_dir():
        return []
    names = (f".{path.stem}.*.tmp{path.suffix}", f".{path.stem}.*.tmp.json")
    return [p for pattern in names for p in path.parent.glob(pattern)]


def check_output_path(
    out_path: str | os.PathLike, suffix: str, *inputs: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Refuse an output that cannot be written, before any work: wrong suffix, a folder, an unwritable
    location, one of the ``inputs`` themselves, or (unless ``overwrite``) an existing output or sidecar.
    Temporary files a killed run left for this output are removed."""
    out = Path(out_path)
    if out.suffix.lower() != suffix:
        raise InputError(f"the output {out} must end in {suffix}")
    if out.is_dir():
        raise InputError(f"the output {out} is a folder; give a file name ending in {suffix}")
    folder = next(p for p in out.absolute().parents if p.exists())  # nearest existing ancestor
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {out}: {folder} is not a writable folder")
    for src in inputs:
        if src and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise InputError(f"the output {out} is the input file; choose another name")
    watched = [out, sidecar_path(out)] if suffix in (".mp4", ".png") else [out]  # these come with a JSON sidecar
    existing = [p for p in watched if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} exists; choose another output name or pass --overwrite")
    for stale in temporaries(out):
        stale.unlink(missing_ok=True)
    return out


def _json_default(obj):
    """Make numpy scalars, paths and tuples JSON-safe."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (os.PathLike, set)):
        return str(obj) if isinstance(obj, os.PathLike) else sorted(obj)
    return str(obj)


def json_safe(obj):
    """A copy of ``obj`` that strict JSON accepts: non-finite floats (e.g. PSNR of identical clips) become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(data, indent: int | None = None) -> str:
    """Strict JSON text for ``data`` (numpy scalars, paths and non-finite floats handled)."""
    return json.dumps(json_safe(data), indent=indent, default=_json_default, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented strict JSON to ``path`` atomically."""
    path = Path(path)
    text = to_json(data, indent=2)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def sidecar_path(video_path: str | os.PathLike) -> Path:
    """The JSON sidecar of a video: same folder and stem, ``.json``."""
    return Path(video_path).with_suffix(".json")


def versions() -> dict:
    """Versions of the packages that shape an output (for reproducing it)."""
    import diffusers
    import torch

    from .version import __version__

    return {
        "cvvae": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def write_sidecar(video_path: str | os.PathLike, meta: dict) -> Path:
    """Write ``meta`` plus ``versions`` and ``created`` (UTC, ISO 8601) next to ``video_path``."""
    data = dict(meta)
    data.setdefault("versions", versions())
    data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return write_json_atomic(sidecar_path(video_path), data)
