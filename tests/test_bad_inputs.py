"""Bad inputs, one table: every one gets exit code 2, one ``error:`` line, no traceback, nothing left behind.

Each case builds what it needs in a fresh folder, runs one command line (in-process), and the common
checks follow. A few cases that are not command lines (the web demo's handlers) come after the table.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import gradio as gr
import pytest
import torch
from conftest import CLIP, IMAGE, ts_clip, wide_png
from safetensors.torch import save_file

from app.__main__ import main as app_main
from app.batch import main as batch_main
from app.handlers import ADAPTER_NONE
from benchmarks.host_memory import main as host_memory_main
from cvvae.cli import main as cvvae_main
from cvvae.training.__main__ import main as training_main
from finetune.__main__ import main as finetune_main

TINY = ["--model", "tiny", "--device", "cpu"]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (a decompression bomb is refused before it is read)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 64)), (b"IEND", b"")]
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def url_name(d: Path, name: str) -> Path:
    ts_clip(d / "one.ts", (32, 64))
    return Path(name.replace("ONE", str(d / "one.ts")))


def copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def linked(d: Path, name: str) -> Path:
    """A link in another folder to ``d/name``, a copy of the clip: the output resolves to the input."""
    copy(CLIP, d / name)
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "in.mp4").symlink_to(d / name)
    return d / "elsewhere" / "in.mp4"


def sidecar_is_input(d: Path) -> list[str]:
    clip = d / "o.json"  # a video whose name is the output's sidecar
    clip.write_bytes(CLIP.read_bytes())
    return ["reconstruct", str(clip), str(d / "o.mp4"), *TINY, "--frames", "1", "--overwrite"]


def sidecar_is_a_folder(d: Path) -> list[str]:
    (d / "o.mp4").write_bytes(b"an earlier result")
    (d / "o.json").mkdir()
    return rec(d, "--frames", "1", "--overwrite")


def adapter(d: Path, **peft) -> list[str]:
    """``generate`` with a LoRA adapter folder whose config holds ``peft``."""
    folder = d / "ad"
    folder.mkdir()
    lora = {"r": 4, "lora_alpha": 4, "target_modules": "to_q", **peft}
    info = {"format": "cvvae-unet-adapter", "format_version": 1, "mode": "lora", "peft_config": lora}
    (folder / "adapter.json").write_text(json.dumps(info))
    save_file({"base_model.model.conv_in.lora_A.weight": torch.zeros(4, 4)}, str(folder / "adapter.safetensors"))
    return gen(d, "--adapter", str(folder))


def yaml_file(d: Path, text: str) -> list[str]:
    (d / "c.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcff is the byte 0xff
    return ["train", "--config", str(d / "c.yaml")]


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def latents(path: Path, **meta) -> Path:
    base = {"fps": "12.0", "frames": "5", "height": "16", "width": "16", "model": "tiny"}
    save_file({"latents": torch.zeros(1, 4, 2, 2, 2)}, str(path), metadata={**base, **meta})
    return path


def wrong_shape_weights(folder: Path) -> Path:
    from cvvae.loading import build_tiny_vae

    build_tiny_vae().save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    tensors["encoder.conv_in.weight"] = tensors["encoder.conv_in.weight"][:, :, :1].contiguous()
    save_file(tensors, str(weights))
    return folder


def corrupt_weights(folder: Path) -> Path:
    from cvvae.loading import build_tiny_vae

    build_tiny_vae().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    return folder


def jobs(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def existing_output(d: Path) -> list[str]:
    (d / "out.json").write_text("{}")  # a sidecar from an earlier run, without its mp4
    return ["reconstruct", str(CLIP), str(d / "out.mp4"), *TINY, "--frames", "1"]


def readonly_folder(d: Path) -> list[str]:
    folder = d / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return gen(folder)


def under_file(d: Path) -> Path:
    (d / "file").write_text("x")
    return d / "file"


def under_a_file(d: Path) -> list[str]:
    (d / "file").write_text("x")
    return gen(d / "file")


def video_list(d: Path, line: str) -> list[str]:
    (d / "list.jsonl").write_text(line + "\n")
    return [
        "cache",
        "model.base=tiny",
        "model.cvvae=tiny",
        f"data.videos={d / 'list.jsonl'}",
        f"data.cache_dir={d / 'c'}",
    ]


def rec(d: Path, *extra, source=CLIP) -> list[str]:
    """``reconstruct SOURCE d/o.mp4 EXTRA`` (the tiny model unless EXTRA names one)."""
    model = [] if "--model" in extra else TINY
    return ["reconstruct", str(source), str(d / "o.mp4"), *model, *extra]


def gen(d: Path, *extra, image=IMAGE) -> list[str]:
    return ["generate", "i2v", "--preset", "tiny", "--image", str(image), "--out", str(d / "o.mp4"), *extra]


def dec_tensor(d: Path, z: torch.Tensor) -> list[str]:
    save_file({"latents": z}, str(d / "z.safetensors"), metadata={"fps": "12.0", "model": "tiny"})
    return ["decode", str(d / "z.safetensors"), str(d / "o.mp4"), *TINY]


def dec(d: Path, **meta) -> list[str]:
    return ["decode", str(latents(d / "z.safetensors", **meta)), str(d / "o.mp4"), *TINY]


def job(**settings) -> str:
    """One batch job line: a valid t2v job with ``settings`` changed (None drops a key)."""
    base = {"id": "a", "mode": "t2v", "prompt": "a cat", "seed": 1, "num_latent_frames": 2, "steps": 1}
    return json.dumps({k: v for k, v in {**base, **settings}.items() if v is not None})


def i2v_job(**settings) -> str:
    """A second batch job, image -> video, with ``settings``."""
    return job(id="b", mode="i2v", prompt=None, **settings)


def batch_bytes(d: Path, data: bytes) -> list[str]:
    argv = batch(d, "")
    (d / "j.jsonl").write_bytes(data)
    return argv


def batch(d: Path, line: str) -> list[str]:
    return [str(jobs(d / "j.jsonl", line)), "--out-dir", str(d / "out"), "--preset", "tiny"]


NANO_VAE2D = Path(__file__).resolve().parents[1] / "cvvae" / "weights" / "nano" / "vae2d"


def pickled_vae2d(folder: Path) -> Path:
    """The nano 2-D VAE saved the old way: config.json and diffusion_pytorch_model.bin only."""
    from diffusers import AutoencoderKL

    AutoencoderKL.from_pretrained(NANO_VAE2D).save_pretrained(folder, safe_serialization=False)
    return folder


def vae_training(d: Path, *extra: str, vae2d: Path = NANO_VAE2D) -> list[str]:
    """``python -m cvvae.training`` for one step into ``d/run``, against a 2-D VAE, then ``extra`` overrides."""
    base = [f"output_dir={d / 'run'}", f"vae2d={vae2d}", "steps=1", "warmup=0", "data.size=16", "data.short_side=32"]
    return [*base, f"data.videos={CLIP.parent}", f"data.cache_dir={d / 'cache'}", *extra]


ROOT = os.geteuid() == 0
T2V = job()
# (name, program, arguments built in folder d, words the error line must contain)
CASES = [
    # files: only regular local files, opened by path; sizes capped from the header, before decoding
    ("concat: URL", cvvae_main, lambda d: rec(d, source=url_name(d, "concat:ONE|ONE")), "no URLs"),
    ("file: URL", cvvae_main, lambda d: rec(d, source=url_name(d, "file:ONE")), "no URLs"),
    ("http URL", cvvae_main, lambda d: rec(d, source="http://127.0.0.1:9/a.mp4"), "no URLs"),
    ("URL as image", cvvae_main, lambda d: gen(d, image=url_name(d, "subfile:,,start,0,end,0,,:ONE")), "no URLs"),
    ("device file", cvvae_main, lambda d: rec(d, source="/dev/zero"), "not a file"),
    ("1000000x1 png", cvvae_main, lambda d: rec(d, "--height", "64", "--width", "64",
                                                source=wide_png(d / "w.png", 1000000, 1)), "scale it down"),
    ("1000000x1 png as image", cvvae_main, lambda d: gen(d, image=wide_png(d / "w.png", 1000000, 1)), "scale it"),
    ("20000x2 png", cvvae_main, lambda d: rec(d, source=wide_png(d / "w.png", 20000, 2)), "scale it down"),
    ("8000x1 png cropped", cvvae_main, lambda d: rec(d, "--height", "2048", "--width", "2048",
                                                     source=wide_png(d / "w.png", 8000, 1)), "aspect ratio"),
    ("8192x8192 video", cvvae_main, lambda d: rec(d, "--height", "64", "--width", "64",
                                                  source=ts_clip(d / "big.ts", (8192, 8192))), "scale it down"),
    ("rotated 45 degrees", cvvae_main, lambda d: rec(d, source=ts_clip(d / "r.mp4", (32, 64), rotation=45)),
     "quarter turns"),
    ("size changes mid-stream", cvvae_main, lambda d: rec(d, source=ts_clip(d / "c.ts", (32, 64), (64, 64))),
     "changes frame size"),
    # outputs: never an input, video and sidecar together
    ("input is the output's sidecar", cvvae_main, sidecar_is_input, "is the input file"),
    ("image is the output's sidecar", cvvae_main, lambda d: gen(d, "--overwrite", image=copy(IMAGE, d / "o.json")),
     "is the input file"),
    ("output is the input", cvvae_main, lambda d: rec(d, "--overwrite", source=copy(CLIP, d / "o.mp4")),
     "is the input file"),
    ("output is a link to the input", cvvae_main, lambda d: rec(d, "--overwrite", source=linked(d, "o.mp4")),
     "is the input file"),
    ("sidecar is a folder", cvvae_main, sidecar_is_a_folder, "is a folder"),
    ("output name too long", cvvae_main, lambda d: ["reconstruct", str(CLIP), str(d / ("x" * 250 + ".mp4")), *TINY],
     "too long"),
    # adapters: our LoRA fields only, as plain values; target patterns bounded
    ("adapter pattern backtracks", cvvae_main, lambda d: adapter(d, target_modules="(.*){1,32000}[bc]"), "too long"),
    ("adapter pattern invalid", cvvae_main, lambda d: adapter(d, target_modules="(to_q"), "regular expression"),
    ("adapter pattern 10000 chars", cvvae_main, lambda d: adapter(d, target_modules="a" * 10000), "at most"),
    ("adapter names not names", cvvae_main, lambda d: adapter(d, target_modules=["to_q", "a b"]), "module names"),
    ("adapter rank as text", cvvae_main, lambda d: adapter(d, r="16"), "wrong type"),
    ("adapter bias all", cvvae_main, lambda d: adapter(d, bias="all"), "bias"),
    ("adapter matches nothing", cvvae_main, lambda d: adapter(d, target_modules="nothing_here"), "matches no layer"),
    # latents and devices
    ("latents NaN", cvvae_main, lambda d: dec_tensor(d, torch.full((1, 4, 2, 2, 2), float("nan"))), "NaN"),
    ("latents Inf", cvvae_main, lambda d: dec_tensor(d, torch.full((1, 4, 2, 2, 2), float("inf"))), "NaN"),
    ("latents zero frames", cvvae_main, lambda d: dec_tensor(d, torch.zeros(1, 4, 0, 2, 2)), "none empty"),
    ("latents 0x0 grid", cvvae_main, lambda d: dec_tensor(d, torch.zeros(1, 4, 2, 0, 0)), "none empty"),
    ("device meta", cvvae_main, lambda d: rec(d, "--device", "meta", "--model", "tiny"), "cannot run"),
    ("device mps", cvvae_main, lambda d: rec(d, "--device", "mps", "--model", "tiny"), "MPS"),
    ("device cuda", cvvae_main, lambda d: rec(d, "--device", "cuda:7", "--model", "tiny"), "cuda"),
    ("generate device meta", cvvae_main, lambda d: gen(d, "--device", "meta"), "cannot run"),
    ("batch device meta", batch_main, lambda d: [*batch(d, T2V), "--device", "meta"], "cannot run"),
    # the app: serves only a folder of its own results, on a real port
    ("app port 99999", app_main, lambda d: ["--port", "99999", "--outputs", str(d / "out")], "65535"),
    ("app outputs under a file", app_main, lambda d: ["--outputs", str(under_file(d) / "out")], "is a file"),
    ("app outputs a folder of other files", app_main, lambda d: ["--outputs", str(copy(IMAGE, d / "mine.jpg").parent)],
     "did not write"),
    ("app --cvvae folder missing", app_main, lambda d: ["--cvvae", "runs/x/final", "--outputs", str(d / "out")],
     "--cvvae folder runs/x/final does not exist"),
    ("app --component folder missing", app_main,
     lambda d: ["--component", "svd=./none", "--outputs", str(d / "out")], "--component svd folder ./none"),
    ("app device meta", app_main, lambda d: ["--device", "meta", "--outputs", str(d / "out")], "cannot run"),
    ("huge size", cvvae_main, lambda d: rec(d, "--height", "100000", "--width", "96"), "at most 8192"),
    ("decompression bomb", cvvae_main, lambda d: rec(d, source=png_header(d / "b.png", 20000, 20000)), "scale it"),
    ("bomb as image", cvvae_main, lambda d: gen(d, image=png_header(d / "b.png", 20000, 20000)), "scale it"),
    ("seed beyond 64 bits", cvvae_main, lambda d: rec(d, "--sample", "--seed", str(2**64)), "seed"),
    ("negative generation seed", cvvae_main, lambda d: gen(d, "--seed", "-1"), "seed"),
    ("latents fps 1e12", cvvae_main, lambda d: dec(d, fps="1e12"), "frame rate"),
    ("latents fps 1e-9", cvvae_main, lambda d: dec(d, fps="1e-9"), "frame rate"),
    ("latents frames -3", cvvae_main, lambda d: dec(d, frames="-3"), "frames"),
    ("wrong-shape weights", cvvae_main, lambda d: rec(d, "--model", str(wrong_shape_weights(d / "m"))), "conv_in"),
    ("corrupt weights", cvvae_main, lambda d: rec(d, "--model", str(corrupt_weights(d / "m"))), "does not hold"),
    ("missing local model", cvvae_main, lambda d: rec(d, "--model", str(d / "none")), "does not exist"),
    ("not cached, offline", cvvae_main, lambda d: rec(d, "--model", "AILab-CVC/CV-VAE"), "hf download AILab-CVC"),
    # a path that looks local is a folder that does not exist, never a hub id to download
    ("missing ./ model folder", cvvae_main, lambda d: rec(d, "--model", "./no_such_vae"),
     "model folder ./no_such_vae does not exist"),
    ("missing runs/x/final model", cvvae_main, lambda d: rec(d, "--model", "runs/x/final"),
     "model folder runs/x/final does not exist"),
    ("missing component folder", cvvae_main, lambda d: gen(d, "--component", "svd=runs/x/final"),
     "folder runs/x/final does not exist"),
    ("missing adapter folder", cvvae_main, lambda d: gen(d, "--adapter", "runs/x/final"),
     "adapter folder runs/x/final does not exist"),
    ("SVD not cached, offline", cvvae_main, lambda d: ["generate", "i2v", "--preset", "svd-xt", "--image",
                                                       str(IMAGE), "--out", str(d / "o.mp4")],
     '--include "*.fp16.safetensors"'),
    ("CV-VAE and SVD not cached: both named", cvvae_main, lambda d: ["generate", "i2v", "--preset", "svd-xt",
                                                                     "--image", str(IMAGE), "--out", str(d / "o.mp4")],
     "2 model(s) cannot be loaded"),
    ("existing sidecar", cvvae_main, existing_output, "--overwrite"),
    pytest.param("read-only folder", cvvae_main, readonly_folder, "writable",
                 marks=pytest.mark.skipif(ROOT, reason="root writes into read-only folders")),
    ("output under a file", cvvae_main, under_a_file, "writable"),
    ("unknown option", cvvae_main, lambda d: rec(d, "--bogus"), "--bogus"),
    ("host_memory missing clip", host_memory_main, lambda d: ["--video", str(d / "none.mp4")], "does not exist"),
    ("host_memory 0 frames", host_memory_main, lambda d: ["--video", str(CLIP), "--frames", "0"], "--frames"),
    ("batch id with a newline", batch_main, lambda d: batch(d, json.dumps({"id": "a\n", "mode": "t2v"})), "id"),
    ("batch 2nd job steps 0", batch_main, lambda d: batch(d, T2V + "\n" + job(id="b", steps=0)), "steps"),
    ("batch 2nd job image missing", batch_main,
     lambda d: batch(d, T2V + "\n" + job(id="b", mode="i2v", image="none.png", prompt=None)), "not a file"),
    ("batch not UTF-8", batch_main, lambda d: batch_bytes(d, b'{"id": "\xff"}\n'), "UTF-8"),
    ("batch 2nd job image 1000000x1", batch_main,
     lambda d: batch(d, T2V + "\n" + i2v_job(image=str(wide_png(d / "w.png", 1000000, 1)))), "scale it down"),
    ("batch 2nd job image URL", batch_main,
     lambda d: batch(d, T2V + "\n" + i2v_job(image="http://127.0.0.1:9/a.png")), "not a file"),
    ("batch 2nd job image not an image", batch_main,
     lambda d: batch(d, T2V + "\n" + i2v_job(image=str(copy(CLIP, d / "n.png")))), "not a readable image"),
    ("batch 2nd job adapter missing", batch_main,
     lambda d: batch(d, T2V + "\n" + i2v_job(image=str(IMAGE), adapter="runs/x/final")),
     "adapter folder runs/x/final does not exist"),
    ("batch out-dir under a file", batch_main, lambda d: [str(jobs(d / "j.jsonl", T2V)), "--out-dir",
                                                          str(under_file(d) / "out")], "--out-dir"),
    ("batch 10 MB prompt", batch_main, lambda d: batch(d, job(prompt="x" * 10**7)), "at most"),
    ("batch 33 AnimateDiff latents", batch_main,
     lambda d: batch(d, json.dumps({"id": "a", "mode": "t2v", "prompt": "x", "num_latent_frames": 33})), "32"),
    ("t2v 33 latents", cvvae_main, lambda d: ["generate", "t2v", "--preset", "tiny", "--prompt", "a cat",
                                              "--num-latent-frames", "33", "--out", str(d / "o.mp4")], "32"),
    ("batch line is an array", batch_main, lambda d: batch(d, "[1, 2]"), "JSON object"),
    ("video list line is an array", finetune_main, lambda d: video_list(d, "[1, 2]"), "object with a 'path'"),
    ("video list fps nan", finetune_main, lambda d: video_list(d, json.dumps({"path": str(CLIP), "fps": "nan"})),
     "fps"),
    # configs: bounded YAML, finite numbers, counts in range
    ("yaml billion laughs", finetune_main, lambda d: yaml_file(d, BILLION_LAUGHS), "aliases"),
    ("yaml nested 10000 deep", finetune_main, lambda d: yaml_file(d, "a: " + "[" * 10000 + "]" * 10000), "nested"),
    ("yaml 2 MB", finetune_main, lambda d: yaml_file(d, "# " + "x" * 2_000_000), "larger than"),
    ("config not UTF-8", finetune_main, lambda d: yaml_file(d, "train:\n  seed: \udcff"), "YAML"),
    ("lora target not a module name", finetune_main, lambda d: ["train", 'lora.target_modules=["(to_q"]'],
     "lora.target_modules"),
    ("learning rate inf", finetune_main, lambda d: ["train", "train.learning_rate=.inf"], "finite"),
    ("max steps inf", finetune_main, lambda d: ["train", "train.max_steps=.inf"], "integer"),
    ("vae training steps nan", training_main, lambda d: ["steps=.nan"], "integer"),
    ("vae training lr inf", training_main, lambda d: ["lr=.inf"], "finite"),
    ("threads -1", finetune_main, lambda d: ["train", "--threads", "-1"], "threads"),
    ("stop after -5", training_main, lambda d: ["--stop-after", "-5"], "step"),
    ("vae training steps inf", training_main, lambda d: vae_training(d, "steps=.inf"), "integer"),
    ("vae training threads -1", training_main, lambda d: vae_training(d, "num_threads=-1"), "num_threads"),
    ("vae training log_every 0", training_main, lambda d: vae_training(d, "log_every=0"), "log_every"),
    ("vae training keep 0 checkpoints", training_main, lambda d: vae_training(d, "keep_checkpoints=0"),
     "keep_checkpoints"),
    ("vae training lr_floor -1", training_main, lambda d: vae_training(d, "lr_floor=-1"), "lr_floor"),
    ("vae training output under a file", training_main,
     lambda d: vae_training(d, f"output_dir={under_file(d) / 'run'}"), "under a file"),
    ("vae training clips missing", training_main, lambda d: vae_training(d, f"data.videos={d / 'none'}"),
     "does not exist"),
    ("vae training pickled 2-D VAE", training_main, lambda d: vae_training(d, vae2d=pickled_vae2d(d / "v")),
     "pickle"),
    ("vae evaluation pickled 2-D VAE", training_main,
     lambda d: ["evaluate", "--vae2d", str(pickled_vae2d(d / "v")), "--model", f"nano={NANO_VAE2D.parent / 'cvvae'}",
                "--videos", str(CLIP.parent), "--frames", "5", "--short-side", "32", "--out", str(d / "e")], "pickle"),
    ("vae2d_model unknown key", training_main, lambda d: vae_training(d, "kind=vae2d", "vae2d_model={bogus: 1}"),
     "vae2d_model.bogus"),
    ("vae2d_model 2 blocks", training_main,
     lambda d: vae_training(d, "kind=vae2d", "vae2d_model={block_out_channels: [16, 16], norm_num_groups: 8}"),
     "block_out_channels"),
    ("vae2d_model 7 groups", training_main,
     lambda d: vae_training(d, "kind=vae2d", "vae2d_model={block_out_channels: [16, 16, 32, 32], norm_num_groups: 7}"),
     "norm_num_groups"),
    ("override alias", finetune_main, lambda d: ["train", "train.seed=*a"], "aliases"),
    ("config value of the wrong type", finetune_main, lambda d: ["train", "train.max_steps=many"], "integer"),
]  # fmt: skip
IDS = [case.values[0] if hasattr(case, "values") else case[0] for case in CASES]


@pytest.mark.parametrize("name, program, build, words", CASES, ids=IDS)
def test_bad_input_gets_a_clean_error(name, program, build, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work)
    before = set(work.rglob("*"))
    try:
        code = program(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        (work / "ro").exists() and (work / "ro").chmod(0o700)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0], lines[0]
    new = [
        p for p in set(work.rglob("*")) - before if p.suffix in (".mp4", ".json", ".safetensors") or ".tmp" in p.name
    ]
    assert not new, new  # no output, whole or partial


def test_tiny_frames_reconstruct(tmp_path, capsys):
    """Frames under 12 pixels used to crash the flow measure after all the work; they now just work."""
    code = cvvae_main(["reconstruct", str(CLIP), str(tmp_path / "o.mp4"), *TINY, "--frames", "5", "--height", "8",
                       "--width", "10"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out)["height"] == 8


def test_single_video_as_the_finetune_data(tmp_path):
    from finetune.data import list_sources

    assert [s.path for s in list_sources(CLIP)] == [str(CLIP)]


def test_overwrite_and_stale_temporaries(tmp_path, capsys):
    out = tmp_path / "o.mp4"
    stale = tmp_path / ".o.1a2b3c4d.tmp.mp4"  # what a killed run leaves
    stale.write_bytes(b"half a video")
    argv = ["reconstruct", str(CLIP), str(out), *TINY, "--frames", "1"]
    assert cvvae_main(argv) == 0 and not stale.exists()
    assert cvvae_main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert cvvae_main([*argv, "--overwrite"]) == 0


def test_app_refuses_non_numbers_with_its_own_message(tmp_path):
    from app.handlers import AppConfig, Handlers

    handlers = Handlers(AppConfig(preset="tiny", outputs=tmp_path / "out"))
    with pytest.raises(gr.Error, match="seed must be a whole number, got 'abc'"):
        handlers.image_to_video(str(IMAGE), "abc", 2, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", ADAPTER_NONE)
    with pytest.raises(gr.Error, match="fps must be a number"):
        handlers.text_to_video("a cat", "", "animatediff", 0, 2, 7.5, "fast", 2, "64x64", "off")
    assert not list((tmp_path / "out").glob("*"))


def test_rotated_video_is_read_upright_and_recorded(tmp_path, capsys):
    """A phone video stored 64x32 with a quarter-turn display matrix reads as 32x64 frames, turned as shown."""
    from cvvae.video import read_video

    clip = ts_clip(tmp_path / "r.mp4", (32, 64), rotation=90)
    frames, _ = read_video(clip)
    assert frames.shape[1:3] == (64, 32)
    assert frames[0, -8:, :4].min() > 200 and frames[0, :8, :4].max() < 50  # the white corner went down-left
    assert cvvae_main(["reconstruct", str(clip), str(tmp_path / "o.mp4"), *TINY]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["rotation"] == 90


def test_video_and_sidecar_commit_together(tmp_path, monkeypatch):
    """When the sidecar's rename fails, the earlier video and sidecar are back as they were, with no leftovers."""
    import numpy as np

    from cvvae import outputs
    from cvvae.video import write_video_and_sidecar

    (tmp_path / "o.mp4").write_bytes(b"old video")
    (tmp_path / "o.json").write_text("{}")
    replace = os.replace

    def failing(src, dst):
        if Path(dst).name == "o.json" and ".tmp" in Path(src).name:
            raise OSError("disk full")
        replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        write_video_and_sidecar(tmp_path / "o.mp4", np.zeros((1, 16, 16, 3), np.uint8), 12.0, {"task": "test"})
    assert (tmp_path / "o.mp4").read_bytes() == b"old video" and (tmp_path / "o.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.mp4"]


