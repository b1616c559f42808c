"""The stack this project pins: CPU torch 2.13.0 in CI, and never torchvision."""

import importlib.util
import os

import torch


def test_torch_is_the_pinned_build():
    assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
    if os.environ.get("CI"):
        assert torch.__version__ == "2.13.0+cpu", f"CI must run on the CPU wheel, got {torch.__version__}"


def test_torchvision_is_not_installed():
    # torchvision has no working build here and breaks diffusers/transformers imports when present.
    assert importlib.util.find_spec("torchvision") is None
