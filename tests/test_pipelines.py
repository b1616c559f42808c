"""Generation in CV-VAE latent space with the tiny preset on CPU (2 steps, 64x64, 2-3 latents)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_adapter
from PIL import Image

from cvvae.errors import InputError
from cvvae.loading import RANDOM_WEIGHTS_NOTICE
from cvvae.pipelines.api import GenerationSettings, generate
from cvvae.pipelines.conditioning import fps_id

SF = 0.18215
RUN = dict(height=64, width=64, num_inference_steps=2)


@pytest.fixture(scope="module")
def svd():
    from cvvae.pipelines.svd import CVVAEVideoPipeline
    from cvvae.pipelines.tiny import build_tiny_svd

    pipe = CVVAEVideoPipeline(**build_tiny_svd())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def animatediff():
    from cvvae.pipelines.animatediff import CVVAEAnimateDiffPipeline
    from cvvae.pipelines.tiny import build_tiny_animatediff

    pipe = CVVAEAnimateDiffPipeline(**build_tiny_animatediff())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Recorder:
    """Wraps a module's forward / a method and keeps its first positional argument and kwargs."""

    def __init__(self, obj, name):
        self.calls, self.obj, self.name, self.orig = [], obj, name, getattr(obj, name)

    def __enter__(self):
        def wrapper(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.orig(*args, **kwargs)

        setattr(self.obj, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        setattr(self.obj, self.name, self.orig)


def _final_latents():
    box = {}

    def callback(pipe, step, t, kwargs):
        box["latents"] = kwargs["latents"].clone()
        return kwargs

    return box, callback


def test_svd_frames_scaling_and_fps(svd, image):
    """n latents -> 4n-3 frames; image latents enter unscaled; decode sees latents / sf exactly once."""
    box, cb = _final_latents()
    with Recorder(svd.unet, "forward") as unet, Recorder(svd.vae, "decode") as dec:
        out = svd(
            image,
            num_latent_frames=3,
            fps=24,
            noise_aug_strength=0.0,
            output_type="np",
            generator=_gen(0),
            callback_on_step_end=cb,
            **RUN,
        )
    assert out.frames.shape == (1, 9, 64, 64, 3) and out.fps == 24 and out.conditioning_fps == 5
    # decode input: the UNet's final latents [B, n, 4, h, w] divided by the scaling factor once
    z = dec.calls[0][0][0]
    torch.testing.assert_close(z, box["latents"].permute(0, 2, 1, 3, 4) / SF)
    # conditioning: the raw CV-VAE mode latent of the image (SVD convention: no scaling), on every frame
    args, kwargs = unet.calls[0]
    cond = args[0][1:, :, 4:]  # CFG batch: [uncond, cond]; channels 4: are the image latent
    pixels = svd.video_processor.preprocess(image, height=64, width=64)
    raw = svd.vae.encode(pixels).latent_dist.mode()[:, :, 0]
    torch.testing.assert_close(cond, raw[:, None].expand_as(cond), rtol=1e-4, atol=1e-5)
    added = kwargs.get("added_time_ids", args[3] if len(args) > 3 else None)
    assert added[0].tolist() == pytest.approx([5.0, 127.0, 0.0])


def test_fps_rule():
    assert fps_id(28, 4) == 6  # SVD's default id (7 fps - 1) for 4x the frames
    assert fps_id(24, 4) == 5 and fps_id(6, 4) == 0.5 and fps_id(10, 4) == 1.5  # the real rate, no rounding
    assert fps_id(2, 4) == 0  # floored at 0
    assert fps_id(7, 1) == 6  # one frame per latent: SVD's own rule
    for bad in (0, -3, float("nan")):
        with pytest.raises(InputError):
            fps_id(bad, 4)


def test_presets_default_to_svds_own_fps_id():
    from cvvae.pipelines.presets import PRESETS

    for name in ("svd-xt", "svd", "sd21"):
        assert fps_id(PRESETS[name].defaults("svd").fps, 4) == 6


def test_svd_seed_and_native_vae(svd, image):
    a = svd(image, num_latent_frames=2, output_type="latent", generator=_gen(1), **RUN).frames
    b = svd(image, num_latent_frames=2, output_type="latent", generator=_gen(1), **RUN).frames
    c = svd(image, num_latent_frames=2, output_type="latent", generator=_gen(2), **RUN).frames
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    native = svd(image, num_latent_frames=2, fps=28, output_type="np", vae="native", generator=_gen(1), **RUN)
    assert native.frames.shape == (1, 2, 64, 64, 3) and native.fps == 7
    with Recorder(svd.native_vae, "decode") as dec:  # windows of 4 frames: 4 latents (one frame each) at a time
        svd.decode_video(torch.zeros(1, 5, 4, 8, 8), vae="native", tiling={"frames_per_window": 4})  # [B, n, C, h, w]
        svd.decode_video(torch.zeros(1, 5, 4, 8, 8), vae="native")
    assert [c[1]["num_frames"] for c in dec.calls] == [4, 1, 5]


def test_animatediff_frames_and_scaling(animatediff):
    box, cb = _final_latents()
    with Recorder(animatediff.vae, "decode") as dec:
        out = animatediff(
            "a cat", num_latent_frames=2, output_type="np", generator=_gen(0), callback_on_step_end=cb, **RUN
        )
    assert out.frames.shape == (1, 5, 64, 64, 3)
    torch.testing.assert_close(dec.calls[0][0][0], box["latents"] / SF)  # [B, 4, n, h, w], scaled once
    native = animatediff("a cat", num_latent_frames=2, output_type="pt", vae="native", generator=_gen(0), **RUN)
    assert native.frames.shape == (1, 2, 3, 64, 64)


def test_adapter_changes_output_deterministically(svd, image, tmp_path):
    make_adapter(tmp_path / "ad")
    from cvvae.pipelines.adapters import apply_adapter, remove_adapter

    kw = dict(num_latent_frames=2, output_type="latent", **RUN)
    base = svd(image, generator=_gen(0), **kw).frames
    apply_adapter(svd.unet, tmp_path / "ad")
    try:
        a = svd(image, generator=_gen(0), **kw).frames
        b = svd(image, generator=_gen(0), **kw).frames
    finally:
        remove_adapter(svd.unet)
    torch.testing.assert_close(a, b)
    assert (a - base).abs().max() > 1e-4
    torch.testing.assert_close(svd(image, generator=_gen(0), **kw).frames, base)


def test_generate_t2v_sd21_writes_video_and_sidecar(tmp_path):
    import av

    s = GenerationSettings(mode="t2v", prompt="a red kite", t2v_backbone="sd21", num_latent_frames=2, seed=3)
    r = generate(s, tmp_path / "kite.mp4", preset="tiny", progress=False)
    assert r.frames == 5 and r.video_path.is_file()
    with av.open(str(r.video_path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 5
    meta = json.loads(r.sidecar_path.read_text())
    assert meta["notice"] == RANDOM_WEIGHTS_NOTICE and meta["random_weights"] is True
    assert meta["settings"]["prompt"] == "a red kite" and meta["settings"]["steps"] == 2
    assert meta["backbone"] == "sd21" and meta["models"]["cvvae_subfolder"] == "vae3d_v1-1"
    assert {"versions", "created", "timings"} <= set(meta) and meta["conditioning_fps"] == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="t2v", prompt="  "), "non-empty prompt"),
        (dict(mode="i2v"), "needs an image"),
        (dict(mode="t2v", prompt="x", height=70), "multiple of 64"),
        (dict(mode="t2v", prompt="x", num_latent_frames=0), "num_latent_frames"),
        (dict(mode="t2v", prompt="x", num_latent_frames=10000), "num_latent_frames"),
        (dict(mode="t2v", prompt="x", min_guidance=4.0, max_guidance=3.0), "min_guidance"),
        (dict(mode="v2v", prompt="x"), "mode"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        GenerationSettings(**kwargs).validate()


def test_missing_and_corrupt_images(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not a png at all")
    for path, match in ((tmp_path / "missing.png", "does not exist"), (bad, "not a readable image")):
        with pytest.raises(InputError, match=match):
            generate(GenerationSettings(mode="i2v", image=str(path)), tmp_path / "o.mp4", preset="tiny")
    assert not list(tmp_path.glob("*.mp4"))


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from cvvae.cli import main

    out = tmp_path / "o.mp4"
    rc = main(["generate", "i2v", "--preset", "tiny", "--image", str(tmp_path / "nope.png"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and "nope.png" in err[0]
    rc = main(["generate", "t2v", "--preset", "tiny", "--prompt", "x", "--num-latent-frames", "0", "--out", str(out)])
    assert rc == 2 and "num_latent_frames" in capsys.readouterr().err
    assert not out.exists()


def test_cli_i2v_tiny(tmp_path, capsys, image):
    from cvvae.cli import main

    image.save(tmp_path / "in.png")
    out = tmp_path / "o.mp4"
    args = ["generate", "i2v", "--preset", "tiny", "--image", str(tmp_path / "in.png"), "--out", str(out)]
    rc = main([*args, "--num-latent-frames", "2", "--fps", "24", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "5 frames" in printed and "RANDOM" in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["frames"] == 5 and meta["fps"] == 24 and meta["conditioning_fps"] == 5
