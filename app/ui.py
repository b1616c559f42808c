"""The web demo's layout: widgets and event wiring only; every button calls a function of ``app.handlers``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from cvvae.pipelines.defaults import LIMITS
from cvvae.pipelines.settings import GenerationSettings

from .handlers import (
    ADAPTER_NONE,
    DEFAULT_SIZE,
    RESOLUTIONS,
    SHORT_SIDES,
    Handlers,
    cancellable,
    frames_label,
    random_seed,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = ASSETS / "examples"
GPU_QUEUE = "gpu"  # one concurrency id shared by every event that runs a model
QUEUE_SIZE = 8  # jobs waiting at most; more get "queue is full"
MAX_UPLOAD = "200mb"
# Uploads land in Gradio's temporary folder (GRADIO_TEMP_DIR, by default <system temp>/gradio): every
# 10 minutes, the ones older than an hour are deleted; all of them when the server stops.
UPLOAD_CLEANUP = (600, 3600)
TILING = [  # labels of the choices cvvae.tiling.tiling_changes understands (TILING_SPECS)
    ("model default", "default"),
    ("off (fastest, most memory)", "off"),
    ("16 frames per window", "16"),
    ("8 frames per window", "8"),
    ("8 frames, 256 px tiles (least memory)", "8/256"),
]
T2V_PROMPTS = [["a red fox running through snow, cinematic"], ["a lighthouse at dusk, waves breaking on the rocks"]]
# Small results (the tiny preset's 64x64 images) fill their panel with sharp pixels instead of sitting
# small in the middle of it.
CSS = (
    ".result-image .image-frame, .result-image img {width: 100% !important; height: 100% !important;}"
    " .result-image img {object-fit: contain !important; image-rendering: pixelated;}"
)
SETTING_DEFAULTS = GenerationSettings()  # motion bucket, guidance, noise augmentation
INTRO = (
    "# CV-VAE video generation\n"
    "Stable Video Diffusion and Stable Diffusion backbones generating in the latent space of **CV-VAE**, "
    "a video VAE whose latents stay compatible with the SD image VAE: one latent frame decodes to four video "
    "frames (25 latents -> 97 frames)."
)


@dataclass
class UIDefaults:
    """Initial control values: the preset's defaults for image->video and text->video."""

    steps: int
    num_latent_frames: int
    fps: float
    size: str  # what "preset default" means, shown in the resolution menu
    t2v_backbone: str | None  # None: the preset has no text -> video (its tab is a note)
    t2v_backbones: list[tuple[str, str]]  # (label, name) of every text -> video backbone
    t2v_guidance: float
    t2v_num_latent_frames: int
    t2v_fps: float
    t2v_size: str
    reconstruct_frames: int
    reconstruct_short_side: str
    sd3_steps: int
    sd3_size: str

    def resolutions(self, size: str) -> list[tuple[str, str]]:
        return [(f"preset default ({size})" if r == DEFAULT_SIZE else r, r) for r in RESOLUTIONS]


def preset_defaults(preset: str) -> UIDefaults:
    """Read step, frame and size defaults from ``cvvae.pipelines.api.PRESETS``."""
    from cvvae.pipelines.backbones import BACKBONES, backbones_for
    from cvvae.pipelines.presets import get_preset

    p = get_preset(preset)
    # a mode the preset lacks keeps the tiny preset's numbers: its tab shows a note instead of controls
    tiny = get_preset("tiny")
    svd, t2v, sd3 = (
        p.defaults(p.backbone(mode)) if mode in p.backbones else tiny.defaults(tiny.backbone(mode))
        for mode in ("i2v", "t2v", "t2i")
    )
    return UIDefaults(
        steps=svd.steps,
        num_latent_frames=svd.num_latent_frames,
        fps=svd.fps,
        size=f"{svd.width}x{svd.height}",
        t2v_backbone=p.backbones.get("t2v"),
        t2v_backbones=[(BACKBONES[name].label, name) for name in backbones_for("t2v")],
        t2v_guidance=t2v.guidance,
        t2v_num_latent_frames=t2v.num_latent_frames,
        t2v_fps=t2v.fps,
        t2v_size=f"{t2v.width}x{t2v.height}",
        # random weights usually mean a CPU: keep the reconstruction demo quick there
        reconstruct_frames=9 if p.random_weights else 33,
        reconstruct_short_side="128" if p.random_weights else "256",
        sd3_steps=sd3.steps,
        sd3_size=f"{sd3.width}x{sd3.height}",
    )


