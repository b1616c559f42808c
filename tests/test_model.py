"""CVVAEModel: parity with the released implementation, loading, shapes and precision."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import MANIFEST
from safetensors.torch import load_file, save_file

from cvvae import CVVAEModel, InputError, ModelLoadError, TilingSettings, latent_frames, video_frames


@pytest.fixture(scope="module")
def parity(parity_dir):
    model = CVVAEModel.from_pretrained(parity_dir, dtype=torch.float32).eval()
    return model, load_file(parity_dir / "io.safetensors")


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
    expected = json.loads(MANIFEST.read_text())["state_dict"]
    with torch.device("meta"):
        model = CVVAEModel()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected


def _copy_model(saved_tiny_vae, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(saved_tiny_vae, dst)
    return dst


def test_strict_loading_rejects_missing_and_extra_keys(saved_tiny_vae, tmp_path):
    folder = _copy_model(saved_tiny_vae, tmp_path)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights.pop("decoder.mid.attn_1.q_t.weight")
    weights["decoder.extra.weight"] = torch.zeros(1)
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="missing keys.*q_t"):
        CVVAEModel.from_pretrained(folder)


def test_strict_loading_rejects_wrong_shapes(saved_tiny_vae, tmp_path):
    folder = _copy_model(saved_tiny_vae, tmp_path)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights["encoder.conv_in.weight"] = weights["encoder.conv_in.weight"][:, :, :1].contiguous()
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="conv_in"):
        CVVAEModel.from_pretrained(folder)


def test_pickle_checkpoints_are_refused(saved_tiny_vae, tmp_path):
    folder = _copy_model(saved_tiny_vae, tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.ckpt").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle.*allow_pickle"):
        CVVAEModel.from_pretrained(folder)


def test_missing_folder_and_offline_hub_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        CVVAEModel.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE.*hf download AILab-CVC/CV-VAE.*local folder"):
        CVVAEModel.from_pretrained("AILab-CVC/CV-VAE", subfolder="vae3d_v1-1")


def test_config_overrides_set_tiling_defaults(saved_tiny_vae):
    model = CVVAEModel.from_pretrained(saved_tiny_vae, tile_spatial_size=None, en_de_n_frames_a_time=8)
    assert model.tiling.tile_size is None and model.tiling.frames_per_window == 8
    model.enable_tiling(frames_per_window=4, tile_size=32, overlap=0.25)
    assert (model.tiling.frames_per_window, model.tiling.tile_size) == (4, 32)
    model.disable_tiling()
    assert not model.tiling.enabled and model.tiling.window_latents is None and model.tiling.tile_latents is None


def test_enable_tiling_keeps_what_it_is_not_told(tiny_vae):
    tiny_vae.enable_tiling(frames_per_window=8, tile_size=64, overlap=0.25, norm="tile")
    tiny_vae.disable_tiling()
    tiny_vae.enable_tiling()  # back on, with the settings kept
    assert tiny_vae.tiling == TilingSettings(8, 64, 0.25, norm="tile", auto=False)  # asked for: no per-call choice
    tiny_vae.enable_tiling(tile_size=32)
    assert (tiny_vae.tiling.frames_per_window, tiny_vae.tiling.tile_size, tiny_vae.tiling.norm) == (8, 32, "tile")
    tiny_vae.enable_tiling(frames_per_window=16)  # the temporal overlap follows the new window
    assert tiny_vae.tiling.temporal_overlap == 2
    with pytest.raises(InputError, match="frames_per_window"):
        tiny_vae.enable_tiling(frames_per_window=6)
    assert tiny_vae.tiling.frames_per_window == 16  # a refused change leaves the settings alone


def test_temporary_and_per_call_tiling_leave_the_model_alone(tiny_vae):
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    tiny_vae.enable_tiling(frames_per_window=4, tile_size=16)
    before = tiny_vae.tiling
    with torch.no_grad():
        with tiny_vae.tiling_override(enabled=False) as inside:
            assert not inside.enabled and not tiny_vae.tiling.enabled
            whole = tiny_vae.encode(x).latent_dist.mean
        assert tiny_vae.tiling == before
        per_call = tiny_vae.encode(x, tiling={"enabled": False}).latent_dist.mean
        tiled = tiny_vae.encode(x).latent_dist.mean
    assert tiny_vae.tiling == before
    torch.testing.assert_close(per_call, whole)
    assert not torch.allclose(tiled, whole)  # the model's own (tiled) settings give another result


def test_encode_and_decode_follow_cpu_offload_hooks(tiny_vae):
    """enable_model_cpu_offload moves a model through a hook on forward; encode/decode must trigger it too."""
    calls = []

    class Hook:
        def pre_forward(self, module, *args, **kwargs):
            calls.append(type(module).__name__)
            return args, kwargs

    tiny_vae._hf_hook = Hook()
    with torch.no_grad():
        z = tiny_vae.encode(torch.zeros(1, 3, 1, 16, 16)).latent_dist.mode()
        tiny_vae.decode(z)
    assert calls == ["CVVAEModel", "CVVAEModel"]


def test_reshape_z_dim_to_4_is_honoured(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    model = CVVAEModel.from_pretrained(tmp_path, reshape_z_dim_to_4=True).eval()
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latent_dist.mean
        ref = tiny_vae.encode(x).latent_dist.mean
        y = model.decode(z, num_frames=3).sample
    assert z.shape == (2 * 3, 4, 2, 2)  # [(B n), C, h, w]
    torch.testing.assert_close(z, ref.transpose(1, 2).flatten(0, 1))
    assert y.shape == (2, 3, 9, 16, 16)


def test_single_z_gives_a_deterministic_posterior():
    torch.manual_seed(0)
    model = CVVAEModel(ch=8, ch_mult=(1, 1, 2, 2), norm_num_groups=4, num_res_blocks=1, double_z=False).eval()
    with torch.no_grad():
        post = model.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1).latent_dist
    assert post.mean.shape == (1, 4, 2, 2, 2)
    torch.testing.assert_close(post.sample(torch.Generator().manual_seed(3)), post.mean)
    assert (post.kl() == 0).all()


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
