"""Library functions shared by the CLI, the app and batch jobs: reconstruct, encode, decode files.

Every function that takes ``vae`` accepts a :class:`~cvvae.vaes.VideoVAE`, a model that
:func:`~cvvae.vaes.as_video_vae` wraps (a CV-VAE, SD's image VAE, a diffusers video VAE), or a
zero-argument callable returning one; a callable is only called after the input has been read, so bad
input fails before weights are loaded. ``tiling`` applies to CV-VAEs (changes to the model's tiling).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import metrics
from . import video as vio
from .devices import dtype_name
from .errors import InputError
from .outputs import atomic_path, check_output_path, sidecar_path
from .vaes import CVVAE, VideoVAE, as_video_vae

LATENTS_KEY = "latents"
LATENTS_FORMAT = "cvvae-latents-v1"
VaeLike = VideoVAE | torch.nn.Module | Callable[[], VideoVAE | torch.nn.Module]


def video_vae(vae: VaeLike, tiling=None, name: str | None = None) -> VideoVAE:
    """``vae`` (loaded now if it is a callable) as a :class:`VideoVAE`; ``tiling`` changes a CV-VAE's tiling."""
    if not isinstance(vae, (VideoVAE, torch.nn.Module)):
        vae = vae()
    v = as_video_vae(vae, name)
    if tiling and not isinstance(v, CVVAE):
        raise InputError(f"tiling options apply to CV-VAEs; {v.name} ({type(v.module).__name__}) has its own")
    if tiling is not None and isinstance(v, CVVAE):
        v = CVVAE(v.module, v.name, tiling, v.random_weights)
    return v


@torch.inference_mode()
def reconstruct(vae: VaeLike, frames: np.ndarray, sample: bool = False, generator=None, tiling=None) -> np.ndarray:
    """Encode and decode uint8 ``[T, H, W, 3]`` frames; returns the same shape (any T, H, W), equal to
    ``vae(x)`` for a CV-VAE. A tiled CV-VAE holds the clip only as 8-bit frames, in and out."""
    return video_vae(vae, tiling).reconstruct(frames, sample, generator)


def reconstruct_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    vae: VaeLike,
    *,
    start: int = 0,
    num_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    side_by_side: bool = False,
    sample: bool = False,
    seed: int = 0,
    model_id: str = "unknown",
    tiling=None,
    overwrite: bool = False,
) -> dict:
    """Reconstruct a video file into an H.264 mp4 (+ JSON sidecar), both written atomically.

    Returns frames, height, width, fps, psnr (mean of per-frame values), ssim, psnr_clip, flicker (of
    the reconstruction, with the input's optical flow, and of the input itself),
    seconds (encode + decode time) and the paths written. ``side_by_side`` writes input | output.
    ``tiling`` overrides the model's tiling for this call (settings or a dict of changes).
    """
    out = check_output_path(out_path, ".mp4", in_path, overwrite=overwrite)
    frames, fps = vio.read_video(in_path, start, num_frames, stride, size, resize)
    vae = video_vae(vae, tiling, model_id)
    generator = torch.Generator(device=vae.device).manual_seed(seed) if sample else None
    t0 = time.perf_counter()
    rec = vae.reconstruct(frames, sample=sample, generator=generator)
    seconds = time.perf_counter() - t0
    described = vae.describe()
    result = {
        "frames": int(len(rec)),
        "height": int(rec.shape[1]),
        "width": int(rec.shape[2]),
        "fps": float(fps),
        "psnr": metrics.psnr(frames, rec),  # mean of per-frame PSNR
        "ssim": metrics.ssim(frames, rec),
        "psnr_clip": metrics.psnr_clip(frames, rec),  # one MSE over the clip
        "flicker": metrics.flicker(rec, reference=frames),  # flow of the input
        "input_flicker": metrics.flicker(frames),
        "seconds": round(seconds, 3),
    }
    meta = {
        "task": "reconstruct",
        "input": str(in_path),
        "model": model_id,
        "selection": {"start": start, "num_frames": num_frames, "stride": stride, "size": size, "resize": resize},
        "sample_posterior": sample,
        "seed": seed if sample else None,
        "side_by_side": side_by_side,
        "rotation": vio.rotation(in_path),  # degrees the source was turned to display upright
        "tiling": described.get("tiling"),
        "tiling_choice": described.get("tiling_choice"),  # what the default chose per stage, and why
        "vae": described,
        "dtype": dtype_name(vae.dtype),
        **result,
    }
    written = rec if not side_by_side else vio.side_by_side(frames, rec)
    result["paths"] = vio.write_video_and_sidecar(out, written, fps, meta)
    return result