def image_input(**kwargs) -> gr.Image:
    """``gr.Image`` whose unreadable uploads give an actionable message instead of a bare "Error".

    (The instance's ``preprocess`` is wrapped; subclassing a Gradio component would make Gradio
    write a ``.pyi`` file next to this module.)
    """
    image = gr.Image(type="filepath", sources=["upload", "clipboard"], **kwargs)
    plain = image.preprocess

    def preprocess(payload):
        try:
            return plain(payload)
        except gr.Error:
            raise
        except Exception as err:
            name = getattr(payload, "orig_name", None) or Path(getattr(payload, "path", "") or "image").name
            raise gr.Error(
                f"{name} is not a readable image ({type(err).__name__}); upload a PNG, JPEG or WebP file",
                print_exception=False,
            ) from err

    image.preprocess = preprocess
    return image


def _examples(*suffixes: str) -> list[list[str]]:
    return [[str(p)] for p in sorted(EXAMPLES.glob("*")) if p.suffix.lower() in suffixes]


def slider(name: str, value, label: str, **kwargs) -> gr.Slider:
    """A slider over the range the settings accept (``cvvae.pipelines.defaults.LIMITS``)."""
    r = LIMITS[name]
    return gr.Slider(r.low, r.high, value=value, step=r.step, label=label, **kwargs)


def _latent_frames_slider(value: int) -> gr.Slider:
    return slider("num_latent_frames", value, "Latent frames")


def _frames_controls(num_latent_frames: int, fps_value: float):
    """Latent frames + fps with a live label of the resulting frame count and duration."""
    with gr.Row():
        n = _latent_frames_slider(num_latent_frames)
        fps = slider("fps", fps_value, "Output fps")
    label = gr.Markdown(frames_label(num_latent_frames, fps_value))
    for c in (n, fps):
        c.change(frames_label, [n, fps], label, queue=False, show_progress="hidden", api_visibility="private")
    return n, fps


def _seed_control():
    with gr.Row(equal_height=True):
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", scale=4)
        dice = gr.Button("Random seed", scale=1, size="sm")
    dice.click(random_seed, None, seed, queue=False, api_visibility="private")
    return seed


def _missing_mode(h: Handlers, mode: str, elem_id: str) -> bool:
    """Whether the preset lacks ``mode``; if so its tab gets one line saying which presets have it, no controls."""
    note = h.missing_mode(mode)
    if note:
        gr.Markdown(f"ℹ️ {note}", elem_id=elem_id)
    return bool(note)


def _adapter_control(h: Handlers, value: str = ADAPTER_NONE):
    with gr.Row(equal_height=True):
        adapter = gr.Dropdown(h.list_adapters(), value=value, label="Adapter (fine-tuned UNet)", scale=4)
        refresh = gr.Button("Refresh list", scale=1, size="sm")
    refresh.click(lambda: gr.Dropdown(choices=h.list_adapters()), None, adapter, queue=False, api_visibility="private")
    return adapter


def _outputs(name: str):
    video = gr.Video(label="Result", elem_id=f"{name}-video", autoplay=True, loop=True, interactive=False)
    files = gr.File(label="Download (mp4 + JSON sidecar)", file_count="multiple", interactive=False)
    info = gr.Markdown(elem_id=f"{name}-info")
    return video, files, info


def _run_buttons(name: str):
    with gr.Row():
        run = gr.Button(
            "Generate" if name != "reconstruct" else "Reconstruct", variant="primary", elem_id=f"{name}-run"
        )
        stop = gr.Button("Cancel", variant="stop", elem_id=f"{name}-stop")
    return run, stop


def _gpu_event(button, fn, inputs, outputs, api_name: str, stop):
    """Bind ``fn`` to the shared one-at-a-time GPU queue; ``stop`` (or a client) cancels it, work included."""
    event = button.click(
        cancellable(fn), inputs, outputs, api_name=api_name, concurrency_id=GPU_QUEUE, concurrency_limit=1
    )
    stop.click(None, None, None, cancels=[event], queue=False, api_visibility="private")
    return event


