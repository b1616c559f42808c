"""The flicker experiment of ``docs/fine-tuning.md``: the nano SVD untuned and tuned in nano CV-VAE latents,
against the nano SVD in its own 2-D world and real clips, on held-out conditioning frames, with paired
bootstrap confidence intervals over the held-out clips.

Every clip is generated through ``cvvae.pipelines.api.generate`` (the CLI's path) and measured once; each
measurement is written to ``OUT/rows/ARM/CLIP_seedS.json`` as it is made, so an interrupted run resumes.

    python -m finetune.experiment --heldout runs/nano-svd/data/heldout --svd runs/nano-svd/svd \\
        --adapter T=runs/nano-svd/tune-T/adapter --adapter L=... --adapter C=... --out runs/nano-svd/experiment
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# per-clip measures: lower flicker counts only at equal motion; seam / pulse are 1.0 without latent-group jumps
MEASURES = ("warping_error", "frame_difference", "motion", "group_seam", "group_pulse", "frame0_psnr")
LABELS = {
    "warping_error": "warping error (Lai)",
    "frame_difference": "frame diff",
    "motion": "motion (px/frame)",
    "group_seam": "group seam (1 = none)",
    "group_pulse": "group pulse (1 = none)",
    "frame0_psnr": "frame 0 PSNR",
    "latent_frechet": "latent-dynamics Fréchet",
}
WORLD_2D_FPS = 7.5  # frames 0, 4, 8, ... of 30 fps clips: the 2-D world's frame rate (fps id 6.5, as trained)


@dataclass
class Arm:
    """One row of the table: generated (``unet`` world and adapter) or real clips (``real``: as read, or
    through ``vae`` when given)."""

    name: str
    world: str = "cvvae"  # "cvvae": nano CV-VAE latents, 17 frames; "2d": the nano 2-D VAE, 5 frames
    adapter: str | None = None
    real: bool = False
    vae: str | None = None  # real clips reconstructed by this VAE spec
    frozen: bool = False  # the real first frame held still (what flicker measures reward if read alone)


@dataclass
class Experiment:
    heldout: Path
    out: Path
    svd: str
    arms: list[Arm]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 25
    resamples: int = 2000


def heldout_clips(folder: Path) -> list[Path]:
    from cvvae.video import VIDEO_SUFFIXES

    clips = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        from cvvae.errors import InputError

        raise InputError(f"{folder} holds no held-out clips")
    return clips


def world_frames(clip: np.ndarray, world: str) -> np.ndarray:
    """The real clip as a world sees it: all 17 frames (CV-VAE) or frames 0, 4, ..., 16 (2-D)."""
    return clip if world == "cvvae" else clip[::4]


def measure(frames: np.ndarray, cond: np.ndarray | None, world: str) -> dict:
    """The per-clip measures (``MEASURES``) of uint8 ``frames`` conditioned on ``cond`` ([H, W, 3]; None for
    clips that are not generated from it). Undefined measures (a still clip has no spectrum) are None."""
    from cvvae import metrics

    row = dict(metrics.flicker(frames))
    still = not np.any(frames != frames[:1])
    if world == "cvvae" and not still:
        row["group_seam"] = metrics.group_seams(frames, 4)["ratio"]
        row["group_pulse"] = metrics.group_spectrum(frames, 4)["ratio"]
    if cond is not None:
        row["frame0_psnr"] = metrics.psnr(frames[:1], cond[None])
    return row


class Runner:
    """Generates or reads each arm's clips, measures them, keeps the latents for the Fréchet distance."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.clips = heldout_clips(exp.heldout)
        self._vaes: dict[str, object] = {}

    def vae(self, spec: str):
        if spec not in self._vaes:
            from cvvae.vaes import load_video_vae

            self._vaes[spec] = load_video_vae(spec)
        return self._vaes[spec]

    def real(self, path: Path) -> np.ndarray:
        from cvvae.video import read_video

        frames, _ = read_video(path)
        return frames

    def frames(self, arm: Arm, path: Path, seed: int, real: np.ndarray) -> np.ndarray:
        """The clip of ``arm`` for held-out ``path`` (its frames as ``arm``'s world sees them: ``real``) and
        ``seed``; generated clips are written under ``OUT/clips``."""
        from cvvae.pipelines.api import GenerationSettings, generate
        from cvvae.video import read_video, write_image

        if arm.frozen:
            return np.repeat(real[:1], len(real), axis=0)
        if arm.real:
            return self.vae(arm.vae).reconstruct(real) if arm.vae else real
        image = self.exp.out / "inputs" / f"{path.stem}.png"
        if not image.is_file():
            write_image(image, real[0])
        components = {"svd": self.exp.svd, **({"cvvae": "nano-2d"} if arm.world == "2d" else {})}
        settings = GenerationSettings(
            mode="i2v",
            image=str(image),
            seed=seed,
            steps=self.exp.steps,
            fps=WORLD_2D_FPS if arm.world == "2d" else None,
            adapter=arm.adapter,
        )
        out = self.exp.out / "clips" / arm.name / f"{path.stem}_seed{seed}.mp4"
        result = generate(settings, out, preset="nano", components=components, progress=False, overwrite=True)
        frames, _ = read_video(result.video_path)
        return frames

    def row(self, arm: Arm, path: Path, seed: int) -> dict:
        """Measured once; read back from ``OUT/rows`` when an earlier run measured it."""
        file = self.exp.out / "rows" / arm.name / f"{path.stem}_seed{seed}.json"
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
        real = world_frames(self.real(path), arm.world)
        frames = self.frames(arm, path, seed, real)
        cond = None if (arm.real and not arm.vae) or arm.frozen else real[0]
        row = {"clip": path.stem, "seed": seed, **measure(frames, cond, arm.world)}
        latent_vae = self.vae("nano" if arm.world == "cvvae" else "nano-2d")
        z = latent_vae.encode_frames(frames)[0].float().numpy()  # [C, n, h, w]
        from cvvae.outputs import write_json_atomic

        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file.with_suffix(".npy"), z)
        write_json_atomic(file, row)  # last: a row with its json is complete
        return row

    def run(self) -> dict:
        from tqdm.auto import tqdm

        seeds = {arm.name: [0] if arm.real or arm.frozen else self.exp.seeds for arm in self.exp.arms}
        jobs = [(arm, clip, s) for arm in self.exp.arms for clip in self.clips for s in seeds[arm.name]]
        rows = {arm.name: [] for arm in self.exp.arms}
        for arm, clip, seed in tqdm(jobs, desc="experiment", unit="clip"):
            rows[arm.name].append(self.row(arm, clip, seed))
        return rows


