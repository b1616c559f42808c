"""The SD3-compatible CV-VAE (16 latent channels): parity with the release, loading by class name, the
command line with a folder of the variant, SD3's latent convention, text -> image with tiny SD3."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CLIP, SD3_MANIFEST, SD3_PARITY
from safetensors.torch import load_file, save_file

from cvvae import CVVAEModel, CVVAESD3Model, ModelLoadError
from cvvae.cli import main
from cvvae.latents import LatentScaling, from_diffusion, to_diffusion
from cvvae.loading import build_tiny_vae, load_vae


@pytest.fixture(scope="module")
def parity():
    model = CVVAESD3Model.from_pretrained(SD3_PARITY, dtype=torch.float32).eval()
    return model, load_file(SD3_PARITY / "io.safetensors")


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


def test_released_keys_and_shapes_match_manifest():
    expected = json.loads(SD3_MANIFEST.read_text())["state_dict"]
    with torch.device("meta"):
        model = CVVAESD3Model()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_loading_picks_the_class_from_config_and_is_strict(tmp_path):
    assert type(load_vae(SD3_PARITY)) is CVVAESD3Model and type(load_vae("tiny")) is CVVAEModel
    folder = tmp_path / "m"
    build_tiny_vae(variant="sd3").save_pretrained(folder)
    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    weights.pop("decoder.mid_block.attentions.0.to_q.weight")
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match="CVVAESD3Model.*missing keys.*to_q"):
        load_vae(folder)


def test_latent_boundary_scales_and_shifts_once():
    vae = build_tiny_vae(variant="sd3")
    scaling = LatentScaling.of(vae)
    assert (scaling.scaling_factor, scaling.shift_factor) == (1.5305, 0.0609)  # SD3's, kept in the config
    z = torch.randn(1, 16, 2, 4, 4)
    torch.testing.assert_close(to_diffusion(z, scaling), (z - 0.0609) * 1.5305)
    torch.testing.assert_close(from_diffusion(to_diffusion(z, scaling), scaling), z)
    assert LatentScaling.of(CVVAEModel.from_config(build_tiny_vae().config)).shift_factor == 0.0


def test_sd3_pipeline_decodes_the_denoised_latent_once():
    from test_pipelines import Recorder

    from cvvae.pipelines.sd3 import CVVAESD3ImagePipeline
    from cvvae.pipelines.tiny import build_tiny_sd3

    pipe = CVVAESD3ImagePipeline(**build_tiny_sd3())
    pipe.set_progress_bar_config(disable=True)
    run = dict(height=64, width=64, num_inference_steps=2)
    latent = pipe("a kite", generator=torch.Generator().manual_seed(0), output_type="latent", **run).frames
    with Recorder(pipe.vae, "decode") as dec:
        image = pipe("a kite", generator=torch.Generator().manual_seed(0), output_type="np", **run).frames
    assert latent.shape == (1, 16, 8, 8) and image.shape == (1, 64, 64, 3)
    torch.testing.assert_close(dec.calls[0][0][0], (latent / 1.5305 + 0.0609)[:, :, None])  # one latent frame
    native = pipe("a kite", generator=torch.Generator().manual_seed(0), output_type="np", vae="native", **run)
    assert native.frames.shape == (1, 64, 64, 3)


def test_command_line_round_trip_with_a_folder_of_the_variant(tmp_path, capsys):
    folder = tmp_path / "cvvae-sd3"
    build_tiny_vae(variant="sd3").save_pretrained(folder)
    z, out = tmp_path / "z.safetensors", tmp_path / "o.mp4"
    model = ["--model", str(folder), "--device", "cpu"]
    assert main(["encode", str(CLIP), str(z), *model, "--frames", "9", "--height", "32", "--width", "48"]) == 0
    assert json.loads(capsys.readouterr().out)["latent_shape"] == [1, 16, 3, 4, 6]
    assert main(["decode", str(z), str(out), *model]) == 0 and out.is_file()
    capsys.readouterr()
    assert main(["decode", str(z), str(tmp_path / "other.mp4"), "--model", "tiny", "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "CVVAESD3Model latents" in err[0] and not (tmp_path / "other.mp4").exists()
    assert main(["reconstruct", str(CLIP), str(tmp_path / "r.mp4"), *model, "--frames", "5"]) == 0


def test_generate_text_to_image_writes_a_png(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "kite.png"
    assert main(["generate", "t2i", "--preset", "tiny", "--prompt", "a kite", "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (64, 64)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["backbone"] == "sd3" and meta["mode"] == "t2i" and meta["random_weights"] is True
    assert main(["generate", "t2i", "--preset", "tiny", "--prompt", "x", "--out", str(tmp_path / "x.mp4")]) == 2


def test_tiles_of_the_variant_match_the_whole_clip():
    """Replicated padding, conv shortcuts and per-frame attention tile like the SD 2.1 variant's layers."""
    from cvvae.video import frames_to_tensor, read_video

    vae = build_tiny_vae(variant="sd3")
    x = frames_to_tensor(read_video(CLIP, num_frames=9, size=(48, 64))[0])
    settings = dict(enabled=True, frames_per_window=4, tile_size=32, norm="exact", halo=6, temporal_halo=4)
    with torch.no_grad():
        z, z_tiled = (vae.encode(x, tiling=t).latent_dist.mean for t in ({"enabled": False}, settings))
        y, y_tiled = (vae.decode(z, tiling=t).sample for t in ({"enabled": False}, settings))
        z_tile = vae.encode(x, tiling={**settings, "norm": "tile", "halo": 0}).latent_dist.mean
    assert (z_tiled - z).abs().mean() < 0.1 * (z_tile - z).abs().mean()
    assert (y_tiled - y).abs().mean() < 0.05 * y.abs().mean()
