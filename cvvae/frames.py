"""uint8 frames <-> tensors, and the frame arithmetic of a 4x temporal VAE (torch and numpy only, no file I/O).

Frames are uint8 ``[T, H, W, 3]``; videos are ``[1, 3, T, H, W]`` in [-1, 1]. The encoder takes clips
padded to ``1 + 4k`` frames (last frame repeated) and to multiples of 8 pixels (edge pixels repeated).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError


def padded_length(frames: int, factor: int = 4) -> int:
    """Smallest ``1 + factor k >= frames``."""
    return 1 + factor * -(-(frames - 1) // factor)


def latent_frames(frames: int, factor: int = 4) -> int:
    """Latent frames for ``frames`` video frames (after padding to ``1 + factor k``)."""
    return 1 + (padded_length(frames, factor) - 1) // factor


def video_frames(latents: int, factor: int = 4) -> int:
    """Video frames decoded from ``latents`` latent frames: ``1 + factor (n - 1)``."""
    return 1 + factor * (latents - 1)


def frames_to_tensor(
    frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> ``[1, 3, T, H, W]`` in [-1, 1] (float32 unless ``dtype`` says otherwise).

    With ``device`` the uint8 frames are moved first (4x less to transfer than floats).
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise InputError(f"frames must be uint8 [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.to(device).permute(3, 0, 1, 2).unsqueeze(0)  # [T, H, W, 3] -> [1, 3, T, H, W]
    return x.to(dtype).div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """``[1, 3, T, H, W]`` or ``[3, T, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]`` (clamped, rounded)."""
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise InputError(f"expected one clip [1, 3, T, H, W], got {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 4 or x.shape[0] != 3:
        raise InputError(f"expected [3, T, H, W] or [1, 3, T, H, W], got {tuple(x.shape)}")
    x = x.detach()
    out = np.empty((*x.shape[1:], 3), np.uint8)
    for s in range(0, x.shape[1], 16):  # 16 frames at a time: one small float copy, however long the clip
        part = x[:, s : s + 16].float().clamp(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
        out[s : s + 16] = part.permute(1, 2, 3, 0).cpu().numpy()  # [3, t, H, W] -> [t, H, W, 3]
    return out


class PaddedFrames:
    """uint8 frames ``[T, H, W, 3]`` seen as the padded clip ``[1, 3, T', H', W']`` in [-1, 1] that the
    encoder takes (last frame repeated to ``1 + 4k``, edge pixels to multiples of 8), converted only where
    sliced: a tiled encode then holds one box in floating point, not the clip."""

    def __init__(self, frames: np.ndarray, device: torch.device | str | None = None, dtype=torch.float32):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise InputError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        self.frames, self.device, self.dtype = frames, device, dtype
        t, h, w = frames.shape[:3]
        self.shape = (1, 3, padded_length(t), h + -h % 8, w + -w % 8)

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        """``[:, :, frames, rows, cols]`` (slices) as a tensor, equal to slicing the padded clip."""
        slices = isinstance(index, tuple) and len(index) == 5 and all(isinstance(i, slice) for i in index)
        if not slices or index[:2] != (slice(None), slice(None)):
            raise IndexError("PaddedFrames takes [:, :, frames, rows, cols] with slices")
        picks = [
            np.arange(n)[i].clip(max=size - 1) for n, i, size in zip(self.shape[2:], index[2:], self.frames.shape)
        ]
        return frames_to_tensor(self.frames[np.ix_(*picks)], self.device, self.dtype)