# ----------------------------------------------------------------------------- statistics


def per_clip(rows: list[dict], measure_name: str) -> dict[str, float]:
    """Mean of ``measure_name`` over the seeds of each held-out clip (the bootstrap's unit)."""
    by_clip: dict[str, list[float]] = {}
    for r in rows:
        v = r.get(measure_name)
        if v is not None and math.isfinite(v):
            by_clip.setdefault(r["clip"], []).append(v)
    return {c: float(np.mean(v)) for c, v in by_clip.items()}


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (one per held-out clip), clips resampled."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(rows: dict[str, list[dict]], baseline: str, resamples: int) -> dict:
    """Per arm and measure: mean with its interval, and the paired difference to ``baseline`` with its interval
    (clips common to both; seeds are paired by generating both arms with the same seeds)."""
    out = {}
    for arm, arm_rows in rows.items():
        out[arm] = {}
        for m in MEASURES:
            mine = per_clip(arm_rows, m)
            if not mine:
                continue
            values = np.array(list(mine.values()))
            entry = {"mean": float(values.mean()), "ci": bootstrap_ci(values, resamples)}
            base = per_clip(rows.get(baseline, []), m)
            common = sorted(set(mine) & set(base))
            if arm != baseline and common:
                diff = np.array([mine[c] - base[c] for c in common])
                entry["diff"] = float(diff.mean())
                entry["diff_ci"] = bootstrap_ci(diff, resamples)
            out[arm][m] = entry
    return out


