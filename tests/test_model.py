"""CVVAEModel: parity with the released implementation, loading, shapes and precision."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvvae import CVVAEModel, InputError, ModelLoadError, latent_frames, video_frames


@pytest.fixture(scope="module")
def parity(request):
    from conftest import PARITY

    if not PARITY.is_dir():
        pytest.skip(f"parity fixture {PARITY} is absent")
    model = CVVAEModel.from_pretrained(PARITY, torch_dtype=torch.float32).eval()
    return model, load_file(PARITY / "io.safetensors")


@pytest.mark.parametrize("prefix, key", [("", "video_u8"), ("image_", "image_u8")])
def test_parity_with_release(parity, prefix, key):
    model, ref = parity
    x = ref[key].float() / 127.5 - 1
    with torch.no_grad():
        post = model.encode(x).latent_dist
        decoded = model.decode(ref[prefix + "posterior_mean"]).sample
    torch.testing.assert_close(post.mean, ref[prefix + "posterior_mean"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(post.logvar, ref[prefix + "posterior_logvar"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decoded, ref[prefix + "decoded"], rtol=1e-4, atol=1e-4)


def test_parity_image_as_4d_input(parity):
    model, ref = parity
    x = ref["image_u8"].float()[:, :, 0] / 127.5 - 1  # (B, 3, H, W)
    with torch.no_grad():
        mean = model.encode(x).latent_dist.mean
    assert mean.shape == (1, 4, 1, 6, 10)
    torch.testing.assert_close(mean, ref["image_posterior_mean"], rtol=1e-4, atol=1e-4)


def test_released_keys_and_shapes_match_manifest():
    from conftest import SHARED

    manifest = SHARED / "reference" / "cvvae_state_dict_manifest.json"
    if not manifest.is_file():
        pytest.skip("state-dict manifest is absent")
    expected = json.loads(manifest.read_text())["state_dict"]
    with torch.device("meta"):
        model = CVVAEModel()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def _copy_fixture(parity_dir, tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(parity_dir / name, dst / name)
    return dst


def test_strict_loading_rejects_missing_and_extra_keys(parity_dir, tmp_path):
    folder = _copy_fixture(parity_dir, tmp_path)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights.pop("decoder.mid.attn_1.q_t.weight")
    weights["decoder.extra.weight"] = torch.zeros(1)
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="missing keys.*q_t"):
        CVVAEModel.from_pretrained(folder)


def test_strict_loading_rejects_wrong_shapes(parity_dir, tmp_path):
    folder = _copy_fixture(parity_dir, tmp_path)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights["encoder.conv_in.weight"] = weights["encoder.conv_in.weight"][:, :, :1].contiguous()
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(Exception, match="conv_in"):
        CVVAEModel.from_pretrained(folder)


def test_pickle_checkpoints_are_refused(parity_dir, tmp_path):
    folder = _copy_fixture(parity_dir, tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.ckpt").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle.*allow_pickle"):
        CVVAEModel.from_pretrained(folder)


def test_missing_folder_and_offline_hub_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        CVVAEModel.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE.*local folder"):
        CVVAEModel.from_pretrained("AILab-CVC/CV-VAE", subfolder="vae3d_v1-1")


def test_config_overrides_set_tiling_defaults(parity_dir):
    model = CVVAEModel.from_pretrained(parity_dir, tile_spatial_size=None, en_de_n_frames_a_time=8)
    assert model.tiling.tile_size is None and model.tiling.frames_per_window == 8
    model.enable_tiling(frames_per_window=4, tile_size=32, overlap=0.25)
    assert (model.tiling.frames_per_window, model.tiling.tile_size) == (4, 32)
    model.disable_tiling()
    assert model.tiling.tile_size is None and model.tiling.frames_per_window is None


def test_save_load_round_trip(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    loaded = CVVAEModel.from_pretrained(tmp_path).eval()
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).sample, tiny_vae(x).sample)


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_frame_rule(tiny_vae, frames):
    x = torch.rand(2, 3, frames, 16, 24) * 2 - 1
    with torch.no_grad():
        z = tiny_vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0))
        y = tiny_vae.decode(z).sample
    assert z.shape == (2, 4, 1 + (frames - 1) // 4, 2, 3)
    assert y.shape == (2, 3, video_frames(z.shape[2]), 16, 24)


@pytest.mark.parametrize("frames, height, width", [(10, 16, 24), (2, 20, 30), (14, 60, 90)])
def test_any_length_and_size_round_trips(tiny_vae, frames, height, width):
    x = torch.rand(1, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        z = tiny_vae.encode(x).latent_dist.mode()
        y = tiny_vae(x).sample
    assert z.shape[2:] == (latent_frames(frames), -(-height // 8), -(-width // 8))
    assert y.shape == x.shape


def test_images_as_4d_and_5d(tiny_vae):
    img = torch.rand(2, 3, 24, 16) * 2 - 1
    with torch.no_grad():
        z4 = tiny_vae.encode(img).latent_dist.mean
        z5 = tiny_vae.encode(img[:, :, None]).latent_dist.mean
        y4 = tiny_vae(img).sample
    torch.testing.assert_close(z4, z5)
    assert z4.shape == (2, 4, 1, 3, 2) and y4.shape == img.shape


def test_posterior_sampling_is_seeded(tiny_vae):
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        post = tiny_vae.encode(x).latent_dist
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    c = post.sample(torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(post.mode(), post.mean)
    assert post.kl().shape == (1,) and (post.kl() >= 0).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1, 3, 0, 16, 16), "empty"),
        (torch.zeros(1, 4, 5, 16, 16), "3 channels"),
        (torch.zeros(3, 16, 16), r"\[B, C, T, H, W\]"),
        (torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_inputs_raise_actionable_errors(tiny_vae, bad, match):
    with pytest.raises(InputError, match=match):
        tiny_vae.encode(bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(tiny_vae, dtype):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = tiny_vae(x).sample
        half = tiny_vae.to(dtype)
        y = half(x.to(dtype)).sample
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y.float() - ref).abs().mean() < 0.05


def test_gradient_checkpointing_matches(tiny_vae):
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    tiny_vae.train()
    loss = tiny_vae(x).sample.square().mean()
    (g_ref,) = torch.autograd.grad(loss, tiny_vae.encoder.conv_in.weight)
    tiny_vae.enable_gradient_checkpointing()
    assert tiny_vae.encoder.gradient_checkpointing and tiny_vae.decoder.gradient_checkpointing
    loss = tiny_vae(x).sample.square().mean()
    (g_ckpt,) = torch.autograd.grad(loss, tiny_vae.encoder.conv_in.weight)
    torch.testing.assert_close(g_ckpt, g_ref)