def test_adapter_fields_beyond_ours_are_dropped():
    from cvvae.pipelines.adapters import lora_settings

    hostile = {"r": 4, "lora_alpha": 8, "megatron_core": "os", "megatron_config": {"a": 1}, "layers_pattern": "(a+)+"}
    assert lora_settings(hostile) == {"r": 4, "lora_alpha": 8}


I2V = (0, 3, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", ADAPTER_NONE)
# (name, what the page runs, when the event is cancelled: at a denoising step (0 = the first), None = once saved)
APP_CANCELS = [
    ("image to video at step 1", lambda h: h.image_to_video(str(IMAGE), *I2V), 0),
    ("text to video at step 2", lambda h: h.text_to_video("a cat", "", "animatediff", 0, 3, 7.5, 8, 2, "64x64", "off"),
     1),
    ("compare in its second run", lambda h: h.compare(str(IMAGE), 0, 2, 2, "64x64", ADAPTER_NONE), 2),
    ("image to video once saved", lambda h: h.image_to_video(str(IMAGE), *I2V), None),
    ("reconstruct once saved", lambda h: h.reconstruct(str(CLIP), 1, "128", "off"), None),
]  # fmt: skip


@pytest.mark.parametrize("name, call, at", APP_CANCELS, ids=[case[0] for case in APP_CANCELS])
def test_cancelled_app_job_stops_and_leaves_nothing(name, call, at, tmp_path, monkeypatch):
    """Gradio cancels an event by cancelling its task (Cancel button or client): the denoising stops at the
    next step and the job's results, if any, are removed."""
    import asyncio

    import app.handlers as module

    handlers = module.Handlers(module.AppConfig(preset="tiny", outputs=tmp_path / "out"))
    steps, plain_callback, plain_wrote = [], module.step_callback, module.job_wrote

    async def run():
        loop = asyncio.get_running_loop()

        def cancel():  # from the worker thread, as Gradio's /cancel does from the server's
            job = module._JOB.get()
            loop.call_soon_threadsafe(task.cancel)
            assert job.cancelled.wait(60)

        def callback():
            inner = plain_callback()

            def step(pipe, i, t, kwargs):
                steps.append(i)
                len(steps) - 1 == at and cancel()
                return inner(pipe, i, t, kwargs)

            return step

        def wrote(*paths):
            plain_wrote(*paths)
            at is None and cancel()

        monkeypatch.setattr(module, "step_callback", callback)
        monkeypatch.setattr(module, "job_wrote", wrote)
        task = asyncio.ensure_future(module.cancellable(call)(handlers))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert not list((tmp_path / "out").iterdir())
    assert at is None or len(steps) == at + 1  # not one step more