def _i2v_tab(h: Handlers, d: UIDefaults):
    if _missing_mode(h, "i2v", "i2v-missing"):
        return
    with gr.Row():
        with gr.Column():
            image = image_input(label="Input image", elem_id="i2v-image")
            gr.Examples(_examples(".jpg", ".png", ".webp"), [image], label="Examples")
            seed = _seed_control()
            steps = slider("steps", d.steps, "Denoising steps")
            n, fps = _frames_controls(d.num_latent_frames, d.fps)
            with gr.Accordion("More settings", open=False):
                with gr.Row():
                    min_g = slider("min_guidance", SETTING_DEFAULTS.min_guidance, "Min guidance (first frame)")
                    max_g = slider("max_guidance", SETTING_DEFAULTS.max_guidance, "Max guidance (last frame)")
                motion = slider(
                    "motion_bucket_id", SETTING_DEFAULTS.motion_bucket_id, "Motion bucket id (more = more motion)"
                )
                noise = slider(
                    "noise_aug_strength",
                    SETTING_DEFAULTS.noise_aug_strength,
                    "Noise augmentation of the conditioning image",
                )
                res = gr.Dropdown(d.resolutions(d.size), value=DEFAULT_SIZE, label="Resolution (width x height)")
                tiling = gr.Dropdown(TILING, value="default", label="Decode tiling (less memory)")
                adapter = _adapter_control(h)
            run, stop = _run_buttons("i2v")
        with gr.Column():
            outs = _outputs("i2v")
    inputs = [image, seed, steps, min_g, max_g, motion, fps, n, res, noise, tiling, adapter]
    _gpu_event(run, h.image_to_video, inputs, list(outs), "image_to_video", stop)


def _t2v_tab(h: Handlers, d: UIDefaults):
    if _missing_mode(h, "t2v", "t2v-missing"):
        return
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(
                label="Prompt", lines=2, placeholder="Describe the video to generate (required)", elem_id="t2v-prompt"
            )
            gr.Examples(T2V_PROMPTS, [prompt], label="Example prompts")
            negative = gr.Textbox(label="Negative prompt", value="blurry, low quality, watermark")
            backbone = gr.Radio(d.t2v_backbones, value=d.t2v_backbone, label="Backbone")
            seed = _seed_control()
            steps = slider("steps", d.steps, "Denoising steps")
            n, fps = _frames_controls(d.t2v_num_latent_frames, d.t2v_fps)
            with gr.Accordion("More settings", open=False):
                guidance = slider("guidance", d.t2v_guidance, "Guidance scale")
                res = gr.Dropdown(d.resolutions(d.t2v_size), value=DEFAULT_SIZE, label="Resolution (width x height)")
                tiling = gr.Dropdown(TILING, value="default", label="Decode tiling (less memory)")
            run, stop = _run_buttons("t2v")
        with gr.Column():
            outs = _outputs("t2v")
    inputs = [prompt, negative, backbone, seed, steps, guidance, fps, n, res, tiling]
    _gpu_event(run, h.text_to_video, inputs, list(outs), "text_to_video", stop)


def _reconstruct_tab(h: Handlers, d: UIDefaults):
    with gr.Row():
        with gr.Column():
            video = gr.Video(label="Input video", sources=["upload"], elem_id="reconstruct-input")
            gr.Examples(_examples(".mp4", ".webm"), [video], label="Examples")
            frames = gr.Slider(
                1, 257, value=d.reconstruct_frames, step=1, label="Frames to reconstruct (from the start)"
            )
            short = gr.Dropdown(SHORT_SIDES, value=d.reconstruct_short_side, label="Resize: short side in pixels")
            tiling = gr.Dropdown(TILING, value="default", label="Tiling (less memory)")
            variant = gr.Radio([(v, k) for k, v in h.vae_variants().items()], value="sd21", label="Model")
            run, stop = _run_buttons("reconstruct")
        with gr.Column():
            outs = _outputs("reconstruct")
    _gpu_event(run, h.reconstruct, [video, frames, short, tiling, variant], list(outs), "reconstruct", stop)


def _compare_tab(h: Handlers, d: UIDefaults):
    with gr.Tabs():
        with gr.Tab("SVD: image to video", id="compare-svd"):
            _compare_svd(h, d)
        with gr.Tab("SD3: text to image", id="compare-sd3"):
            _compare_sd3(h, d)


