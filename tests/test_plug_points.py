"""One place suffices: a backbone and a VAE registered from this file only run through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CLIP
from torch.nn import functional as F

from cvvae import devices
from cvvae.cli import main
from cvvae.errors import InputError
from cvvae.pipelines.decoding import CVVAEDecodingMixin, CVVAEVideoOutput
from cvvae.vaes import VAE_SPECS, VideoVAE, default_dtype_for, load_video_vae, register_vae

# ----------------------------------------------------------------------------- a toy backbone


class ToyPipeline(CVVAEDecodingMixin):
    """Denoises nothing: its latents are Gaussian noise of the right shape (mechanics only)."""

    def __init__(self, vae):
        self.vae, self.native_vae = vae, None
        self.calls = []

    def to(self, device):
        return self

    def set_progress_bar_config(self, **_):
        pass

    def maybe_free_model_hooks(self):
        pass

    def __call__(self, prompt, num_latent_frames, height, width, fps, generator, output_type, **_):
        self.calls.append(prompt)
        z = torch.randn(1, 4, num_latent_frames, height // 8, width // 8, generator=generator)
        return CVVAEVideoOutput(frames=z, fps=fps)


@pytest.fixture
def toy_backbone(monkeypatch):
    from cvvae.pipelines import backbones
    from cvvae.pipelines.defaults import Defaults

    toy = backbones.Backbone(
        name="toy",
        mode="t2v",
        label="Toy noise",
        build=lambda bundle: ToyPipeline(bundle.cvvae("sd21")),
        call_kwargs=lambda s, generator, callback: {
            "prompt": s.prompt,
            "num_latent_frames": s.num_latent_frames,
            "height": s.height,
            "width": s.width,
            "fps": s.fps,
            "generator": generator,
        },  # fmt: skip
        defaults=Defaults(3, 64, 64, 1, 20.0),
        tiny_defaults=Defaults(3, 64, 64, 1, 20.0),
        components={"toy": "toy/released"},
    )
    monkeypatch.setitem(backbones.BACKBONES, "toy", None)  # removed again after the test
    return backbones.register_backbone(toy)  # the one call docs/development.md shows


def test_a_registered_backbone_runs_through_the_command_line(toy_backbone, tmp_path, capsys):
    out = tmp_path / "toy.mp4"
    args = ["generate", "t2v", "--preset", "tiny", "--t2v-backbone", "toy", "--prompt", "noise", "--out", str(out)]
    assert main([*args, "--quiet", "--num-latent-frames", "2"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["backbone"] == "toy" and meta["frames"] == 5 and meta["fps"] == 20.0  # 1 + 4 (2 - 1) frames
    assert meta["models"]["toy"] == "tiny"  # its component, from the registry
    capsys.readouterr()
    assert main([*args, "--quiet", "--overwrite", "--component", "toy=/nowhere/toy"]) == 2  # a known component now
    assert "toy: folder /nowhere/toy does not exist" in capsys.readouterr().err  # checked before any loading
    assert main([*args, "--quiet", "--overwrite", "--component", f"toy={tmp_path}"]) == 0


def test_unknown_backbones_are_refused_with_the_known_ones():
    from cvvae.pipelines.backbones import get_backbone

    with pytest.raises(InputError, match="known: svd, animatediff, sd21, sd3"):
        get_backbone("svd-xxl")


# ----------------------------------------------------------------------------- a toy VAE


class PoolingVAE(VideoVAE):
    """Averages 2 frames and 4x4 pixels into a latent; repeats them back (non-causal: T = 2 n)."""

    name, temporal_factor, spatial_factor, latent_channels, causal = "pooling", 2, 4, 3, False

    def __init__(self):
        self.module = torch.nn.Conv3d(1, 1, 1)  # somewhere to hold a device and dtype

    def encode(self, x, sample=False, generator=None):
        return F.avg_pool3d(self.pad(self.place(x)), (2, 4, 4))

    def decode(self, z):
        return F.interpolate(self.place(z), scale_factor=(2, 4, 4), mode="nearest")


@pytest.fixture
def pooling_vae(monkeypatch):
    monkeypatch.setitem(VAE_SPECS, "pooling", None)  # restored after the test
    register_vae("pooling", lambda device=None, dtype=None, **_: PoolingVAE().to(device, dtype), "toy")


def test_a_registered_vae_runs_through_the_command_line(pooling_vae, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)  # CV-VAEs would default to bf16; others stay fp32
    assert default_dtype_for("pooling", "cpu") == torch.float32 and default_dtype_for("tiny", "cpu") == torch.bfloat16
    assert default_dtype_for("some/folder", "cpu") == torch.bfloat16  # a CV-VAE folder or hub id
    assert default_dtype_for("AutoencoderKLWan:some/model", "cpu") == torch.float32
    out = tmp_path / "pooled.mp4"
    assert main(["reconstruct", str(CLIP), str(out), "--model", "pooling", "--frames", "7"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["frames"] == 7 and (result["height"], result["width"]) == (144, 256)  # padded to 8, trimmed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["vae"]["name"] == "pooling" and meta["vae"]["temporal_factor"] == 2 and meta["dtype"] == "float32"
    assert main(["reconstruct", str(CLIP), str(tmp_path / "t.mp4"), "--model", "pooling", "--no-tiling"]) == 2
    assert "tiling options apply to CV-VAEs" in capsys.readouterr().err


def test_frame_arithmetic_comes_from_the_vae():
    vae = PoolingVAE()
    assert [vae.latent_frames(t) for t in (1, 2, 3, 8)] == [1, 1, 2, 4]
    assert vae.video_frames(4) == 8 and vae.compression() == 3 * 2 * 16 / 3
    frames = np.random.default_rng(0).integers(0, 256, (5, 10, 12, 3), dtype=np.uint8)
    assert vae.encode_frames(frames).shape == (1, 3, 3, 3, 3)  # 5 -> 6 frames, 10x12 -> 12x12
    assert vae.reconstruct(frames).shape == frames.shape
    tiny = load_video_vae("tiny")
    assert (tiny.temporal_factor, tiny.spatial_factor, tiny.causal) == (4, 8, True)
    assert tiny.latent_frames(9) == 3 and tiny.video_frames(3) == 9


def test_unknown_vae_specs_are_refused(capsys):
    with pytest.raises(InputError, match="unknown VAE 'nope'"):
        load_video_vae("nope")
    with pytest.raises(InputError, match="diffusers has no VAE class"):
        load_video_vae("AutoencoderKLNope:some/model")
