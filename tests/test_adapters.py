"""Adapter folders: save / load / apply / remove / merge on the tiny SVD UNet."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_adapter

from cvvae.errors import InputError
from cvvae.pipelines.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterInfo,
    apply_adapter,
    load_adapter_info,
    merge_adapter,
    remove_adapter,
)
from cvvae.pipelines.tiny import tiny_svd_unet


def _unet():
    return tiny_svd_unet(seed=0)


def _forward(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 8, 8, 8, generator=g)  # [B, frames, 4 noisy + 4 image channels, h, w]
    emb = torch.randn(1, 1, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([1.0]), emb, torch.tensor([[6.0, 127.0, 0.02]])).sample


@pytest.mark.parametrize("mode", ["conv_out", "lora", "lora+conv_out"])
def test_round_trip_reproduces_the_trained_unet(tmp_path, mode):
    trained = make_adapter(tmp_path / "ad", mode)
    files = sorted(p.name for p in (tmp_path / "ad").iterdir())
    assert files == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    info = load_adapter_info(tmp_path / "ad")
    assert (info.mode, info.step, info.base_unet) == (mode, 7, "tiny")
    json.loads((tmp_path / "ad" / ADAPTER_CONFIG).read_text())  # plain JSON
    base = _unet()
    before = _forward(base)
    apply_adapter(base, tmp_path / "ad")
    after = _forward(base)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _forward(trained))
    remove_adapter(base)
    torch.testing.assert_close(_forward(base), before)


def test_merge_keeps_the_output_and_drops_lora(tmp_path):
    make_adapter(tmp_path / "ad")
    unet = _unet()
    apply_adapter(unet, tmp_path / "ad")
    out = _forward(unet)
    merge_adapter(unet)
    assert not any("lora_" in n for n, _ in unet.named_parameters())
    torch.testing.assert_close(_forward(unet), out, rtol=1e-4, atol=1e-4)


def test_only_adapter_tensors_are_saved(tmp_path):
    from safetensors.torch import load_file

    make_adapter(tmp_path / "ad")
    keys = load_file(str(tmp_path / "ad" / ADAPTER_WEIGHTS)).keys()
    assert keys and all("lora_" in k or k.startswith("conv_out.") for k in keys)


def test_bad_folders_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_adapter_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not an adapter folder"):
        apply_adapter(_unet(), tmp_path / "empty")
    make_adapter(tmp_path / "ad", "conv_out")
    (tmp_path / "ad" / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_adapter_info(tmp_path / "ad")
    with pytest.raises(InputError, match="mode"):
        AdapterInfo(mode="full")
