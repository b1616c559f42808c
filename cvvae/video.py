"""Video I/O with PyAV (no ffmpeg binary): read clips and stills, write H.264 mp4, uint8 <-> tensor."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import InputError
from .frames import frames_to_tensor, tensor_to_frames  # noqa: F401 (part of this module's API)
from .outputs import atomic_path, atomic_paths, sidecar_path, sidecar_text

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RESIZE_MODES = ("crop", "stretch")
DEFAULT_FPS = 25.0  # for stills and streams that state no rate
MAX_SIDE = 8192  # pixels: larger frames are refused before anything is allocated
FPS_RANGE = (0.1, 1000.0)  # frame rates outside it are refused (frames per second)
MAX_IMAGE_PIXELS = 8192 * 8192  # still images beyond this are refused unread (decompression bombs)
MAX_SOURCE_PIXELS = 4096 * 4096  # video frames beyond this are refused before the first one is decoded
MAX_RESIZE_PIXELS = 8192 * 8192  # the scaled frame a crop resize goes through (an extreme aspect ratio)
AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class VideoReadError(InputError):
    """A video or image file that cannot be read: missing, empty, truncated or not a video."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    height: int
    width: int


# ----------------------------------------------------------------------------- checks


def _check_file(path: str | os.PathLike) -> Path:
    """An existing, non-empty regular file (not a folder, device or pipe), as a path FFmpeg cannot read as a URL."""
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path} does not exist (only local files are read, no URLs)")
    if not path.is_file():
        raise VideoReadError(f"{path} is not a file (only regular files are read)")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes)")
    return path


def _av_name(path: Path) -> str:
    """An absolute path: FFmpeg reads ``concat:``, ``file:``, ``http:`` ... as protocols, never after a ``/``."""
    return os.path.abspath(path)


def _check_source_size(path: Path, width: int, height: int, limit: int) -> None:
    """Refuse a source whose header states more pixels than ``limit`` or a side beyond ``MAX_SIDE``, unread."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > limit:
        raise VideoReadError(
            f"{path} is {width}x{height} pixels; this reads at most {MAX_SIDE} pixels a side and {limit:,} in all: "
            "scale it down first"
        )


def _check_selection(start: int, num_frames: int | None, stride: int) -> None:
    if int(start) != start or start < 0:
        raise InputError(f"start must be a frame index >= 0, got {start}")
    if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
        raise InputError(f"the number of frames must be >= 1, got {num_frames}")
    if int(stride) != stride or stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")


def _check_size(size: tuple[int, int] | None, resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise InputError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if size is not None and (len(size) != 2 or any(int(s) != s or s < 1 for s in size)):
        raise InputError(f"size must be (height, width) with positive integers, got {size}")
    if size is not None and max(size) > MAX_SIDE:
        raise InputError(f"size {size[0]}x{size[1]} is too large: height and width can be at most {MAX_SIDE} pixels")


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else DEFAULT_FPS


# ----------------------------------------------------------------------------- frames


def check_fps(fps: float, what: str = "fps") -> float:
    """``fps`` when it is a frame rate a video can have (``FPS_RANGE``), else InputError (NaN included)."""
    low, high = FPS_RANGE
    if not low <= fps <= high:  # NaN fails both comparisons
        raise InputError(f"{what} {fps} is not a usable frame rate; it must be a number in {low:g}..{high:g}")
    return fps


def resize_frame(frame: np.ndarray, size: tuple[int, int], resize: str = "crop") -> np.ndarray:
    """Resize one ``[H, W, 3]`` uint8 frame to ``size=(height, width)``.

    ``crop`` scales to cover the target and centre-crops (no distortion); ``stretch`` scales each
    axis independently.
    """
    height, width = size
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    if resize == "stretch":
        new_h, new_w = height, width
    else:
        scale = max(height / h, width / w)
        new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
        if new_h * new_w > MAX_RESIZE_PIXELS:  # e.g. 1000000x1 cropped to 64x64 would scale to 64000000x64
            raise InputError(
                f"a {w}x{h} frame cropped to {width}x{height} would first be scaled to {new_w}x{new_h} pixels: "
                "the aspect ratio is too extreme; crop the source first or use --resize stretch"
            )
    interp = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_CUBIC
    out = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(out[top : top + height, left : left + width])


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Scale one ``[H, W, 3]`` uint8 frame so that its short side is ``short_side`` pixels."""
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # (width, height)
    if size[0] * size[1] > MAX_RESIZE_PIXELS:
        raise InputError(f"a {w}x{h} frame scaled to a short side of {short_side} would be {size[0]}x{size[1]} pixels")
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(frame, size, interpolation=interp)


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_still_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in STILL_SUFFIXES


