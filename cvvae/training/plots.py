"""``python -m cvvae.training plot``: compatibility over training steps, for several runs, as a PNG and a table.

Reads the ``compatibility.jsonl`` that a run writes every ``eval_every`` steps (the (a)-(d) measures
of :mod:`cvvae.training.evaluate` on held-out windows).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

LOG_NAME = "compatibility.jsonl"
# (key in a log line, label): PSNR of each reconstruction path
PANELS = (
    ("a_3d_recon", "(a) 3-D VAE reconstruction"),
    ("b_2d_dec_on_3d_latents", "(b) frozen 2-D decoder on 3-D latents"),
    ("c_3d_dec_on_2d_latents", "(c) 3-D decoder on 2-D latents"),
)
REFERENCE = "ref_2d_vae_recon"


def read_log(folder: str | Path) -> list[dict]:
    """The evaluations of one run, by step (the last one wins when a resumed run repeated a step)."""
    path = Path(folder) / LOG_NAME
    if not path.is_file():
        raise InputError(f"{path} does not exist: train with eval_every > 0 to log compatibility")
    by_step = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            by_step[int(entry["step"])] = entry
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}, line {n}: not a compatibility record ({err})") from None
    if not by_step:
        raise InputError(f"{path} holds no evaluation yet")
    return [by_step[s] for s in sorted(by_step)]


def compatibility_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: one row per run and step, PSNR (dB) of (a)-(c), the 2-D VAE's own, and (d) Fréchet."""
    columns = ["run", "step", "(a) 3D recon", "(b) 2D dec on 3D latents", "(c) 3D dec on 2D latents"]
    columns += ["2D VAE own", "(d) Fréchet"]
    rows = ["| " + " | ".join(columns) + " |\n", "|---" * len(columns) + "|\n"]
    for name, entries in runs.items():
        for e in entries:
            psnr = [f"{e[key]['psnr']:.2f}" for key, _ in PANELS]
            rows.append(
                f"| {name} | {e['step']} | {' | '.join(psnr)} | {e[REFERENCE]['psnr']:.2f} | {e['frechet']:.3f} |\n"
            )
    return "".join(rows)


def plot_compatibility(runs: dict[str, list[dict]], out: str | Path) -> Path:
    """PSNR of (a)-(c) and the Fréchet distance (d) against steps, one line per run; written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4), constrained_layout=True)
    for name, entries in runs.items():
        steps = [e["step"] for e in entries]
        for ax, (key, _) in zip(axes, PANELS, strict=False):
            ax.plot(steps, [e[key]["psnr"] for e in entries], marker="o", label=name)
        axes[3].plot(steps, [e["frechet"] for e in entries], marker="o", label=name)
    reference = next(iter(runs.values()))[0][REFERENCE]["psnr"]
    for ax, (_, title) in zip(axes, PANELS, strict=False):
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="2-D VAE's own reconstruction")
        ax.set(title=title, xlabel="training step", ylabel="PSNR (dB), held-out")
    axes[3].set(title="(d) Fréchet distance, 3-D vs 2-D latents", xlabel="training step", ylabel="lower = closer")
    axes[1].legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    from ..commands import Parser

    p = Parser(prog="python -m cvvae.training plot", description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER", help="a training output_dir")
    p.add_argument("--out", required=True, help="PNG to write; the markdown table goes beside it (.md)")
    args = p.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            raise InputError(f"--run {item!r} must be NAME=FOLDER")
        runs[name] = read_log(folder)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must end in .png, got {out.name}")
    plot_compatibility(runs, out)
    table = compatibility_table(runs)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
