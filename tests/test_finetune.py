"""Fine-tuning on the tiny preset: latent cache, EDM loss per mode, conv_out isolation, resume, adapters."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CLIP

from cvvae.errors import InputError
from finetune.config import ConfigError, load_config

BASE = [
    "model.base=tiny",
    "model.cvvae=tiny",
    "data.height=64",
    "data.width=64",
    "data.num_latent_frames=2",
    "data.shard_size=1",
    "train.mixed_precision=no",
    "train.gradient_checkpointing=false",
    "train.report_to=none",
    "train.learning_rate=1e-2",
    "train.max_steps=4",
    "train.checkpoint_every=2",
]


def _write_clips(folder: Path) -> None:
    """Two short clips cut from a real one + one corrupt file."""
    from cvvae.video import read_video, write_video

    folder.mkdir(parents=True)
    for i in range(2):
        frames, fps = read_video(CLIP, start=12 * i, num_frames=8, size=(72, 96))
        write_video(folder / f"clip{i}.mp4", frames, fps)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from finetune.data import build_cache
    from finetune.models import load_encoders, model_ids

    root = tmp_path_factory.mktemp("ft")
    _write_clips(root / "videos")
    cfg = load_config(None, BASE + [f"data.videos={root / 'videos'}", f"data.cache_dir={root / 'cache'}"])
    enc = load_encoders(cfg.model)
    assert build_cache(cfg.data, enc, model_ids(cfg.model), limit_shards=1) == {}  # interrupted after one shard
    first = (root / "cache" / "shard-00000.safetensors").stat().st_mtime_ns
    manifest = build_cache(cfg.data, enc, model_ids(cfg.model))  # resumes: shard 0 is not rewritten
    assert (root / "cache" / "shard-00000.safetensors").stat().st_mtime_ns == first
    return root, manifest


def _cfg(root: Path, *extra: str):
    return load_config(None, BASE + [f"data.cache_dir={root / 'cache'}", *extra])


def test_cache_manifest_and_report(cache):
    from finetune.data import LatentCache

    root, manifest = cache
    assert manifest["num_clips"] == 2
    clip = manifest["clips"][0]
    assert clip["frames"] == 5 and clip["size"] == [64, 64] and clip["start"] == 0 and clip["fps"] > 0
    assert manifest["models"] == {"base_unet": "tiny", "cvvae": "tiny"}
    report = json.loads((root / "cache" / "report.json").read_text())
    assert [Path(s["source"]).name for s in report["skipped"]] == ["corrupt.mp4"]
    cache = LatentCache(root / "cache")
    item = cache[1]
    assert item["latents_mean"].shape == (4, 2, 8, 8) and item["cond_pixels"].shape == (3, 64, 64)
    assert item["cond_pixels"].dtype == torch.uint8
    assert item["image_embeds"].shape == (1, 32) and torch.isfinite(item["latents_logvar"]).all()
    assert cache.scaling.scaling_factor == 0.18215 and cache.scaling.shift_factor == 0


def test_cache_refuses_other_settings(cache):
    from finetune.data import build_cache
    from finetune.models import model_ids

    root, _ = cache
    cfg = _cfg(root, f"data.videos={root / 'videos'}", "data.height=128")
    with pytest.raises(InputError, match="other settings"):
        build_cache(cfg.data, {}, model_ids(cfg.model))


def test_training_conditioning_equals_generation(cache):
    """The image latent and CLIP embedding the objective builds equal what the SVD pipeline feeds its UNet."""
    from PIL import Image

    from cvvae.pipelines.svd import CVVAEVideoPipeline
    from cvvae.pipelines.tiny import build_tiny_svd
    from cvvae.vaes import as_video_vae
    from finetune.data import LatentCache
    from finetune.objective import conditioning_latent

    root, _ = cache
    item = LatentCache(root / "cache")[0]
    pipe = CVVAEVideoPipeline(**build_tiny_svd())
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    unet_forward = pipe.unet.forward

    def record(sample, t, encoder_hidden_states, added_time_ids, **kw):
        seen.setdefault("cond", sample[1:, :1, 4:])  # CFG batch [uncond, cond]; image latent channels
        seen.setdefault("embeds", encoder_hidden_states[1:])
        seen.setdefault("ids", added_time_ids[1:])
        return unet_forward(sample, t, encoder_hidden_states, added_time_ids, **kw)

    pipe.unet.forward = record
    image = Image.fromarray(item["cond_pixels"].permute(1, 2, 0).numpy())
    strength = 0.1
    pipe(image, num_latent_frames=2, height=64, width=64, num_inference_steps=1, fps=24, noise_aug_strength=strength,
         generator=torch.Generator().manual_seed(5), output_type="latent")  # fmt: skip
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # the pipeline's first draw
    vae = as_video_vae(pipe.vae)
    with torch.no_grad():
        train_cond = conditioning_latent(vae, item["cond_pixels"][None], torch.tensor([strength]), noise)
    torch.testing.assert_close(train_cond, seen["cond"][:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(item["image_embeds"][None], seen["embeds"], atol=1e-5, rtol=1e-4)
    from cvvae.pipelines.conditioning import fps_id, time_ids

    torch.testing.assert_close(
        time_ids(fps_id(24.0, pipe.vae.config.time_n_compress), 127, torch.tensor([strength])), seen["ids"].float()
    )
    # latent noise of the old objective is not what inference does: pixel noise moves the latent differently
    assert (train_cond - conditioning_latent(vae, item["cond_pixels"][None], 0.0, noise)).abs().max() > 1e-3


def test_cache_tiling_flag_means_what_it_says(cache, tmp_path):
    from tqdm import tqdm

    from finetune import data
    from finetune.models import load_encoders

    root, _ = cache
    enc = load_encoders(_cfg(root).model)
    model = enc["vae"].module
    model.enable_tiling(frames_per_window=4, tile_size=32)  # a model whose own settings tile
    seen, encode = [], model.encode
    model.encode = lambda x, tiling=None: seen.append(tiling) or encode(x, tiling=tiling)
    for flag, expected in (("false", {"enabled": False}), ("true", {})):
        cfg = _cfg(root, f"data.videos={root / 'videos'}", f"data.tiling={flag}")
        clips, _ = data.plan_clips(data.list_sources(cfg.data.videos), cfg.data)
        data._write_shard(tmp_path / f"{flag}.safetensors", clips[:1], cfg.data, enc, tqdm(disable=True))
        assert seen[-1] == expected


def test_conv_out_mode_changes_only_conv_out(cache):
    from finetune.trainer import TrainState, _loop, build_training

    root, _ = cache
    cfg = _cfg(root, f"train.output_dir={root / 'iso'}", "train.max_steps=2", "train.checkpoint_every=100")
    accelerator, unet, vae, opt, sched, loader, _, peft = build_training(cfg)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    loss = _loop(cfg, accelerator, unet, vae, opt, sched, loader, TrainState())
    assert math.isfinite(loss) and peft is None
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv_out.weight", "conv_out.bias"}


@pytest.mark.parametrize("mode", ["lora", "lora+conv_out"])
def test_lora_modes_train(cache, mode):
    from finetune.trainer import train

    root, _ = cache
    out = root / f"run-{mode}"
    result = train(_cfg(root, f"train.output_dir={out}", f"train.mode={mode}", "train.max_steps=2", "lora.rank=2"))
    assert result["step"] == 2 and math.isfinite(result["loss"])
    from safetensors.torch import load_file

    keys = set(load_file(out / "adapter" / "adapter.safetensors"))
    assert any("lora_" in k and "temporal_transformer_blocks" in k for k in keys)
    assert any("lora_" in k and ".transformer_blocks." in k for k in keys)
    assert ("conv_out.weight" in keys) == (mode == "lora+conv_out")


def test_kill_and_resume_matches_straight_run(cache):
    from safetensors.torch import load_file

    from finetune.trainer import list_checkpoints, train

    root, _ = cache
    steps = ["train.max_steps=3", "train.checkpoint_every=2", "train.keep_checkpoints=1"]
    straight = train(_cfg(root, f"train.output_dir={root / 'straight'}", *steps))
    killed = _cfg(root, f"train.output_dir={root / 'resumed'}", *steps, "train.stop_after=2")
    assert train(killed)["adapter"] is None  # stopped at step 2: checkpoint only
    assert [p.name for p in list_checkpoints(root / "resumed")] == ["checkpoint-2"]
    resumed = train(_cfg(root, f"train.output_dir={root / 'resumed'}", *steps), resume="latest")
    assert resumed["step"] == straight["step"] == 3
    a = load_file(root / "straight" / "adapter" / "adapter.safetensors")
    b = load_file(root / "resumed" / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["loss"] == straight["loss"]
    assert [p.name for p in list_checkpoints(root / "straight")] == ["checkpoint-3"]  # last K=1 kept
    assert not list((root / "straight").glob(".checkpoint-*"))  # temporary folders renamed away

    # the adapter reloads into a fresh tiny UNet and changes its output, deterministically
    from cvvae.pipelines.adapters import apply_adapter, load_adapter_info
    from cvvae.pipelines.tiny import build_tiny_svd

    info = load_adapter_info(root / "straight" / "adapter")
    assert info.mode == "conv_out" and info.step == 3 and info.base_unet == "tiny" and info.data["num_clips"] == 2
    outs = []
    for adapter in (None, root / "straight" / "adapter", root / "resumed" / "adapter"):
        unet = build_tiny_svd()["unet"]
        if adapter:
            apply_adapter(unet, adapter)
        g = torch.Generator().manual_seed(0)
        x, emb = torch.randn(1, 2, 8, 8, 8, generator=g), torch.randn(1, 1, 32, generator=g)
        with torch.no_grad():
            outs.append(
                unet(x, 1.0, encoder_hidden_states=emb, added_time_ids=torch.tensor([[5.0, 127, 0.02]])).sample
            )
    assert not torch.allclose(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.mode=half", "train.mode must be one of"),
        ("data.height=100", "multiples of 64"),
        ("train.learning_rate=fast", "must be a number"),
        ("train.lr=1", "unknown config key"),
        ("lora.rank=0", "lora.rank must be >= 1"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_config_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_cli_bad_config_exit_code(tmp_path, capsys):
    from finetune.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  mode: everything\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.mode must be one of") and "Traceback" not in err


@pytest.mark.slow
def test_evaluate_and_training_samples(cache):
    from finetune.evaluate import EvalSettings, evaluate
    from finetune.trainer import train

    root, _ = cache
    out = root / "sampled"
    cfg = _cfg(root, f"train.output_dir={out}", "train.max_steps=1", "train.sample_every=1", "train.sample_steps=2")
    adapter = train(cfg)["adapter"]
    assert (out / "samples" / "sample-000001.mp4").is_file()
    s = EvalSettings(
        adapter=adapter,
        inputs=[str(root / "videos" / "clip0.mp4")],
        out_dir=str(root / "eval"),
        preset="tiny",
        seeds=[0],
        steps=2,
        num_latent_frames=3,
        height=64,
        width=64,
    )
    report = evaluate(s)
    row = report["clips"][0]
    assert set(row["base"]) >= {"frame_difference", "warping_error", "motion", "group_seam", "group_pulse"}
    assert "motion (px/frame)" in report["markdown"]  # flicker is never shown without the motion beside it
    assert (root / "eval" / "grids" / "clip0_seed0.mp4").is_file() and (root / "eval" / "report.md").is_file()
    assert "| **mean** |" in report["markdown"] and "warning" not in report  # trained on these very models
    # an adapter whose recorded base is another UNet: refused, or evaluated with a warning when asked
    from cvvae.pipelines.adapters import ADAPTER_CONFIG

    other = root / "other-adapter"
    shutil.copytree(adapter, other)
    info = json.loads((other / ADAPTER_CONFIG).read_text())
    info["base_signature"]["unet"] = [v + 1.0 for v in info["base_signature"]["unet"]]
    (other / ADAPTER_CONFIG).write_text(json.dumps(info))
    s.adapter, s.out_dir = str(other), str(root / "eval-other")
    with pytest.raises(InputError, match="trained for other models: its base UNet"):
        evaluate(s)
    assert not (root / "eval-other").exists()  # refused before any generation
    s.allow_other_base = True
    assert "base UNet" in evaluate(s)["warning"]


class Payload:
    """Unpickling this runs code: it writes a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_resume_runs_no_code_from_a_checkpoint_and_survives_damage(cache, tmp_path, capsys):
    import pickle
    import shutil

    from finetune.__main__ import main
    from finetune.trainer import list_checkpoints, train

    root, _ = cache
    out = root / "hardened"
    steps = ["train.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3", "train.stop_after=3"]
    train(_cfg(root, f"train.output_dir={out}", *steps))
    newest = list_checkpoints(out)[-1]
    marker = tmp_path / "pwned.txt"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "training_state.pt"):
        (newest / name).write_bytes(pickle.dumps(Payload(marker)))  # what accelerate's load_state would unpickle
    data = (newest / "trainable.safetensors").read_bytes()
    (newest / "trainable.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    result = train(_cfg(root, f"train.output_dir={out}", "train.max_steps=4", "train.checkpoint_every=1"), "latest")
    assert not marker.exists()  # no pickle was loaded
    assert result["step"] == 4 and "checkpoint-3 cannot be loaded" in capsys.readouterr().out  # fell back to 2
    damaged = tmp_path / "checkpoint-9"
    shutil.copytree(list_checkpoints(out)[-1], damaged)
    (damaged / "optimizer.safetensors").write_bytes(b"")
    for bad in (damaged, root / "nowhere"):
        rc = main(
            ["train", "--resume", str(bad), *BASE, f"data.cache_dir={root / 'cache'}", f"train.output_dir={out}"]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["cache.json", "manifest.json"])
def test_damaged_cache_files_are_named(cache, tmp_path, name):
    from finetune.data import build_cache, load_manifest

    root, _ = cache
    broken = tmp_path / "cache"
    shutil.copytree(root / "cache", broken)
    (broken / name).write_text("{not json")
    cfg = _cfg(root, f"data.videos={root / 'videos'}", f"data.cache_dir={broken}")
    with pytest.raises(InputError, match=f"{name} is damaged"):
        build_cache(cfg.data, {}, {}) if name == "cache.json" else load_manifest(broken)


def test_failed_runs_leave_nothing_that_binds_the_next(cache, tmp_path):
    from finetune.data import build_cache
    from finetune.models import load_encoders, model_ids
    from finetune.trainer import train

    root, _ = cache
    cfg = _cfg(root, f"data.videos={root / 'videos'}", f"data.cache_dir={tmp_path / 'c'}", "data.num_latent_frames=60")
    with pytest.raises(InputError, match="no usable clips"):
        build_cache(cfg.data, load_encoders(cfg.model), model_ids(cfg.model))  # every clip is too short
    assert not (tmp_path / "c" / "cache.json").exists()  # so other settings are not refused next time
    run = tmp_path / "run"
    cfg = _cfg(root, f"train.output_dir={run}", "train.batch_size=50")
    with pytest.raises(InputError, match="fewer than train.batch_size"):
        train(cfg)
    assert not run.exists()  # no config.json or empty folder left behind