def read_image(path: str | os.PathLike, decode: bool = True):
    """Read a still image as an RGB ``PIL.Image.Image`` (``decode=False``: check its header only, before
    any work: readable and within the size limits; returns None)."""
    from PIL import Image, UnidentifiedImageError

    path = _check_file(path)
    try:
        with Image.open(path) as img:  # reads the header only
            _check_source_size(path, img.width, img.height, MAX_IMAGE_PIXELS)
            if not decode:
                return None
            img.load()
            return img.convert("RGB")
    except VideoReadError:
        raise
    except Image.DecompressionBombError as err:
        raise VideoReadError(f"{path} is too large to read safely ({err}); scale it down first") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise VideoReadError(f"{path} is not a readable image ({err})") from err


Transform = Callable[[np.ndarray], np.ndarray]


def _open_stream(container, path: Path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(f"{path} has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    _check_source_size(path, stream.width, stream.height, MAX_SOURCE_PIXELS)
    stream.thread_type = "AUTO"
    return stream


def _check_same_size(frame, path: Path, shape: tuple[int, int] | None) -> tuple[int, int]:
    """The first frame's ``(height, width)``; VideoReadError when a later frame has another size."""
    if shape and (frame.height, frame.width) != shape:
        raise VideoReadError(
            f"{path} changes frame size mid-stream ({shape[1]}x{shape[0]} to {frame.width}x{frame.height}); "
            "re-encode it at one size first"
        )
    return shape or (frame.height, frame.width)


def _upright(frame, path: Path) -> np.ndarray:
    """The decoded frame as RGB, turned as its display matrix says (a phone's rotated video)."""
    rotation = frame.rotation or 0
    if rotation % 90:
        raise VideoReadError(f"{path} asks to be shown rotated by {rotation} degrees; only quarter turns are read")
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(rotation / 90) % 4  # counter-clockwise quarter turns, as FFmpeg's autorotate
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def rotation(path: str | os.PathLike) -> int:
    """Degrees (counter-clockwise) the first frame of a video is turned on read to display upright; 0 for stills."""
    path = _check_file(path)
    if is_still_file(path):
        return 0
    try:
        with av.open(_av_name(path)) as container:
            frame = next(container.decode(_open_stream(container, path)), None)
            return int(round(frame.rotation or 0)) % 360 if frame is not None else 0
    except VideoReadError:
        raise
    except AV_ERRORS as err:
        raise VideoReadError(f"{path} is not a readable video ({type(err).__name__}: {err})") from err


def iter_frames(
    path: str | os.PathLike,
    start: int = 0,
    num_frames: int | None = None,
    stride: int = 1,
    transform: Transform | None = None,
) -> Iterator[np.ndarray]:
    """Yield frames ``start, start + stride, ...`` (at most ``num_frames``) one at a time, as RGB uint8.

    Each frame is decoded and passed through ``transform`` (e.g. a resize) before the next one is
    decoded, so memory does not grow with the clip. Stills yield one frame. Raises
    ``VideoReadError`` for missing, empty, truncated and non-video files and a ``start`` beyond the end.
    """
    _check_selection(start, num_frames, stride)
    path = _check_file(path)
    transform = transform or (lambda f: f)
    if is_still_file(path):
        if start > 0:
            raise VideoReadError(f"start={start} is beyond the end of {path} (a still image is one frame)")
        yield transform(np.asarray(read_image(path)))
        return
    seen = yielded = 0
    try:
        with av.open(_av_name(path)) as container:
            stream = _open_stream(container, path)
            expected, shape = stream.frames, None
            for frame in container.decode(stream):
                index, seen = seen, seen + 1
                shape = _check_same_size(frame, path, shape)
                if index < start or (index - start) % stride:
                    continue
                yielded += 1
                yield transform(_upright(frame, path))
                if num_frames is not None and yielded >= num_frames:
                    return
    except VideoReadError:
        raise
    except AV_ERRORS as err:
        what = "is truncated or corrupt" if seen else "is not a readable video"
        raise VideoReadError(f"{path} {what} ({type(err).__name__}: {err})") from err
    if num_frames is None and expected and seen < 0.9 * expected:
        raise VideoReadError(f"{path} is truncated: only {seen} of its {expected} frames could be decoded")
    if not yielded:
        if seen:
            raise VideoReadError(f"start={start} is beyond the end of {path} ({seen} frames)")
        raise VideoReadError(f"{path} has no decodable frames")


def source_fps(path: str | os.PathLike) -> float:
    """The frame rate a video states (``DEFAULT_FPS`` for stills and streams that state none)."""
    path = _check_file(path)
    if is_still_file(path):
        return DEFAULT_FPS
    try:
        with av.open(_av_name(path)) as container:
            return _stream_fps(_open_stream(container, path))
    except VideoReadError:
        raise
    except AV_ERRORS as err:
        raise VideoReadError(f"{path} is not a readable video ({type(err).__name__}: {err})") from err


def resizer(size: tuple[int, int] | None, resize: str = "crop") -> Transform | None:
    """The per-frame transform of ``read_video``'s ``size``/``resize`` (None: keep the size)."""
    _check_size(size, resize)
    if size is None:
        return None
    return lambda frame: resize_frame(frame, size, resize)


def read_video(
    path: str | os.PathLike,
    start: int = 0,
    num_frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
) -> tuple[np.ndarray, float]:
    """Read frames ``start, start + stride, ...`` (at most ``num_frames``) of a video or a still.

    Returns ``(frames, fps)``: uint8 RGB ``[T, H, W, 3]`` and the source's fps divided by
    ``stride``. ``size=(height, width)`` resizes every frame as it is decoded (see
    ``resize_frame``). Stills (png, jpg, webp, ...) read as one frame at ``DEFAULT_FPS``. Raises
    ``VideoReadError`` for missing, empty, truncated and non-video files, files with no video
    stream, and a ``start`` beyond the end.
    """
    transform = resizer(size, resize)
    frames = np.stack(list(iter_frames(path, start, num_frames, stride, transform)))
    return frames, source_fps(path) / stride


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and size of a video (counting packets when the container does not say)."""
    path = _check_file(path)
    if is_still_file(path):
        img = read_image(path)
        return VideoInfo(1, DEFAULT_FPS, img.height, img.width)
    try:
        with av.open(_av_name(path)) as container:
            stream = _open_stream(container, path)
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            return VideoInfo(frames, _stream_fps(stream), stream.height, stream.width)
    except VideoReadError:
        raise
    except AV_ERRORS as err:
        raise VideoReadError(f"{path} is not a readable video ({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------------- tensors


# ----------------------------------------------------------------------------- writing


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise InputError(f"frames must be non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def _encode_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush


def _encode_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path, format="PNG")


def _checked(path: str | os.PathLike, frames: np.ndarray, fps: float | None) -> tuple[Path, np.ndarray, float | None]:
    """The output path, frames and fps after the checks (an mp4's fps, or a png's one frame)."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return path, _check_frames(np.asarray(frames)[:1]), None
    frames = _check_frames(frames)
    if path.suffix.lower() != ".mp4":
        raise InputError(f"videos are written as H.264 .mp4; {path} should end in .mp4")
    if max(frames.shape[1:3]) > MAX_SIDE:
        raise InputError(
            f"frames of {frames.shape[2]}x{frames.shape[1]} are larger than the {MAX_SIDE} a side written"
        )
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"fps must be a number, got {fps!r}") from None
    return path, frames, check_fps(fps)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write uint8 RGB ``[T, H, W, 3]`` as an H.264 yuv420p ``.mp4``, atomically.

    yuv420p needs even sizes: an odd height or width is padded by one row/column of edge pixels.
    """
    if Path(path).suffix.lower() != ".mp4":
        raise InputError(f"videos are written as H.264 .mp4; {path} should end in .mp4")
    path, frames, fps = _checked(path, frames, fps)
    with atomic_path(path) as tmp:
        _encode_mp4(tmp, frames, fps, crf)
    return path


def write_image(path: str | os.PathLike, frame: np.ndarray) -> Path:
    """Write one uint8 RGB ``[H, W, 3]`` frame as a ``.png``, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"images are written as .png; {path} should end in .png")
    frame = _check_frames(np.asarray(frame)[None])[0]
    with atomic_path(path) as tmp:
        _encode_png(tmp, frame)
    return path


