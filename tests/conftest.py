"""Shared fixtures: tiny random models, offline hub, the reference fixtures carried in tests/fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, torch.get_num_threads()))

from cvvae.loading import build_tiny_vae  # noqa: E402 (after the offline settings)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PARITY = FIXTURES / "cvvae_parity"
SD3_PARITY = FIXTURES / "cvvae_sd3_parity"
MANIFEST = FIXTURES / "cvvae_state_dict_manifest.json"
SD3_MANIFEST = FIXTURES / "cvvae_sd3_state_dict_manifest.json"
EXAMPLES = REPO / "assets" / "examples"
CLIP = EXAMPLES / "coffee_pan.mp4"  # 33 frames of a real photograph panned by a camera, 256x144, 12 fps
IMAGE = EXAMPLES / "cat.jpg"


@pytest.fixture
def tiny_vae():
    return build_tiny_vae(seed=0)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The released implementation's reference outputs (carried in the repository: never skipped)."""
    assert (PARITY / "io.safetensors").is_file(), f"the parity fixture {PARITY} is missing from the checkout"
    return PARITY


@pytest.fixture(scope="session")
def saved_tiny_vae(tmp_path_factory) -> Path:
    """A folder written by ``save_pretrained`` from the tiny random model (for strict-loading tests)."""
    folder = tmp_path_factory.mktemp("tiny-vae")
    build_tiny_vae(seed=0).save_pretrained(folder)
    return folder


LORA = dict(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)


def make_adapter(folder, mode: str = "lora+conv_out"):
    """A trained-looking adapter for the tiny SVD UNet: random LoRA tensors and a perturbed conv_out.

    Returns the UNet the adapter was taken from.
    """
    from peft import LoraConfig

    from cvvae.pipelines.adapters import AdapterInfo, add_lora, save_adapter
    from cvvae.pipelines.tiny import tiny_svd_unet

    unet = tiny_svd_unet(seed=0)
    torch.manual_seed(1)
    if "lora" in mode:
        add_lora(unet, LoraConfig(**LORA))
    if "conv_out" in mode:
        with torch.no_grad():
            unet.conv_out.weight.add_(0.05 * torch.randn_like(unet.conv_out.weight))
    info = AdapterInfo(mode=mode, peft_config=LoraConfig(**LORA) if "lora" in mode else None, base_unet="tiny", step=7)
    save_adapter(folder, unet, info)
    return unet


def wide_png(path: Path, width: int, height: int) -> Path:
    """A real (few-kilobyte) PNG of an extreme aspect ratio."""
    from PIL import Image

    Image.new("RGB", (width, height), (200, 100, 50)).save(path)
    return path


def ts_clip(path: Path, *sizes: tuple[int, int], rotation: int = 0) -> Path:
    """A clip of three frames per ``(height, width)``: MPEG-TS files joined byte by byte change size
    mid-stream; a ``.mp4`` path gets one size and a display matrix of ``rotation`` degrees."""
    import av
    import numpy as np

    data = b""
    for h, w in sizes:
        part = path.with_suffix(f".{h}x{w}{path.suffix}")
        with av.open(str(part), "w", format="mp4" if path.suffix == ".mp4" else "mpegts") as c:
            s = c.add_stream("libx264", rate=12)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            if rotation:
                s.set_display_rotation(rotation)
            frame = np.zeros((h, w, 3), np.uint8)
            frame[: h // 4, : w // 4] = 255  # a white corner shows which way the frames turned
            for _ in range(3):
                c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            c.mux(s.encode())
        data += part.read_bytes()
        part.unlink()
    path.write_bytes(data)
    return path
