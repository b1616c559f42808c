"""Base vs adapted UNet on held-out conditioning frames: flicker, PSNR/SSIM against references, grids.

Everything generates through ``cvvae.pipelines.api.generate`` (the same path as the CLI and the app),
once without and once with the adapter, at the same seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cvvae.errors import InputError
from cvvae.outputs import atomic_path, write_json_atomic
from cvvae.video import STILL_SUFFIXES, VIDEO_SUFFIXES, is_still_file

# Flicker figures fall when motion falls (a frozen clip scores 0), so motion is always beside them, with the
# CV-VAE-specific seam measures (1.0 = no jump or pulse at the 4-frame latent groups) that motion cannot fake.
METRICS = ("frame_difference", "warping_error", "motion", "group_seam", "group_pulse", "psnr", "ssim")
HEADERS = ("frame diff", "warping error", "motion (px/frame)", "group seam (1 = none)", "group pulse (1 = none)",
           "PSNR ↑", "SSIM ↑")  # fmt: skip


@dataclass
class EvalSettings:
    adapter: str
    inputs: list[str]
    out_dir: str
    preset: str = "svd-xt"
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    num_latent_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float | None = None
    device: str | None = None
    motion_bucket_id: int = 127
    components: dict = field(default_factory=dict)  # models replacing the preset's (cvvae.pipelines.presets)
    allow_other_base: bool = False  # evaluate an adapter on models it was not trained for (with a warning)

    def validate(self) -> EvalSettings:
        from cvvae.pipelines.adapters import load_adapter_info

        load_adapter_info(self.adapter)  # InputError when it is not an adapter folder
        if not self.seeds:
            raise InputError("give at least one seed")
        return self

    def check_base(self) -> str | None:
        """InputError when the adapter was trained on another base UNet or VAE than the preset loads (a warning
        string instead with ``allow_other_base``)."""
        from cvvae.pipelines.adapters import load_adapter_info
        from cvvae.pipelines.api import get_pipelines

        bundle = get_pipelines(self.preset, self.device, components=self.components)
        problem = bundle.adapter_mismatch(load_adapter_info(self.adapter))
        if problem and not self.allow_other_base:
            raise InputError(
                f"adapter {self.adapter}: {problem}. Evaluate it with the models it was trained on (--preset, "
                "--component), or pass --allow-other-base to compare anyway"
            )
        return problem


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Videos and images given directly or inside folders (sorted)."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES + STILL_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"evaluation input {path} does not exist")
    if not found:
        raise InputError(f"no videos or images among {inputs}")
    return found


def conditioning_image(path: Path, folder: Path) -> Path:
    """The image to condition on: the input itself for a still, else the first frame of the video (as png)."""
    from PIL import Image

    from cvvae.video import read_video

    if is_still_file(path):
        return path
    frames, _ = read_video(path, num_frames=1)
    out = folder / f"{path.stem}.png"
    with atomic_path(out) as tmp:
        Image.fromarray(frames[0]).save(tmp, format="PNG")
    return out


def reference_clip(path: Path, frames: int, fps: float, size: tuple[int, int]) -> np.ndarray | None:
    """The real continuation of a held-out video at the generated fps and size (None for stills / short videos)."""
    from cvvae.video import probe, read_video

    if is_still_file(path):
        return None
    stride = max(1, round(probe(path).fps / fps))
    ref, _ = read_video(path, num_frames=frames, stride=stride, size=size)
    return ref if len(ref) == frames else None


def clip_metrics(frames: np.ndarray, reference: np.ndarray | None) -> dict:
    from cvvae import metrics
    from cvvae.model import CVVAEModel

    f = CVVAEModel.temporal_factor  # frames per latent of the CV-VAE that decoded the clip
    out = dict(metrics.flicker(frames))
    if len(frames) >= 2 * f:
        out["group_seam"] = metrics.group_seams(frames, f)["ratio"]
        out["group_pulse"] = metrics.group_spectrum(frames, f)["ratio"]
    if reference is not None:
        out["psnr"], out["ssim"] = metrics.psnr(frames, reference), metrics.ssim(frames, reference)
    return out


def _generate(s: EvalSettings, image: Path, seed: int, adapter: str | None, out: Path):
    from cvvae.pipelines.api import GenerationSettings, generate
    from cvvae.video import read_video

    gs = GenerationSettings(
        mode="i2v",
        image=str(image),
        seed=seed,
        steps=s.steps,
        num_latent_frames=s.num_latent_frames,
        height=s.height,
        width=s.width,
        fps=s.fps,
        motion_bucket_id=s.motion_bucket_id,
        adapter=adapter,
    )
    result = generate(
        gs, out, preset=s.preset, device=s.device, components=s.components, overwrite=True
    )  # a report folder is redone
    frames, _ = read_video(result.video_path)
    return frames, result.fps


def evaluate(s: EvalSettings) -> dict:
    """Generate base and adapted clips for every input and seed; write report.json, report.md and grids."""
    from cvvae.video import side_by_side, write_video

    s.validate()
    warning = s.check_base()
    out = Path(s.out_dir)
    rows = []
    for path in collect_inputs(s.inputs):
        image = conditioning_image(path, out / "inputs")
        for seed in s.seeds:
            name = f"{path.stem}_seed{seed}"
            base, fps = _generate(s, image, seed, None, out / "base" / f"{name}.mp4")
            adapted, _ = _generate(s, image, seed, s.adapter, out / "adapted" / f"{name}.mp4")
            ref = reference_clip(path, len(base), fps, base.shape[1:3])
            write_video(
                out / "grids" / f"{name}.mp4", side_by_side(base, adapted, *([ref] if ref is not None else [])), fps
            )
            row = {
                "input": str(path),
                "seed": seed,
                "base": clip_metrics(base, ref),
                "adapted": clip_metrics(adapted, ref),
            }
            if ref is not None:  # the real continuation: the motion and steadiness to aim for
                row["real"] = {k: v for k, v in clip_metrics(ref, None).items()}
            rows.append(row)
    summary = {k: {m: _mean([r[k].get(m) for r in rows if k in r]) for m in METRICS} for k in KINDS}
    report = {"settings": asdict(s), "clips": rows, "summary": summary}
    report["markdown"] = markdown_table(rows, summary)
    if warning:
        report["warning"] = warning
        report["markdown"] = f"**Warning**: the adapter {warning}\n\n" + report["markdown"]
    if s.preset == "tiny":  # say so in every copy of the report, not only on the terminal
        from cvvae.loading import RANDOM_WEIGHTS_NOTICE

        report["notice"] = RANDOM_WEIGHTS_NOTICE
        report["markdown"] = f"**Note**: {RANDOM_WEIGHTS_NOTICE}\n\n" + report["markdown"]
    write_json_atomic(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report["markdown"], encoding="utf-8")
    return report


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


KINDS = ("base", "adapted", "real")


def markdown_table(rows: list[dict], summary: dict) -> str:
    """Per clip and seed, base / adapted UNet / the real clip; lower flicker only counts at equal motion."""
    head = "| clip | seed | video | " + " | ".join(HEADERS) + " |\n|" + "---|" * (3 + len(HEADERS)) + "\n"
    lines = []
    for r in rows:
        for k in (k for k in KINDS if k in r):
            values = " | ".join(_fmt(r[k].get(m)) for m in METRICS)
            lines.append(f"| {Path(r['input']).name} | {r['seed']} | {k} | {values} |")
    for k in (k for k in KINDS if any(v is not None for v in summary[k].values())):
        lines.append(f"| **mean** | | {k} | " + " | ".join(_fmt(summary[k][m]) for m in METRICS) + " |")
    note = (
        "\nFrame difference and warping error also fall when the motion falls (a frozen clip scores 0): "
        "compare them between rows of similar motion. Group seam and pulse are 1.0 without a jump or pulse "
        "at CV-VAE's 4-frame latent groups.\n"
    )
    return head + "\n".join(lines) + "\n" + note


def sample_during_training(cfg, unet, step: int) -> Path:
    """Save the current weights as an adapter and generate one sample clip with it (``OUTPUT/samples``)."""
    import json

    from cvvae.pipelines.adapters import save_adapter
    from cvvae.pipelines.api import GenerationSettings, generate

    from .data import load_manifest
    from .models import adapter_info

    t, folder = cfg.train, cfg.output_dir / "samples"
    image = t.sample_image
    if not image:
        source = Path(load_manifest(cfg.data.cache_dir)["clips"][0]["source"])
        image = str(conditioning_image(source, folder))
    peft = json.loads((cfg.output_dir / "peft_config.json").read_text())["peft_config"]
    data = {"cache_dir": cfg.data.cache_dir}
    adapter = save_adapter(folder / f"adapter-{step}", unet, adapter_info(cfg, peft, data, step))
    preset = "tiny" if cfg.model.base == "tiny" else t.sample_preset
    settings = GenerationSettings(
        mode="i2v",
        image=image,
        seed=t.seed,
        steps=t.sample_steps,
        num_latent_frames=cfg.data.num_latent_frames,
        height=cfg.data.height,
        width=cfg.data.width,
        adapter=str(adapter),
    )
    out = folder / f"sample-{step:06d}.mp4"
    return generate(settings, out, preset=preset, progress=False, overwrite=True).video_path