def _compare_svd(h: Handlers, d: UIDefaults):
    if _missing_mode(h, "i2v", "compare-svd-missing"):
        return
    gr.Markdown(
        "One image and seed through the backbone's **own VAE** (one frame per latent), **CV-VAE** "
        "(four frames per latent) and, if chosen, CV-VAE **with a fine-tuned adapter**: untuned and tuned side "
        "by side, each with its motion and flicker measures."
    )
    chosen = h.default_adapter()  # the preset's shipped adapter, preselected
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input(label="Input image", elem_id="compare-image")
            gr.Examples(_examples(".jpg", ".png", ".webp"), [image], label="Examples")
            seed = _seed_control()
            steps = slider("steps", d.steps, "Denoising steps")
            n = _latent_frames_slider(d.num_latent_frames)
            res = gr.Dropdown(d.resolutions(d.size), value=DEFAULT_SIZE, label="Resolution (width x height)")
            adapter = _adapter_control(h, chosen)
            run, stop = _run_buttons("compare")
        with gr.Column(scale=2):
            with gr.Row():
                native = gr.Video(label="Backbone VAE", elem_id="compare-native", autoplay=True, loop=True)
                cv = gr.Video(label="CV-VAE", elem_id="compare-cvvae", autoplay=True, loop=True)
                ad = gr.Video(
                    label="CV-VAE + adapter",
                    elem_id="compare-adapter",
                    autoplay=True,
                    loop=True,
                    visible=chosen != ADAPTER_NONE,
                )
            table = gr.Markdown(elem_id="compare-info")
            files = gr.File(label="Download", file_count="multiple", interactive=False)
    # the third panel shows only when an adapter is chosen
    adapter.change(
        lambda name: gr.Video(visible=bool(name) and name != ADAPTER_NONE),
        adapter,
        ad,
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )
    _gpu_event(
        run,
        h.compare,
        [image, seed, steps, n, res, adapter],
        [native, cv, ad, table, files],
        "compare",
        stop,
    )


def _compare_sd3(h: Handlers, d: UIDefaults):
    if _missing_mode(h, "t2i", "compare-sd3-missing"):
        return
    gr.Markdown(
        "One prompt and seed through **Stable Diffusion 3**: the same 16-channel latents decoded by SD3's "
        "**own VAE** and by **CV-VAE-SD3** (the video VAE in image mode)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=2, value="a red fox in fresh snow, morning light")
            seed = _seed_control()
            steps = slider("steps", d.sd3_steps, "Denoising steps")
            res = gr.Dropdown(d.resolutions(d.sd3_size), value=DEFAULT_SIZE, label="Resolution (width x height)")
            run, stop = _run_buttons("compare-sd3")
        with gr.Column(scale=2):
            with gr.Row():
                native = gr.Image(
                    label="SD3 VAE", elem_id="compare-sd3-native", elem_classes="result-image", interactive=False
                )
                cv = gr.Image(
                    label="CV-VAE-SD3", elem_id="compare-sd3-cvvae", elem_classes="result-image", interactive=False
                )
            table = gr.Markdown(elem_id="compare-sd3-info")
            files = gr.File(label="Download", file_count="multiple", interactive=False)
    _gpu_event(run, h.compare_sd3, [prompt, seed, steps, res], [native, cv, table, files], "compare_sd3", stop)


def build_demo(handlers: Handlers, defaults: UIDefaults | None = None) -> gr.Blocks:
    """The four-tab demo, with a bounded queue; launch it with ``launch(demo, handlers.config, ...)``."""
    d = defaults or preset_defaults(handlers.config.preset)
    with gr.Blocks(title="CV-VAE video generation", delete_cache=UPLOAD_CLEANUP) as demo:
        gr.Markdown(INTRO)
        if handlers.config.notice:
            notice = handlers.config.notice
            gr.Markdown(f"⚠️ **{notice[:1].upper()}{notice[1:]}**", elem_id="notice")
        with gr.Tabs():
            with gr.Tab("Image to video", id="i2v"):
                _i2v_tab(handlers, d)
            with gr.Tab("Text to video", id="t2v"):
                _t2v_tab(handlers, d)
            with gr.Tab("Reconstruct", id="reconstruct"):
                _reconstruct_tab(handlers, d)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(handlers, d)
        outputs = shown_path(handlers.config.outputs)
        gr.Markdown(f"Preset **{handlers.config.preset}** · results are saved in `{outputs}`")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def shown_path(path: Path) -> str:
    """``path`` as the page shows it: relative to the working folder when inside it (``outputs``)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def launch(demo: gr.Blocks, handlers: Handlers, host="127.0.0.1", port=7860, share=False, max_upload=MAX_UPLOAD, **kw):
    """Serve ``demo``: only the outputs folder and the examples are reachable, uploads are size-limited."""
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(handlers.config.outputs), str(EXAMPLES)],
        max_file_size=max_upload,
        footer_links=["api", "settings"],
        theme=gr.themes.Soft(),
        css=CSS,
        **kw,
    )