def latent_frechet(exp: Experiment, rows: dict[str, list[dict]], arms: list[Arm], resamples: int) -> dict:
    """Fréchet distance of each arm's latent dynamics to the real clips' (same VAE, same world), with a
    bootstrap interval over held-out clips (fewer resamples: each is a covariance fit)."""
    from cvvae.metrics import latent_dynamics_frechet

    def latents(arm: Arm) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        for r in rows[arm.name]:
            file = exp.out / "rows" / arm.name / f"{r['clip']}_seed{r['seed']}.npy"
            out.setdefault(r["clip"], []).append(np.load(file))
        return out

    real = {a.world: latents(a) for a in arms if a.real and a.vae is None}
    rng = np.random.default_rng(0)
    result = {}
    for arm in arms:
        if arm.world not in real or (arm.real and arm.vae is None):
            continue  # (the real clips themselves: 0 by definition)
        mine, ref = latents(arm), real[arm.world]
        clips = sorted(set(mine) & set(ref))
        value = latent_dynamics_frechet([z for c in clips for z in mine[c]], [z for c in clips for z in ref[c]])
        boots = []
        for _ in range(min(resamples, 200)):
            pick = [clips[i] for i in rng.integers(0, len(clips), len(clips))]
            boots.append(
                latent_dynamics_frechet([z for c in pick for z in mine[c]], [z for c in pick for z in ref[c]])
            )
        result[arm.name] = {"mean": value, "ci": (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))}
    return result


# ----------------------------------------------------------------------------- report


def _cell(entry: dict | None, key: str = "mean", ci: str = "ci") -> str:
    if not entry or key not in entry:
        return "-"
    lo, hi = entry[ci]
    return f"{entry[key]:.4g} [{lo:.3g}, {hi:.3g}]"


def markdown(summary: dict, frechet: dict, differences: dict[str, dict]) -> str:
    """The table of every arm, then one table of paired differences per baseline (``differences``: baseline
    name -> :func:`summarise` against it, restricted to the arms compared with it)."""
    cols = [*MEASURES, "latent_frechet"]
    text = "| arm | " + " | ".join(LABELS[c] for c in cols) + " |\n|" + "---|" * (1 + len(cols)) + "\n"
    for arm, entries in summary.items():
        cells = [_cell(entries.get(m)) for m in MEASURES] + [_cell(frechet.get(arm))]
        text += f"| {arm} | " + " | ".join(cells) + " |\n"
    for baseline, table in differences.items():
        text += f"\nPaired difference to `{baseline}` (mean over held-out clips, 95% bootstrap interval):\n\n"
        text += "| arm | " + " | ".join(LABELS[m] for m in MEASURES) + " |\n|" + "---|" * (1 + len(MEASURES)) + "\n"
        for arm, e in table.items():
            text += f"| {arm} | " + " | ".join(_cell(e.get(m), "diff", "diff_ci") for m in MEASURES) + " |\n"
    return text


def gate(summary: dict, frechet: dict) -> dict:
    """The protocol's gate: in its own world the nano SVD moves like real clips (flow within 0.5x-2x of the real
    clips', latent-dynamics Fréchet below that of the first frame held still)."""
    ratio = summary["2-D: nano SVD"]["motion"]["mean"] / summary["2-D: real"]["motion"]["mean"]
    fd, frozen = frechet["2-D: nano SVD"]["mean"], frechet["2-D: frozen"]["mean"]
    return {
        "motion_ratio": ratio,
        "frechet": fd,
        "frechet_frozen": frozen,
        "passed": 0.5 <= ratio <= 2 and fd < frozen,
    }


