"""Video I/O: PyAV round trips, frame selection, stills, resizing, tensors, atomic outputs, bad files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cvvae.errors import InputError, UserError
from cvvae.outputs import atomic_path, sidecar_path, write_json_atomic, write_sidecar
from cvvae.video import (
    VideoInfo,
    VideoReadError,
    frames_to_tensor,
    probe,
    read_image,
    read_video,
    side_by_side,
    tensor_to_frames,
    write_video,
)


def smooth_clip(t: int, h: int, w: int) -> np.ndarray:
    """Smooth moving gradients (compress well, so round-trip errors stay small)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [
        np.stack([x / w * 200 + 4 * i, y / h * 200 + 2 * i, (x + y) / (h + w) * 150 + 50], axis=-1) for i in range(t)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def level_clip(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame i is a uniform grey of level 10 + 20 i, so a frame's index can be read back."""
    return np.stack([np.full((h, w, 3), 10 + 20 * i, np.uint8) for i in range(t)])


def write_with_pyav(path, frames, codec="libx264", fps=10):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode())


def write_audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))


# ----------------------------------------------------------------------------- round trips


def test_write_read_round_trip(tmp_path):
    clip = smooth_clip(12, 64, 96)
    path = write_video(tmp_path / "a.mp4", clip, fps=24)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(24)
    assert np.abs(frames.astype(int) - clip.astype(int)).mean() < 3
    assert probe(path) == VideoInfo(frames=12, fps=pytest.approx(24), height=64, width=96)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temporary left behind


def test_fractional_fps_is_kept(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", smooth_clip(4, 16, 16), fps=30000 / 1001)
    assert read_video(path)[1] == pytest.approx(29.97, abs=1e-3)


def test_odd_size_is_padded_by_edge_pixels(tmp_path):
    clip = smooth_clip(3, 61, 91)
    frames, _ = read_video(write_video(tmp_path / "odd.mp4", clip, fps=10))
    assert frames.shape == (3, 62, 92, 3)
    assert np.abs(frames[:, :61, :91].astype(int) - clip.astype(int)).mean() < 3
    assert np.abs(frames[:, :, 91].astype(int) - frames[:, :, 90].astype(int)).mean() < 3


def test_start_stride_num_frames(tmp_path):
    path = write_video(tmp_path / "levels.mp4", level_clip(12), fps=30)
    frames, fps = read_video(path, start=2, num_frames=3, stride=3)
    assert len(frames) == 3 and fps == pytest.approx(10)
    np.testing.assert_allclose(frames.reshape(3, -1).mean(1), [50, 110, 170], atol=3)
    assert len(read_video(path, start=10)[0]) == 2
    assert len(read_video(path, num_frames=100)[0]) == 12  # fewer frames exist: all of them
    with pytest.raises(VideoReadError, match="beyond the end"):
        read_video(path, start=12)
    for bad in (dict(start=-1), dict(stride=0), dict(num_frames=0)):
        with pytest.raises(InputError):
            read_video(path, **bad)


@pytest.mark.parametrize("suffix,codec", [(".webm", "libvpx-vp9"), (".mkv", "libx264"), (".mov", "libx264")])
def test_other_containers(tmp_path, suffix, codec):
    path = tmp_path / f"clip{suffix}"
    write_with_pyav(path, smooth_clip(4, 32, 32), codec)
    frames, fps = read_video(path)
    assert frames.shape == (4, 32, 32, 3) and fps == pytest.approx(10)


def test_gif_and_stills(tmp_path):
    images = [Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)) for i in range(5)]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    frames, _ = read_video(tmp_path / "a.gif")
    assert frames.shape == (5, 20, 30, 3)
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 40, 80, 120, 160])

    still = np.random.default_rng(0).integers(0, 256, (21, 33, 4), dtype=np.uint8)
    Image.fromarray(still, "RGBA").save(tmp_path / "s.png")
    frames, fps = read_video(tmp_path / "s.png")
    assert frames.shape == (1, 21, 33, 3) and fps > 0
    np.testing.assert_array_equal(frames[0], np.asarray(Image.fromarray(still, "RGBA").convert("RGB")))
    assert read_image(tmp_path / "s.png").mode == "RGB"
    assert probe(tmp_path / "s.png").frames == 1
    assert read_video(tmp_path / "s.png", size=(8, 8))[0].shape == (1, 8, 8, 3)
    with pytest.raises(VideoReadError, match="beyond the end"):
        read_video(tmp_path / "s.png", start=1)
    (tmp_path / "bad.jpg").write_text("not a jpeg")
    with pytest.raises(VideoReadError, match="not a readable image"):
        read_image(tmp_path / "bad.jpg")