@torch.inference_mode()
def encode_file(
    in_path: str | os.PathLike,
    latents_path: str | os.PathLike,
    vae: VaeLike,
    *,
    start: int = 0,
    num_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    sample: bool = False,
    seed: int = 0,
    model_id: str = "unknown",
    tiling=None,
    overwrite: bool = False,
) -> dict:
    """Encode a video file to raw latents ``[1, 4, n, h, w]`` in a ``.safetensors`` file.

    The file's metadata holds what decoding needs: fps, the original frame count and size, and
    the model id. Latents are raw (``config.scaling_factor`` is not applied).
    """
    from safetensors.torch import save_file

    out = check_output_path(latents_path, ".safetensors", in_path, overwrite=overwrite)
    frames, fps = vio.read_video(in_path, start, num_frames, stride, size, resize)
    vae = video_vae(vae, tiling, model_id)
    t0 = time.perf_counter()
    generator = torch.Generator(device=vae.device).manual_seed(seed) if sample else None
    z = vae.encode_frames(frames, sample, generator).float().cpu().contiguous()
    seconds = time.perf_counter() - t0
    meta = {
        "format": LATENTS_FORMAT,
        "fps": repr(float(fps)),
        "frames": str(len(frames)),
        "height": str(frames.shape[1]),
        "width": str(frames.shape[2]),
        "model": model_id,
        "variant": type(vae.module).__name__,  # CVVAEModel (4 latent channels), CVVAESD3Model (16), ...
        "source": str(in_path),
        "sample_posterior": json.dumps(sample),
    }
    with atomic_path(out) as tmp:
        save_file({LATENTS_KEY: z}, str(tmp), metadata=meta)
    return {
        "frames": len(frames),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": float(fps),
        "latent_shape": list(z.shape),
        "seconds": round(seconds, 3),
        "paths": {"latents": str(out)},
    }


def load_latents(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Read latents written by ``encode_file``: ``([1, 4, n, h, w] float32, metadata)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"latents file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if LATENTS_KEY not in f.keys():
                raise InputError(f"{path} holds no '{LATENTS_KEY}' tensor; write it with `python -m cvvae encode`")
            z = f.get_tensor(LATENTS_KEY)
    except InputError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from err
    if z.dim() != 5 or z.shape[0] != 1 or not z.is_floating_point() or 0 in z.shape:
        raise InputError(
            f"{path} holds latents of shape {tuple(z.shape)}; expected [1, C, n, h, w] floats, none empty"
        )
    if not torch.isfinite(z).all():
        raise InputError(f"{path} holds NaN or infinite latents; re-encode the video")
    try:
        parsed = {
            "fps": float(meta.get("fps", vio.DEFAULT_FPS)),
            "frames": int(meta["frames"]) if "frames" in meta else None,
            "height": int(meta["height"]) if "height" in meta else None,
            "width": int(meta["width"]) if "width" in meta else None,
            "model": meta.get("model"),
            "variant": meta.get("variant"),
            "source": meta.get("source"),
        }
    except ValueError as err:
        raise InputError(f"{path} has invalid metadata ({err})") from err
    vio.check_fps(parsed["fps"], f"{path} says its frame rate is")
    for key in ("frames", "height", "width"):
        if parsed[key] is not None and not 0 < parsed[key] <= 1_000_000:
            raise InputError(f"{path} has an impossible {key} ({parsed[key]}) in its metadata")
    return z, parsed


@torch.inference_mode()
def decode_file(
    latents_path: str | os.PathLike,
    out_path: str | os.PathLike,
    vae: VaeLike,
    *,
    model_id: str = "unknown",
    tiling=None,
    overwrite: bool = False,
) -> dict:
    """Decode latents from ``encode_file`` to an mp4 (+ sidecar), trimmed to the original frames and size."""
    out = check_output_path(out_path, ".mp4", latents_path, overwrite=overwrite)
    z, meta = load_latents(latents_path)
    vae = video_vae(vae, tiling, model_id)
    variant = type(vae.module).__name__
    if meta["variant"] and meta["variant"] != variant:
        raise InputError(
            f"{latents_path} holds {meta['variant']} latents, and {model_id} is a {variant}: "
            f"decode them with a {meta['variant']} (the model that encoded them: {meta['model']})"
        )
    if z.shape[1] != vae.latent_channels:
        raise InputError(
            f"latents have {z.shape[1]} channels but {model_id} ({variant}) expects {vae.latent_channels}"
        )
    t0 = time.perf_counter()
    n, h, w = z.shape[2:]
    s = vae.spatial_factor
    full = (vae.video_frames(n), s * h, s * w)  # what the latents decode to; trimmed to the source's size
    size = tuple(
        min(kept or whole, whole) for kept, whole in zip((meta["frames"], meta["height"], meta["width"]), full)
    )
    frames = vae.decode_frames(z, size)
    seconds = time.perf_counter() - t0
    result = {
        "frames": int(len(frames)),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": meta["fps"],
        "seconds": round(seconds, 3),
    }
    if meta["model"] and meta["model"] != model_id:
        result["warning"] = f"latents were encoded with {meta['model']} but decoded with {model_id}"
    side = {"task": "decode", "latents": str(latents_path), "model": model_id, "encoded_with": meta["model"], **result}
    result["paths"] = vio.write_video_and_sidecar(out, frames, meta["fps"], side)
    return result


__all__ = [
    "decode_file",
    "encode_file",
    "load_latents",
    "reconstruct",
    "reconstruct_file",
    "sidecar_path",
]
