"""The web demo: handler functions with the tiny preset, the HTTP API through gradio_client, bad uploads."""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request

import gradio as gr
import numpy as np
import pytest
from conftest import ts_clip, wide_png

from app.__main__ import REAL_WEIGHTS_HINT, choose_preset, main, parse_args, weights_reachable
from app.handlers import (
    ADAPTER_NONE,
    NANO_NOTICE,
    NANO_PRESET_NOTICE,
    AppConfig,
    Handlers,
    flicker_table,
    frames_label,
    parse_resolution,
    scaled_size,
)
from app.ui import EXAMPLES, GPU_QUEUE, QUEUE_SIZE, UPLOAD_CLEANUP, build_demo, launch
from cvvae.errors import InputError
from cvvae.loading import RANDOM_WEIGHTS_NOTICE
from cvvae.pipelines.presets import parse_components
from cvvae.video import probe, read_video

CLIP = EXAMPLES / "coffee_pan.mp4"
IMAGE = EXAMPLES / "cat.jpg"


@pytest.fixture
def handlers(tmp_path):
    return Handlers(AppConfig(preset="tiny", outputs=tmp_path / "out", adapters=tmp_path / "adapters"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- pure helpers ---------------------------------------------------------------------------------
def test_frames_label_counts_four_frames_per_latent():
    assert "**97 video frames**" in frames_label(25, 24) and "4.0 s" in frames_label(25, 24)
    assert "**1 video frames**" in frames_label(1, 8)
    assert "**25 video frames**" in frames_label(25, 25, vae="native") and "1.0 s" in frames_label(25, 25, "native")


def test_parse_resolution_and_scaled_size():
    assert parse_resolution("1024x576") == (576, 1024)
    assert parse_resolution("preset default") == (None, None)
    for bad in ("big", "1000x5x3", "100x60", "0x64"):
        with pytest.raises(gr.Error):
            parse_resolution(bad)
    assert scaled_size(720, 1280, "256") == (256, 456)
    assert scaled_size(144, 256, "original") is None and scaled_size(144, 256, "256") is None


def test_flicker_table_lists_each_variant_with_motion_beside_flicker():
    rows = [("backbone VAE", {"frames": 25, "fps": 8.0}, {"frame_difference": 0.1, "warping_error": 0.05})]
    rows[0][2].update(motion=1.5, group_seam=None, group_pulse=None)
    flicker = {"frame_difference": 0.02, "warping_error": 0.01, "motion": 0.5, "group_seam": 1.8, "group_pulse": 1.1}
    rows.append(("CV-VAE", {"frames": 97, "fps": 24.0}, flicker))
    table = flicker_table(rows, random_weights=True)
    assert "| backbone VAE | 25 | 8.0 | 1.5 | 0.05 | 0.1 | – | – |" in table
    assert "| CV-VAE | 97 | 24.0 | 0.5 | 0.01 | 0.02 | 1.8 | 1.1 |" in table and RANDOM_WEIGHTS_NOTICE in table
    assert "| motion (px/frame) | warping error | frame difference |" in table and "equal motion" in table


def test_adapters_are_listed_and_only_listed_names_resolve(handlers, tmp_path):
    root = tmp_path / "adapters"
    (root / "run1").mkdir(parents=True)
    (root / "run1" / "adapter.json").write_text("{}")
    (root / "not-an-adapter").mkdir()
    assert handlers.list_adapters() == [ADAPTER_NONE, "run1"]
    assert handlers.adapter_path("run1") == str(root / "run1")
    assert handlers.adapter_path(ADAPTER_NONE) is None
    for bad in ("../run1", "not-an-adapter", "/etc"):
        with pytest.raises(gr.Error, match="refresh"):
            handlers.adapter_path(bad)


def test_component_options_parse_and_reject_malformed():
    assert parse_components(["svd=/models/svd-xt", "cvvae = /m/cv"]) == {"svd": "/models/svd-xt", "cvvae": "/m/cv"}
    with pytest.raises(InputError, match="NAME=PATH"):
        parse_components(["svd"])
    with pytest.raises(InputError, match="unknown component 'unet'"):
        parse_components(["unet=/x"])


def test_cli_defaults_are_local_and_tiny_without_cuda_or_nano():
    args = parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    preset, notice = choose_preset(None, cuda=False, nano=False)
    assert preset == "tiny" and RANDOM_WEIGHTS_NOTICE in notice and "--preset svd-xt" in notice
    assert choose_preset("svd-xt", cuda=True) == ("svd-xt", "")
    preset, notice = choose_preset(None, cuda=True, weights=False, nano=False)  # offline, nothing cached
    assert preset == "tiny" and "HF_HUB_OFFLINE" in notice
    assert choose_preset("svd", cuda=False)[0] == "svd"  # an explicit preset is honoured


def test_fallback_is_nano_when_its_svd_is_installed(tmp_path, monkeypatch):
    import cvvae.weights

    for cuda, weights, why in ((False, True, "No CUDA GPU"), (True, False, "HF_HUB_OFFLINE")):
        preset, notice = choose_preset(None, cuda=cuda, weights=weights, nano=True)
        assert preset == "nano" and why in notice and REAL_WEIGHTS_HINT in notice
        assert "trained on a CPU" in notice and "64x64" in notice and "RANDOM" not in notice
    # an explicit preset is honoured, the nano SVD installed or not
    assert choose_preset("tiny", cuda=False, nano=True)[0] == "tiny"
    assert choose_preset("svd-xt", cuda=False, nano=True)[0] == "svd-xt"
    assert choose_preset("nano", cuda=True, nano=False)[0] == "nano"
    assert choose_preset(None, cuda=True, nano=True) == ("svd-xt", "")
    # "installed" means the shipped folder holds model_index.json
    monkeypatch.setattr(cvvae.weights, "NANO_SVD", tmp_path / "svd")
    assert choose_preset(None, cuda=False)[0] == "tiny"
    (tmp_path / "svd").mkdir()
    (tmp_path / "svd" / "model_index.json").write_text("{}")
    assert choose_preset(None, cuda=False)[0] == "nano"


def test_nano_preset_without_its_svd_stops_with_a_hint(tmp_path, monkeypatch, capsys):
    import cvvae.weights

    monkeypatch.setattr(cvvae.weights, "NANO_SVD", tmp_path / "absent")
    assert main(["--preset", "nano", "--outputs", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the nano SVD is not in this installation") and "--component svd=" in err


def test_weights_reachable_online_or_cached(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert weights_reachable() is True  # online: the hub downloads on first use
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    assert weights_reachable() is False
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: f"/cache/{repo}/{name}")
    assert weights_reachable() is True


# ---- handlers with the tiny preset -------------------------------------------------------------------
def test_reconstruct_progress_says_what_runs(handlers):
    shown = []

    def progress(value, desc=None, **kwargs):
        shown.append(desc)

    handlers.reconstruct(str(CLIP), 1, "128", "off", progress=progress)
    assert shown == ["loading CV-VAE (first run only)", "reconstructing 1 frame (encode + decode)"]
    shown.clear()
    handlers.reconstruct(str(CLIP), 1, "128", "off", progress=progress)
    assert shown == ["reconstructing 1 frame (encode + decode)"]  # loaded once: no loading message again


def test_reconstruct_handler_writes_side_by_side_and_metrics(handlers):
    model_tiling = handlers.vae().tiling
    video, files, info = handlers.reconstruct(str(CLIP), 5, "128", "8/128")
    assert handlers.vae().tiling == model_tiling  # the choice applies to this request only
    assert video in files and len(files) == 2 and all(f.startswith(str(handlers.config.outputs)) for f in files)
    meta = json.loads(open(files[1]).read())
    assert meta["frames"] == 5 and meta["side_by_side"] is True and np.isfinite(meta["psnr"])
    src = probe(CLIP)
    out = probe(video)
    assert out.frames == 5 and out.height == 128 and out.width == 2 * meta["width"]
    assert meta["width"] == round(src.width * 128 / src.height / 8) * 8
    assert "PSNR" in info and "SSIM" in info and "flicker" in info
    # the tiny preset reconstructs with the trained toy model, and says so (not "random weights")
    assert NANO_NOTICE in info and RANDOM_WEIGHTS_NOTICE not in info and meta["model"] == "nano"
    assert meta["psnr"] > 12  # trained toy weights: ~15 dB here; random tiny weights give ~9 dB
    assert meta["tiling"]["frames_per_window"] == 8 and meta["tiling"]["tile_size"] == 128
    _, files, _ = handlers.reconstruct(str(CLIP), 1, "128", "off")
    assert json.loads(open(files[1]).read())["tiling"]["enabled"] is False


def test_handlers_refuse_bad_input_with_actionable_errors(handlers, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    cases = [
        ("upload a video", lambda: handlers.reconstruct(None, 5, "128", "off")),
        ("notes.mp4", lambda: handlers.reconstruct(str(bad), 5, "128", "off")),
        (
            "upload an image",
            lambda: handlers.image_to_video(None, 0, 2, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", "none"),
        ),
        (
            "min_guidance",
            lambda: handlers.image_to_video(str(IMAGE), 0, 2, 4.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", "none"),
        ),
        ("prompt", lambda: handlers.text_to_video("   ", "", "animatediff", 0, 2, 7.5, 8, 2, "64x64", "off")),
        ("prompt", lambda: handlers.compare_sd3("", 0, 2, "64x64")),
        ("upload an image", lambda: handlers.compare(None, 0, 2, 2, "64x64", ADAPTER_NONE)),
        ("multiples of 64", lambda: handlers.compare(str(IMAGE), 0, 2, 2, "100x60", ADAPTER_NONE)),
        (
            "fps must be",
            lambda: handlers.image_to_video(
                str(IMAGE), 0, 2, 1.0, 3.0, 127, math.nan, 2, "64x64", 0.02, "off", "none"
            ),
        ),
        (  # a 3 KB upload that would ask for gigabytes once resized
            "scale it down",
            lambda: handlers.image_to_video(
                str(wide_png(tmp_path / "w.png", 1000000, 1)), 0, 2, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", "none"
            ),
        ),
        (
            "changes frame size",
            lambda: handlers.reconstruct(str(ts_clip(tmp_path / "c.ts", (32, 64), (64, 64))), 5, "128", "off"),
        ),  # fmt: skip
    ]
    for match, call in cases:
        with pytest.raises(gr.Error, match=match) as err:
            call()
        assert err.value.print_exception is False, match  # a message in the page, no traceback in the log
    assert list(handlers.config.outputs.glob("*")) == []  # nothing partial left behind


def test_budget_refuses_oversized_jobs_before_work(tmp_path):
    h = Handlers(AppConfig(outputs=tmp_path / "out", pixel_budget=4 * 64 * 64))
    with pytest.raises(gr.Error, match="too large for this machine"):
        h.reconstruct(str(CLIP), 5, "128", "off")
    assert list(h.config.outputs.glob("*")) == []


def test_image_to_video_handler_tiny(handlers):
    args = (3, 2, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", ADAPTER_NONE)
    video, files, info = handlers.image_to_video(str(IMAGE), *args)
    frames, fps = read_video(video)
    assert frames.shape == (5, 64, 64, 3) and fps == pytest.approx(8.0)  # 2 latents -> 1 + 4 frames
    meta = json.loads(open(files[1]).read())
    assert files[0] == video and meta["settings"]["seed"] == 3 and meta["random_weights"] is True
    assert "**frames**: 5" in info and RANDOM_WEIGHTS_NOTICE in info


def test_compare_handler_native_cvvae_and_adapter(handlers, tmp_path):
    import torch

    from cvvae.pipelines.adapters import AdapterInfo, save_adapter
    from cvvae.pipelines.tiny import build_tiny_svd

    unet = build_tiny_svd()["unet"]
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)  # an adapter that changes the output
    save_adapter(tmp_path / "adapters" / "half", unet, AdapterInfo(mode="conv_out", base_unet="tiny"))
    native, cv, adapted, table, files = handlers.compare(str(IMAGE), 5, 2, 2, "64x64", "half")
    assert read_video(native)[0].shape[0] == 2 and read_video(cv)[0].shape[0] == 5  # 1 vs 4 frames per latent
    assert not np.array_equal(read_video(cv)[0], read_video(adapted)[0])  # same seed, adapter changes it
    assert "| backbone VAE | 2 |" in table and "| CV-VAE | 5 |" in table and "| CV-VAE + adapter half | 5 |" in table
    assert len(files) == 6 and all(f.startswith(str(handlers.config.outputs)) for f in files)


def test_gpu_events_share_one_bounded_queue(handlers):
    demo = build_demo(handlers)
    gpu = {
        f.api_name: f
        for f in demo.fns.values()
        if f.api_name in ("image_to_video", "text_to_video", "reconstruct", "compare")
    }
    assert len(gpu) == 4
    assert {(f.concurrency_id, f.concurrency_limit) for f in gpu.values()} == {(GPU_QUEUE, 1)}
    assert demo._queue.max_size == QUEUE_SIZE
    assert demo.delete_cache == UPLOAD_CLEANUP and UPLOAD_CLEANUP[1] <= 3600  # uploads do not pile up
    cancels = [f for f in demo.fns.values() if f.cancels]
    assert len(cancels) == 5  # one Cancel button per tab (two in Compare)


# ---- the HTTP API ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("app-outputs")
    handlers = Handlers(AppConfig(preset="tiny", outputs=out))
    demo = build_demo(handlers)
    port = free_port()
    launch(demo, handlers, port=port, prevent_thread_lock=True, quiet=True, max_upload="1mb")
    yield f"http://127.0.0.1:{port}/", handlers
    demo.close()


def test_api_reconstruct_bad_upload_then_keeps_serving(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, handlers = server
    client = Client(url, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/image_to_video", "/text_to_video", "/reconstruct", "/compare"} <= set(endpoints)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 definitely not an mp4")
    with pytest.raises(AppError, match="broken.mp4 is not a readable video"):
        client.predict(handle_file(str(bad)), 5, "128", "off", api_name="/reconstruct")
    not_image = tmp_path / "photo.png"
    not_image.write_bytes(b"PNG? no")
    args = (0, 2, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "default", ADAPTER_NONE)
    with pytest.raises(AppError, match="photo.png is not a readable image"):
        client.predict(handle_file(str(not_image)), *args, api_name="/image_to_video")
    video, files, info = client.predict(handle_file(str(CLIP)), 3, "128", "off", api_name="/reconstruct")
    assert read_video(video)[0].shape[0] == 3 and "PSNR" in info
    assert len(files) == 2 and len(list(handlers.config.outputs.glob("reconstruct_*.mp4"))) == 1


def test_api_cancel_stops_the_denoising_and_saves_nothing(server, monkeypatch):
    """A client's cancel (what the Cancel button sends too) stops image -> video at the next step."""
    from gradio_client import Client, handle_file

    import app.handlers

    url, handlers = server
    running, steps = threading.Event(), []
    plain = app.handlers.step_callback

    def waiting_for_cancel():
        callback, job = plain(), app.handlers._JOB.get()

        def step(pipe, i, t, kwargs):
            steps.append(i)
            running.set()
            assert job.cancelled.wait(60)
            return callback(pipe, i, t, kwargs)

        return step

    monkeypatch.setattr(app.handlers, "step_callback", waiting_for_cancel)
    args = (0, 10, 1.0, 3.0, 127, 8, 2, "64x64", 0.02, "off", ADAPTER_NONE)
    job = Client(url, verbose=False).submit(handle_file(str(IMAGE)), *args, api_name="/image_to_video")
    assert running.wait(120)
    job.cancel()
    assert handlers.gpu_lock.acquire(timeout=60)  # the cancelled job let go of the models
    handlers.gpu_lock.release()
    assert steps == [0] and not list(handlers.config.outputs.glob("i2v_*"))


def test_server_serves_outputs_and_examples_only(server):
    url, _ = server
    ok = urllib.request.urlopen(f"{url}gradio_api/file={CLIP}")
    assert ok.status == 200 and ok.read(8)[4:8] == b"ftyp"
    for forbidden in ("/etc/passwd", str(EXAMPLES.parents[1] / "pyproject.toml")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={forbidden}")
        assert err.value.code in (403, 404)


def test_server_refuses_uploads_over_the_limit(server):
    import httpx

    url, _ = server
    small = httpx.post(f"{url}gradio_api/upload", files={"files": ("clip.mp4", CLIP.read_bytes())})
    assert small.status_code == 200 and small.json()[0].endswith("clip.mp4")
    big = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.mp4", b"\0" * 1_200_000)})
    assert big.status_code == 413


def test_reconstruct_and_compare_offer_the_sd3_variant(handlers):
    from PIL import Image

    from cvvae import CVVAESD3Model

    video, files, info = handlers.reconstruct(str(CLIP), 5, "128", "off", "sd3")
    assert isinstance(handlers.vae("sd3"), CVVAESD3Model) and handlers.vae("sd3") is not handlers.vae("sd21")
    meta = json.loads(open(files[1]).read())
    assert meta["frames"] == 5 and probe(video).frames == 5 and meta["model"] == "tiny"
    assert "CV-VAE-SD3" in info and RANDOM_WEIGHTS_NOTICE in info  # random tiny SD3 variant, said so
    with pytest.raises(gr.Error, match="variant"):
        handlers.reconstruct(str(CLIP), 5, "128", "off", "sd4")

    native, cv, table, files = handlers.compare_sd3("a fox", 1, 2, "64x64")
    a, b = np.asarray(Image.open(native)), np.asarray(Image.open(cv))
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)  # same latents, two decoders
    assert "CV-VAE-SD3 vs SD3's VAE" in table and RANDOM_WEIGHTS_NOTICE in table
    assert len(files) == 4 and {f.rsplit(".", 1)[1] for f in files} == {"png", "json"}
    with pytest.raises(gr.Error, match="prompt"):
        handlers.compare_sd3("  ", 1, 2, "64x64")


# ---- the nano preset: image to video only, its shipped adapter preselected in Compare ----------------------
@pytest.fixture(scope="module")
def nano_parts(tmp_path_factory):
    """A small random nano SVD folder and a conv_out adapter for its UNet (stand-ins for the shipped ones)."""
    import torch
    from test_nano_svd import SMALL_UNET

    from cvvae.pipelines.adapters import AdapterInfo, save_adapter
    from cvvae.weights import NANO_VAE2D
    from finetune import nano

    root = tmp_path_factory.mktemp("nano-app")
    parts = nano.build_random(seed=0, unet_config=SMALL_UNET)
    svd = nano.write_folder(root / "svd", parts, NANO_VAE2D)
    unet = parts["unet"]
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)  # an adapter that changes the output
    adapter = save_adapter(root / "adapter", unet, AdapterInfo(mode="conv_out", base_unet="nano-test"))
    return svd, adapter


@pytest.fixture
def nano_handlers(nano_parts, tmp_path, monkeypatch):
    from cvvae.pipelines.presets import PRESETS

    svd, adapter = nano_parts
    monkeypatch.setitem(PRESETS["nano"].adapters, "nano (tuned to nano CV-VAE)", str(adapter))
    return Handlers(AppConfig(preset="nano", outputs=tmp_path / "out", components={"svd": str(svd)}))


def test_nano_compare_shows_untuned_and_tuned_with_their_measures(nano_handlers):
    h = nano_handlers
    assert h.list_adapters() == [ADAPTER_NONE, "nano (tuned to nano CV-VAE)"]
    assert h.default_adapter() == "nano (tuned to nano CV-VAE)"
    native, cv, tuned, table, files = h.compare(str(IMAGE), 0, 2, 3, "preset default", h.default_adapter())
    (a, fa), (b, fb), (c, fc) = (read_video(v) for v in (native, cv, tuned))
    assert a.shape == (3, 64, 64, 3) and b.shape == c.shape == (9, 64, 64, 3)  # 2-D VAE: 1 frame per latent
    assert fb == fc == pytest.approx(30.0)  # the nano preset's fps
    assert not np.array_equal(b, c)  # same seed, the adapter changes the clip
    assert "| motion (px/frame) | warping error | frame difference | group seam (1 = none) |" in table
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table.splitlines()[2:5]}
    assert list(rows) == ["backbone VAE", "CV-VAE", "CV-VAE + adapter nano (tuned to nano CV-VAE)"]
    for label, cells in rows.items():
        motion, warping = float(cells[2]), float(cells[3])  # frames, fps, then motion beside the flicker
        assert motion >= 0 and warping >= 0
        seam, pulse = cells[5], cells[6].rstrip(" |")
        if label == "backbone VAE":
            assert seam == pulse == "–"  # no latent groups
        else:
            assert float(seam) > 0 and float(pulse) >= 0
    assert NANO_PRESET_NOTICE in table and RANDOM_WEIGHTS_NOTICE not in table
    assert len(files) == 6


def test_nano_demo_notes_the_modes_it_lacks_and_preselects_its_adapter(nano_handlers):
    demo = build_demo(nano_handlers)
    names = {f.api_name for f in demo.fns.values()}
    assert {"image_to_video", "reconstruct", "compare"} <= names
    assert not names & {"text_to_video", "compare_sd3"}  # no controls for what the preset cannot run
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for note in (blocks["t2v-missing"].value, blocks["compare-sd3-missing"].value):
        assert "**nano** preset has no" in note and "`--preset tiny`" in note and "`--preset svd-xt`" in note
    assert "`--preset sd3`" in blocks["compare-sd3-missing"].value
    assert blocks["compare-adapter"].visible  # the tuned clip beside the untuned one from the start
    menus = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label.startswith("Adapter")]
    assert [m.value for m in menus] == [ADAPTER_NONE, "nano (tuned to nano CV-VAE)"]  # image to video, Compare
    assert list(nano_handlers.vae_variants()) == ["sd21"]  # no CV-VAE-SD3 in the nano preset
    with pytest.raises(gr.Error, match="--preset tiny"):
        nano_handlers.vae("sd3")
    # the HTTP API or Python may still call them: refused before any model loads
    with pytest.raises(gr.Error, match="nano preset has no text to video.*--preset tiny"):
        nano_handlers.text_to_video("a fox", "", "animatediff", 0, 2, 7.5, 8, 2, "64x64", "off")
    with pytest.raises(gr.Error, match="nano preset has no SD3 text to image"):
        nano_handlers.compare_sd3("a fox", 0, 2, "64x64")