def test_resize_modes(tmp_path):
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :50, 1] = 255  # a green band on the left quarter
    path = write_video(tmp_path / "band.mp4", np.stack([frame] * 2), fps=10)
    cropped, _ = read_video(path, size=(50, 50), resize="crop")
    stretched, _ = read_video(path, size=(50, 50), resize="stretch")
    assert cropped.shape == stretched.shape == (2, 50, 50, 3)
    assert cropped[..., 1].max() < 40  # the band lies outside the centre crop
    assert stretched[:, :, :10, 1].mean() > 200  # stretching keeps it, squeezed to the left
    upscaled, _ = read_video(path, size=(300, 500))
    assert upscaled.shape == (2, 300, 500, 3)
    with pytest.raises(InputError):
        read_video(path, size=(50, 50), resize="zoom")
    with pytest.raises(InputError):
        read_video(path, size=(0, 50))


# ----------------------------------------------------------------------------- bad files


def test_reading_resized_holds_one_full_frame_at_a_time(tmp_path):
    """Frames are resized as they are decoded: the peak grows with the small output, not the source."""
    import tracemalloc

    path = write_video(tmp_path / "long.mp4", smooth_clip(48, 240, 320), fps=10)
    peaks = {}
    for n in (12, 48):
        tracemalloc.start()
        frames, _ = read_video(path, num_frames=n, size=(32, 48))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert frames.shape == (n, 32, 48, 3)
    full_clip = 48 * 240 * 320 * 3  # 11 MB had the frames been kept at their source size
    assert peaks[48] < full_clip / 4
    assert peaks[48] - peaks[12] < 2 * 36 * frames[0].nbytes + 500_000  # the 36 more small frames (list + stack)


def test_bad_files(tmp_path):
    real = write_video(tmp_path / "real.mp4", np.random.default_rng(0).integers(0, 256, (30, 64, 96, 3), np.uint8), 24)
    data = real.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    write_audio_only(tmp_path / "audio.mp4")
    cases = {
        "missing.mp4": "does not exist",
        "empty.mp4": "empty",
        "text.mp4": "not a readable video",
        "trunc.mp4": "truncated",
        "audio.mp4": "no video stream",
        ".": "not a file",
    }
    for name, message in cases.items():
        with pytest.raises(VideoReadError, match=message) as err:
            read_video(tmp_path / name)
        assert isinstance(err.value, UserError)
    with pytest.raises(VideoReadError, match="no video stream"):
        probe(tmp_path / "audio.mp4")


# ----------------------------------------------------------------------------- tensors


def test_tensor_conversions():
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    frames[0, 0, 0] = [0, 255, 128]
    x = frames_to_tensor(frames)
    assert x.shape == (1, 3, 5, 6, 7) and x.dtype == torch.float32
    assert x[0, :, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    np.testing.assert_array_equal(tensor_to_frames(x), frames)
    np.testing.assert_array_equal(tensor_to_frames(x[0].half()), frames)  # [3, T, H, W], half precision
    np.testing.assert_array_equal(frames_to_tensor(torch.from_numpy(frames)), x)
    half = frames_to_tensor(frames, device="cpu", dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), x, atol=1e-3)
    out = tensor_to_frames(torch.full((1, 3, 1, 2, 2), 3.0))
    assert out.dtype == np.uint8 and (out == 255).all()  # clamped
    with pytest.raises(InputError):
        frames_to_tensor(frames.astype(np.float32))
    with pytest.raises(InputError):
        tensor_to_frames(torch.zeros(2, 3, 1, 2, 2))


def test_side_by_side():
    a = level_clip(3, 32, 48)
    b = level_clip(5, 16, 16)
    both = side_by_side(a, b)
    assert both.shape == (5, 32, 48 + 32, 3)
    np.testing.assert_array_equal(both[3:, :, :48], np.repeat(a[-1:], 2, axis=0))  # padded with the last frame
    assert both[4, 0, 60, 0] == b[4, 0, 0, 0]
    with pytest.raises(InputError):
        side_by_side()


# ----------------------------------------------------------------------------- outputs


def test_atomic_outputs(tmp_path):
    target = tmp_path / "sub" / "out.mp4"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".mp4" and tmp != target
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(target.parent.iterdir()) == []
    with pytest.raises(InputError):
        write_video(tmp_path / "x.avi", level_clip(2), fps=10)
    assert not (tmp_path / "x.avi").exists()

    video = write_video(tmp_path / "v.mp4", level_clip(2), fps=10)
    side = write_sidecar(video, {"psnr": float("inf"), "size": (2, 3), "n": np.int64(4)})
    assert side == sidecar_path(video) == tmp_path / "v.json"
    meta = json.loads(side.read_text())
    assert meta["psnr"] is None and meta["size"] == [2, 3] and meta["n"] == 4
    assert set(meta["versions"]) == {"cvvae", "torch", "diffusers", "python"} and meta["created"].endswith("+00:00")
    assert json.loads(write_json_atomic(tmp_path / "d.json", {"a": 1}).read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "sub", "v.json", "v.mp4"]