def decide(vs_untuned: dict, vs_control: dict, untuned: dict) -> dict[str, dict]:
    """The protocol's decision rule for every tuned arm (see ``docs/fine-tuning.md``)."""
    verdicts = {}
    motion = untuned["motion"]["mean"]
    for arm, e in vs_untuned.items():
        if "warping_error" not in e or "diff_ci" not in e["warping_error"]:
            continue
        lower = e["warping_error"]["diff_ci"][1] < 0
        keeps_motion = not e["motion"]["diff_ci"][1] < -0.1 * motion
        control = vs_control.get(arm, {}).get("warping_error", {})
        beats_control = "diff_ci" in control and control["diff_ci"][1] < 0
        seam = e.get("group_seam", {})
        verdicts[arm] = {
            "lower_warping_error": lower,
            "keeps_motion": keeps_motion,
            "beats_control": beats_control,
            "reduces_flicker": lower and keeps_motion and beats_control,
            "reduces_seam": "diff_ci" in seam and seam["diff_ci"][1] < 0,
        }
    return verdicts


def strips(exp: Experiment, arms: list[Arm], clip: str, seed: int) -> Path:
    """One PNG: a row of frames 0, 4, ..., 16 per arm (2-D world: its 5 frames), labelled, same clip and seed."""
    import cv2

    from cvvae.video import read_video, write_image

    rows = []
    for arm in arms:
        if arm.real or arm.frozen:
            continue
        frames, _ = read_video(exp.out / "clips" / arm.name / f"{clip}_seed{seed}.mp4")
        frames = world_frames(frames, "2d") if arm.world == "cvvae" else frames
        strip = np.concatenate([cv2.resize(f, (128, 128), interpolation=cv2.INTER_NEAREST) for f in frames], 1)
        label = np.full((128, 150, 3), 255, np.uint8)
        cv2.putText(label, arm.name, (4, 70), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, strip], 1))
    return write_image(exp.out / f"strips_{clip}_seed{seed}.png", np.concatenate(rows, 0))


CURVE_MEASURES = ("warping_error", "motion", "group_seam", "group_pulse")


def checkpoint_arms(name: str, run: Path) -> list[Arm]:
    """One arm per checkpoint of a tuning run that carries an adapter (``NAME@STEP``), by step."""
    found = sorted(
        (int(p.name.split("-")[1]), p / "adapter") for p in Path(run).glob("checkpoint-*") if (p / "adapter").is_dir()
    )
    return [Arm(f"{name}@{step}", adapter=str(folder)) for step, folder in found]


