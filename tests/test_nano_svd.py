"""The nano SVD's machinery: SVD's own world (an image VAE, one latent per frame) beside CV-VAE's, training a
whole UNet from scratch with a held-out loss, the nano preset in both worlds, and the experiment's statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLIP

from cvvae.weights import NANO_VAE2D
from finetune.nano import UNET_CONFIG

CAT = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cat.jpg"
SMALL_UNET = dict(  # the nano UNet's structure at a test's size
    UNET_CONFIG,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64),
)


@pytest.fixture(scope="module")
def nano_svd(tmp_path_factory) -> Path:
    from finetune import nano

    folder = tmp_path_factory.mktemp("nano") / "svd"
    return nano.write_folder(folder, nano.build_random(seed=0, unet_config=SMALL_UNET), NANO_VAE2D)


def test_both_worlds_condition_on_the_same_fps_id():
    """30 fps clips: CV-VAE's latents run at 30 / 4; the 2-D world takes every 4th frame (7.5 fps, one latent
    per frame). Both give the UNet the same fps id, so the worlds differ only in their latents."""
    from cvvae.pipelines.conditioning import fps_id
    from finetune.experiment import WORLD_2D_FPS

    assert fps_id(30.0, 4) == fps_id(WORLD_2D_FPS, 1) == fps_id(30.0 / 4, 1) == 6.5


def test_posteriors_match_encoding():
    from cvvae.frames import frames_to_tensor
    from cvvae.vaes import load_video_vae

    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    with torch.no_grad():
        image = load_video_vae("nano-2d")
        mean, logvar = image.posterior(x)  # [1, 4, 5, 8, 8]
        assert mean.shape == logvar.shape == (1, 4, 5, 8, 8)
        one = image.module.encode(x[:, :, 3]).latent_dist
        torch.testing.assert_close(mean[:, :, 3], one.mean)
        torch.testing.assert_close(logvar[:, :, 3], one.logvar)
        video = load_video_vae("nano")
        mean, logvar = video.posterior(x)
        assert mean.shape == (1, 4, 2, 8, 8)  # 1 + 4 (n - 1) frames: 5 -> 2 latents
        torch.testing.assert_close(mean, video.encode(x))  # the posterior's mode is what encode returns


def test_full_training_in_the_2d_world(nano_svd, tmp_path):
    """A cache of per-frame 2-D latents at stride 4, a whole UNet trained 2 steps, its held-out loss logged
    at every checkpoint and reproduced from the saved UNet."""
    from diffusers import UNetSpatioTemporalConditionModel

    from cvvae.video import read_video, write_video
    from finetune.config import load_config
    from finetune.data import LatentCache, build_cache
    from finetune.models import load_cvvae, load_encoders, model_ids
    from finetune.trainer import heldout_loss, train

    (tmp_path / "videos").mkdir()
    for i in range(2):
        frames, fps = read_video(CLIP, start=10 * i, num_frames=9, size=(64, 64))
        write_video(tmp_path / "videos" / f"clip{i}.mp4", frames, fps)
    cfg = load_config(
        None,
        [
            f"model.base={nano_svd}",
            "model.cvvae=nano-2d",
            f"data.videos={tmp_path / 'videos'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.height=64",
            "data.width=64",
            "data.num_latent_frames=2",
            "data.stride=4",
            "data.tiling=false",
            f"train.output_dir={tmp_path / 'run'}",
            "train.mode=full",
            "train.max_steps=2",
            "train.checkpoint_every=1",
            "train.learning_rate=1e-3",
            "train.mixed_precision=no",
            "train.gradient_checkpointing=false",
            "train.report_to=none",
            f"train.heldout_cache={tmp_path / 'cache'}",
            "train.heldout_repeats=2",
        ],
    )
    manifest = build_cache(cfg.data, load_encoders(cfg.model), model_ids(cfg.model))
    assert [(c["frames"], c["stride"]) for c in manifest["clips"]] == [(2, 4), (2, 4)]  # frames 0 and 4
    assert LatentCache(cfg.data.cache_dir)[0]["latents_mean"].shape == (4, 2, 8, 8)
    result = train(cfg)
    assert result["step"] == 2 and Path(result["unet"]).is_dir() and "adapter" not in result
    base = UNetSpatioTemporalConditionModel.from_pretrained(nano_svd / "unet")
    trained = UNetSpatioTemporalConditionModel.from_pretrained(result["unet"])
    old, new = base.state_dict(), trained.state_dict()
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert len(changed) > 0.9 * len(old)  # every weight trains, not only conv_out
    logged = [json.loads(line) for line in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all(math.isfinite(r["heldout_loss"]) for r in logged)
    again = heldout_loss(trained, load_cvvae(cfg.model), LatentCache(cfg.data.cache_dir), cfg, repeats=2)
    assert again == pytest.approx(logged[-1]["heldout_loss"], rel=1e-5)  # fixed draws: the same figure


def test_a_batch_for_every_process(tmp_path):
    from cvvae.errors import InputError
    from finetune.config import load_config
    from finetune.models import model_ids
    from finetune.trainer import _check_cache

    cfg = load_config(None, ["model.base=tiny", "model.cvvae=tiny", "train.batch_size=1"])

    class OneClip:
        cache_dir, manifest = tmp_path, {"models": model_ids(cfg.model)}

        def __len__(self):
            return 1

    _check_cache(OneClip(), cfg, processes=1)
    with pytest.raises(InputError, match="fewer than train.batch_size=1 x 2 process"):
        _check_cache(OneClip(), cfg, processes=2)  # two processes would wait for each other forever


def test_nano_preset_in_both_worlds(nano_svd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from cvvae.pipelines.api import GenerationSettings, generate

    settings = GenerationSettings(mode="i2v", image=str(CAT), steps=2)
    video = generate(settings, tmp_path / "cv.mp4", preset="nano", components={"svd": str(nano_svd)}, progress=False)
    assert (video.frames, video.fps) == (17, 30.0)  # 5 latents -> 1 + 4 x 4 frames
    settings.fps = 7.5
    own = generate(
        settings, tmp_path / "2d.mp4", preset="nano", components={"svd": str(nano_svd), "cvvae": "nano-2d"},
        progress=False,
    )  # fmt: skip
    assert (own.frames, own.fps) == (5, 7.5)  # SVD's own world: one frame per latent


def test_experiment_statistics_follow_the_decision_rule():
    from finetune.experiment import bootstrap_ci, decide, measure, summarise

    rng = np.random.default_rng(0)

    def arm(warp, motion, seam):
        return [
            {"clip": f"c{i}", "seed": s, "warping_error": warp + 0.01 * rng.standard_normal(), "motion": motion,
             "group_seam": seam, "frame_difference": warp}
            for i in range(10) for s in range(2)
        ]  # fmt: skip

    rows = {"untuned": arm(1.0, 1.0, 2.0), "T": arm(0.5, 1.0, 1.2), "C": arm(0.9, 1.0, 2.0), "F": arm(0.1, 0.2, 2.0)}
    vs_untuned = {k: v for k, v in summarise(rows, "untuned", 500).items() if k in ("T", "C", "F")}
    vs_control = {k: v for k, v in summarise(rows, "C", 500).items() if k in ("T", "F")}
    verdicts = decide(vs_untuned, vs_control, summarise(rows, "untuned", 500)["untuned"])
    assert verdicts["T"] == {"lower_warping_error": True, "keeps_motion": True, "beats_control": True,
                             "reduces_flicker": True, "reduces_seam": True}  # fmt: skip
    assert verdicts["F"]["lower_warping_error"] and not verdicts["F"]["keeps_motion"]  # frozen: no credit
    assert not verdicts["F"]["reduces_flicker"] and not verdicts["C"]["beats_control"]
    lo, hi = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]), 1000)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    frozen = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 17, axis=0)
    still = measure(frozen, frozen[0], "cvvae")
    assert still["warping_error"] == 0 and still["motion"] == 0 and "group_seam" not in still
    jumps = frozen.copy().astype(np.int16)
    for k in range(1, 17):
        jumps[k:] += 6 if (k - 1) % 4 == 0 else 1  # a jump into frames 5, 9, 13: the latent groups' seams
    assert measure(jumps.clip(0, 255).astype(np.uint8), None, "cvvae")["group_seam"] > 2


def test_cpu_without_svd_weights_defaults_to_nano(tmp_path, monkeypatch):
    from cvvae.pipelines.presets import default_i2v_preset

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    preset, note = default_i2v_preset(cuda=False)
    assert preset == "nano" and "--preset svd-xt" in note
    assert default_i2v_preset(cuda=True) == ("svd-xt", "")


def test_the_shipped_nano_preset_moves_the_example_image(tmp_path):
    """The documented offline command, as written: a clip that moves (the nano SVD is trained, not random)."""
    import os
    import subprocess
    import sys

    from cvvae import metrics
    from cvvae.video import read_video

    out = tmp_path / "outputs" / "cat.mp4"
    cmd = [
        sys.executable,
        "-m",
        "cvvae",
        "generate",
        "i2v",
        "--preset",
        "nano",
        "--image",
        str(CAT),
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=CAT.parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 64, 3) and fps == 30.0
    notice = "generated by the 'nano' preset"  # named on the terminal and in the sidecar, as in the app
    assert notice in run.stdout and notice in json.loads(out.with_suffix(".json").read_text())["notice"]
    from cvvae.video import read_image, resize_frame

    image = resize_frame(np.asarray(read_image(CAT).convert("RGB")), (64, 64))
    assert metrics.motion(frames) > 0.05  # px per frame: it moves ...
    assert metrics.psnr(frames[:1], image[None]) > 16  # ... from the picture it was given (random weights: ~8 dB)


def test_a_missing_local_model_gets_no_download_advice(tmp_path):
    from cvvae.errors import ModelLoadError
    from cvvae.pipelines.presets import check_models

    with pytest.raises(ModelLoadError) as err:
        check_models("nano", "svd", {"svd": str(tmp_path / "missing")})
    assert "does not exist" in str(err.value) and "Pass folders that exist" in str(err.value)
    assert "network" not in str(err.value)


def test_the_app_makes_no_outputs_folder_for_a_bad_preset(tmp_path):
    from app.__main__ import make_handlers, parse_args
    from cvvae.errors import InputError

    out = tmp_path / "outputs"
    with pytest.raises(InputError, match="unknown preset"):
        make_handlers(parse_args(["--preset", "nope", "--outputs", str(out)]))
    assert not out.exists()
