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
    names = [f".{path.stem}.*.{kind}{suffix}" for kind in ("tmp", "old") for suffix in (path.suffix, ".json")]
    return [p for pattern in names for p in path.parent.glob(pattern)]


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (resolved through links; existing or not)."""
    b = Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_name_length(out: Path, folder: Path) -> None:
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        longest = 255
    if len(f".{out.stem}.12345678.tmp{out.suffix}".encode()) > longest:  # the temporary name atomic_path uses
        raise InputError(f"the output name {out.name[:40]}... is too long; use a file name under {longest - 20} bytes")


def check_output_path(
    out_path: str | os.PathLike, suffix: str, *inputs: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Refuse an output that cannot be written, before any work: wrong suffix, a folder, an unwritable
    location, a name too long, an output or sidecar that is one of the ``inputs``, or (unless ``overwrite``)
    an existing output or sidecar. Temporary files a killed run left for this output are removed."""
    out = Path(out_path)
    if out.suffix.lower() != suffix:
        raise InputError(f"the output {out} must end in {suffix}")
    watched = [out, sidecar_path(out)] if suffix in (".mp4", ".png") else [out]  # these come with a JSON sidecar
    for path in watched:
        if path.is_dir():
            raise InputError(f"the output {path} is a folder; give another output name ending in {suffix}")
    folder = next(p for p in out.absolute().parents if p.exists())  # nearest existing ancestor
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {out}: {folder} is not a writable folder")
    _check_name_length(out, folder)
    for src in filter(None, inputs):
        for path in watched:
            if _same_file(path, src):
                what = "the output" if path == out else "the output's sidecar"
                raise InputError(f"{what} {path} is the input file {src}; choose another output name")
    existing = [p for p in watched if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} exists; choose another output name or pass --overwrite")
    for stale in temporaries(out):
        stale.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that appear together or not at all (a video and its sidecar).

    Yields one temporary path per target; when all are written they replace the targets, and if a
    rename fails the targets already replaced get their earlier files back."""
    paths = [Path(p) for p in paths]
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise InputError(f"cannot write {folders[0]}: it is a folder")
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temporary(p)) for p in paths]
        yield temps
        for tmp in temps:
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        backups = [stack.enter_context(_temporary(p, "old")) for p in paths]
        done = []
        try:
            for path, tmp, backup in zip(paths, temps, backups):
                if path.exists():
                    os.replace(path, backup)  # the earlier file, kept until every rename has succeeded
                done.append((path, backup))
                os.replace(tmp, path)
        except BaseException:
            for path, backup in done:
                os.replace(backup, path) if backup.exists() else path.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def _temporary(path: Path, kind: str = "tmp") -> Iterator[Path]:
    """A temporary name next to ``path``, deleted when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.{kind}{path.suffix}")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


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


def sidecar_text(meta: dict) -> str:
    """The sidecar JSON: ``meta`` plus ``versions`` and ``created`` (UTC, ISO 8601)."""
    data = dict(meta)
    data.setdefault("versions", versions())
    data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return to_json(data, indent=2) + "\n"


def write_sidecar(video_path: str | os.PathLike, meta: dict) -> Path:
    """Write ``meta`` plus ``versions`` and ``created`` next to ``video_path``, atomically."""
    path = sidecar_path(video_path)
    text = sidecar_text(meta)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