def heldout_log(run: Path) -> list[dict]:
    path = Path(run) / "heldout.jsonl"
    if not path.is_file():
        return []
    by_step = {int(r["step"]): r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    return [by_step[k] for k in sorted(by_step)]


def plot_curves(out: Path, curves: dict[str, list[tuple[int, dict]]], losses: dict[str, list[dict]], start: dict):
    """``curves.png``: each measure (mean over held-out clips) and the held-out EDM loss over tuning steps;
    step 0 is the untuned nano SVD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*CURVE_MEASURES, "heldout_loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for name, points in curves.items():
        for ax, m in zip(axes, CURVE_MEASURES):
            xs = [0] + [step for step, _ in points]
            ys = [start[m]] + [row[m] for _, row in points]
            ax.plot(xs, ys, marker="o", label=name)
        loss = losses.get(name, [])
        axes[-1].plot([r["step"] for r in loss], [r["heldout_loss"] for r in loss], marker="o", label=name)
    for ax, m in zip(axes, panels):
        ax.set_title(LABELS.get(m, "held-out EDM loss (own world)"), fontsize=9)
        ax.set_xlabel("tuning step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_arms(adapters: list[str]) -> list[Arm]:
    from cvvae.errors import InputError

    arms = [
        Arm("2-D: real", world="2d", real=True),
        Arm("2-D: frozen", world="2d", frozen=True),
        Arm("2-D: nano SVD", world="2d"),
        Arm("real", real=True),
        Arm("real via nano CV-VAE", real=True, vae="nano"),
        Arm("frozen", frozen=True),
        Arm("untuned"),
    ]
    for item in adapters:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--adapter takes NAME=FOLDER, got {item!r}")
        arms.append(Arm(name, adapter=folder))
    return arms


def curves(exp: Experiment, items: list[str], untuned: list[dict]) -> Path:
    """Measure every checkpoint of the ``NAME=RUN`` tuning runs (seed 0) and plot them over steps."""
    from cvvae.errors import InputError

    runs = {}
    for item in items:
        name, sep, run = item.partition("=")
        if not sep or not Path(run).is_dir():
            raise InputError(f"--curve takes NAME=RUN_FOLDER (a tuning run), got {item!r}")
        runs[name] = Path(run)
    arms = [a for name, run in runs.items() for a in checkpoint_arms(name, run)]
    step_exp = Experiment(exp.heldout, exp.out, exp.svd, arms, [0], exp.steps, exp.resamples)
    rows = Runner(step_exp).run()
    points: dict[str, list[tuple[int, dict]]] = {}
    for arm in arms:
        name, step = arm.name.rsplit("@", 1)
        means = {m: float(np.mean(list(per_clip(rows[arm.name], m).values()))) for m in CURVE_MEASURES}
        points.setdefault(name, []).append((int(step), means))
    seed0 = [r for r in untuned if r["seed"] == 0]  # the same seed as the checkpoints'
    start = {m: float(np.mean(list(per_clip(seed0, m).values()))) for m in CURVE_MEASURES}
    return plot_curves(exp.out, points, {n: heldout_log(r) for n, r in runs.items()}, start)


def main(argv=None) -> int:
    from cvvae.commands import Parser, run_command

    p = Parser(prog="python -m finetune.experiment", description=__doc__.splitlines()[0])
    p.add_argument("--heldout", type=Path, required=True, help="folder of held-out clips (finetune.nano data)")
    p.add_argument("--svd", required=True, help="the nano SVD folder")
    p.add_argument("--adapter", action="append", default=[], help="NAME=FOLDER, one per tuned arm")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument(
        "--curve", action="append", default=[], metavar="NAME=RUN", help="a tuning run whose checkpoints to measure "
        "over steps (seed 0 of every held-out clip): curves.png",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = p.parse_args(argv)

    def run() -> int:
        if args.threads > 0:  # several runs sharing a CPU: one thread each avoids oversubscription
            import torch

            torch.set_num_threads(args.threads)
        arms = parse_arms(args.adapter)
        exp = Experiment(args.heldout, args.out, args.svd, arms, args.seeds, args.steps, args.resamples)
        rows = Runner(exp).run()
        summary = summarise(rows, "untuned", exp.resamples)
        tuned = [a.name for a in arms if a.adapter]
        vs_untuned = {a: summary[a] for a in tuned}
        control = "C" if "C" in rows else None
        vs_control = {}
        if control:
            vs_control = {
                a: v for a, v in summarise(rows, control, exp.resamples).items() if a in tuned and a != control
            }
        frechet = latent_frechet(exp, rows, arms, exp.resamples)
        verdicts = decide(vs_untuned, vs_control, summary["untuned"])
        text = markdown(summary, frechet, {"untuned": vs_untuned, **({control: vs_control} if control else {})})
        checked = gate(summary, frechet)
        text += "\nGate: " + json.dumps(checked) + "\n\nDecision rule: " + json.dumps(verdicts, indent=1) + "\n"
        from cvvae.outputs import write_json_atomic

        results = {
            "gate": checked,
            "summary": summary,
            "versus_control": vs_control,
            "latent_frechet": frechet,
            "verdicts": verdicts,
        }
        write_json_atomic(exp.out / "results.json", results)
        (exp.out / "results.md").write_text(text, encoding="utf-8")
        first = heldout_clips(exp.heldout)[0].stem
        strips(exp, arms, first, exp.seeds[0])
        if args.curve:
            print(f"curves: {curves(exp, args.curve, rows['untuned'])}")
        print(text)
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