def write_video_and_sidecar(path: str | os.PathLike, frames: np.ndarray, fps: float | None, meta: dict) -> dict:
    """Write the mp4 (or, for a ``.png`` path, the one frame) and its JSON sidecar together: both appear, or
    neither does and any earlier pair is left as it was. Returns ``{"video": ..., "sidecar": ...}``.
    """
    path, frames, fps = _checked(path, frames, fps)
    side = sidecar_path(path)
    text = sidecar_text(meta)  # fails (non-JSON metadata) before anything is written
    with atomic_paths(path, side) as (tmp, tmp_side):
        _encode_png(tmp, frames[0]) if fps is None else _encode_mp4(tmp, frames, fps, 18)
        tmp_side.write_text(text, encoding="utf-8")
    return {"video": str(path), "sidecar": str(side)}


def side_by_side(*clips: np.ndarray) -> np.ndarray:
    """Place clips ``[T, H, W, 3]`` left to right; shorter clips repeat their last frame.

    Clips of different heights are resized (keeping their aspect ratio) to the tallest one.
    """
    if not clips:
        raise InputError("side_by_side needs at least one clip")
    clips = [_check_frames(c) for c in clips]
    length = max(len(c) for c in clips)
    height = max(c.shape[1] for c in clips)
    parts = []
    for clip in clips:
        if clip.shape[1] != height:
            width = max(1, round(clip.shape[2] * height / clip.shape[1]))
            clip = np.stack([resize_frame(f, (height, width), "stretch") for f in clip])
        if len(clip) < length:
            clip = np.concatenate([clip, np.repeat(clip[-1:], length - len(clip), axis=0)])
        parts.append(clip)
    return np.concatenate(parts, axis=2)
