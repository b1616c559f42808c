"""Shared fixtures: tiny random models, offline hub, paths to the shared references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, torch.get_num_threads()))

from cvvae.loading import TINY_VAE_CONFIG, build_tiny_vae  # noqa: E402 (after the offline settings)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY = SHARED / "fixtures" / "cvvae_parity"
VIDEOS = SHARED / "data" / "videos"

# A CV-VAE small enough for CPU tests, with the released structure (4 levels, both attentions).
TINY_CONFIG = TINY_VAE_CONFIG


@pytest.fixture
def tiny_vae():
    return build_tiny_vae(seed=0)


@pytest.fixture
def parity_dir():
    if not PARITY.is_dir():
        pytest.skip(f"parity fixture {PARITY} is absent")
    return PARITY


@pytest.fixture
def real_video():
    path = VIDEOS / "19216241-hd_1280_720_30fps.mp4"
    if not path.is_file():
        pytest.skip(f"sample video {path} is absent")
    return path
