"""The report of a comparison: markdown and JSON tables, a bar plot, and a labelled grid video per clip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .outputs import atomic_path, write_json_atomic

QUALITY = ("psnr", "ssim", "lpips", "warping_error", "frame_difference")
REFERENCE = ("input_warping_error", "input_frame_difference", "motion_px")
COST = ("encode_s", "decode_s", "encode_peak_mib", "decode_peak_mib")
RANDOM_NOTE = "RANDOM weights: mechanics only, says nothing of the real model"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _sd_mean(rows: list[dict], part: str, key: str) -> float | None:
    return _mean(r["sd"][part][key] for r in rows if isinstance(r.get("sd"), dict) and part in r["sd"])


def summarize(rows: list[dict], specs: list[str], frame_counts) -> list[dict]:
    """One entry per (VAE, frame count): means over the clips that ran, and how many failed."""
    out = []
    for spec in specs:
        for n in frame_counts:
            group = [r for r in rows if r["vae"] == spec and r["frames"] == n]
            ok = [r for r in group if r["status"] == "ok"]
            entry = {"vae": spec, "frames": n, "clips": len(ok), "failed": len(group) - len(ok)}
            entry["errors"] = sorted({r["error"] for r in group if r["status"] != "ok"})
            if ok:
                first = ok[0]
                for key in ("name", "class", "random_weights", "latent_shape", "latent_channels", "compression"):
                    entry[key] = first[key]
                entry |= {k: first[k] for k in ("parameters", "dtype", "device", "memory_measure", "tiling")}
                entry |= {k: _mean(r.get(k) for r in ok) for k in QUALITY + REFERENCE + COST}
                sd = [r for r in ok if isinstance(r.get("sd"), dict)]
                if sd:
                    entry["sd"] = {
                        "image_vae": sd[0]["sd"]["image_vae"],
                        "error": next((r["sd"]["error"] for r in sd if "error" in r["sd"]), None),
                    }
                    for part in ("image_decoder_on_video_latents", "video_decoder_on_image_latents", "image_vae_own"):
                        entry["sd"][part] = {k: _sd_mean(sd, part, k) for k in ("psnr", "ssim", "lpips")}
            out.append(entry)
    return out


def _f(value, digits: int = 2, scale: float = 1.0) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def _label(entry: dict) -> str:
    name = entry.get("name") or entry["vae"]
    return f"{name} †" if entry.get("random_weights") else name


def markdown(summary: list[dict], protocol, lpips_note: str, clips: list[str]) -> str:
    """The tables a person reads: quality (with the input's flicker and motion beside), SD compatibility, cost."""
    size = f"{protocol.size[0]}x{protocol.size[1]}" if protocol.size else "native size"
    tiling = "each VAE's own tiling" if protocol.tiling else "whole clips"
    lines = [
        "# Video VAE comparison",
        "",
        f"Clips: {', '.join(Path(c).name for c in clips)}; first {' and '.join(map(str, protocol.frames))} frames "
        f"from frame {protocol.start} (stride {protocol.stride}), {size} ({protocol.resize}); posterior "
        f"{'sample' if protocol.sample else 'mode'}; {tiling}; "
        f"device {protocol.device}. Means over clips of per-frame means. LPIPS: {lpips_note}.",
        "",
        "| VAE | frames | clips | PSNR dB | SSIM | LPIPS | warping error ×1000 (input) | frame diff ×100 (input) "
        "| motion px/frame |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        if not e["clips"]:
            continue
        flicker = (
            f"{_f(e['warping_error'], 2, 1e3)} ({_f(e['input_warping_error'], 2, 1e3)}) "
            f"| {_f(e['frame_difference'], 2, 1e2)} ({_f(e['input_frame_difference'], 2, 1e2)})"
        )
        lines.append(
            f"| {_label(e)} | {e['frames']} | {e['clips']} | {_f(e['psnr'])} | {_f(e['ssim'], 3)} "
            f"| {_f(e['lpips'], 3)} | {flicker} | {_f(e['motion_px'])} |"
        )
    lines += _sd_table(summary) + _cost_table(summary) + _error_table(summary)
    if any(e.get("random_weights") for e in summary):
        lines += ["", f"† {RANDOM_NOTE}."]
    return "\n".join(lines) + "\n"


def _sd_table(summary: list[dict]) -> list[str]:
    rows = [e for e in summary if e.get("sd")]
    if not rows:
        return []
    lines = [
        "",
        "SD compatibility: the video latents decoded frame by frame by the image VAE (against the frames they "
        "stand for: 0, f, 2f, ...), and the image VAE's latents of those frames decoded by the video decoder "
        "(against the whole clip). PSNR dB / SSIM.",
        "",
        "| VAE | frames | image VAE | image decoder on video latents | video decoder on image latents "
        "| image VAE itself (same frames) |",
        "|---|---|---|---|---|---|",
    ]
    for e in rows:
        sd = e["sd"]
        cells = [f"{_f(sd[p]['psnr'])} / {_f(sd[p]['ssim'], 3)}" for p in (
            "image_decoder_on_video_latents", "video_decoder_on_image_latents", "image_vae_own")]  # fmt: skip
        if sd.get("error") and sd["image_decoder_on_video_latents"]["psnr"] is None:
            cells = [f"failed: {sd['error']}", "—", "—"]
        lines.append(f"| {_label(e)} | {e['frames']} | {sd['image_vae']} | {' | '.join(cells)} |")
    return lines


def _cost_table(summary: list[dict]) -> list[str]:
    lines = [
        "",
        "| VAE | frames | latent C×n×h×w | compression | parameters (M) | dtype | encode s | decode s "
        "| peak MiB encode / decode |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        if not e["clips"]:
            continue
        shape = "×".join(map(str, e["latent_shape"]))
        lines.append(
            f"| {_label(e)} | {e['frames']} | {shape} | {e['compression']:.0f} | {_f(e['parameters'], 2, 1e-6)} "
            f"| {e['dtype']} | {_f(e['encode_s'], 3)} | {_f(e['decode_s'], 3)} "
            f"| {_f(e['encode_peak_mib'], 0)} / {_f(e['decode_peak_mib'], 0)} |"
        )
    kinds = sorted({e["memory_measure"] for e in summary if e.get("memory_measure")})
    if kinds:
        lines += ["", f"Peak memory: {', '.join(kinds)} above the level before the call; seconds after a warm-up."]
    return lines


def _error_table(summary: list[dict]) -> list[str]:
    failed = [e for e in summary if e["failed"]]
    if not failed:
        return []
    lines = ["", "Failed (these rows are retried when the comparison is run again):", ""]
    lines += ["| VAE | frames | clips | error |", "|---|---|---|---|"]
    lines += [f"| {e['vae']} | {e['frames']} | {e['failed']} | {'; '.join(e['errors'])} |" for e in failed]
    return lines


def plot(summary: list[dict], path: Path) -> Path | None:
    """Bars of quality and cost per VAE (one colour per frame count) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summary if e["clips"]]
    if not entries:
        return None
    names = list(dict.fromkeys(_label(e) for e in entries))
    counts = sorted({e["frames"] for e in entries})
    panels = [("psnr", "PSNR dB ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("warping_error", "warping error ↓")]
    panels += [("encode_s", "encode s ↓"), ("decode_s", "decode s ↓")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 7), layout="constrained")
    width = 0.8 / len(counts)
    for ax, (key, title) in zip(axes.flat, panels):
        for j, n in enumerate(counts):
            by_name = {_label(e): e[key] for e in entries if e["frames"] == n}
            values = [by_name.get(name) for name in names]
            xs = np.arange(len(names)) + (j - (len(counts) - 1) / 2) * width
            ax.bar(xs, [np.nan if v is None else v for v in values], width, label=f"{n} frames")
        if key == "warping_error":
            ref = [e["input_warping_error"] for e in entries]
            ax.axhline(np.mean(ref), color="grey", ls="--", lw=1, label="input's own")
        ax.set_title(title if any(e[key] is not None for e in entries) else f"{title} (not measured)")
        ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes.flat[3].get_legend_handles_labels()  # the flicker panel also has the input's line
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9)
    if any(e.get("random_weights") for e in entries):
        fig.suptitle(f"† {RANDOM_NOTE}", fontsize=9, color="firebrick")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _banner(frames: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    """``frames`` with a black strip on top carrying ``text`` (shrunk to fit the width)."""
    import cv2

    t, h, w = frames.shape[:3]
    strip = np.zeros((height, w, 3), np.uint8)
    scale = 0.45
    while scale > 0.2 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > w - 6:
        scale -= 0.05
    cv2.putText(strip, text, (3, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([np.broadcast_to(strip, (t, height, w, 3)), frames], axis=1)


def grid(clip, rows: list[dict], out: Path) -> np.ndarray:
    """Input beside every VAE's reconstruction (read back from ``recon/``), each labelled; a failed VAE is grey."""
    from .video import read_video

    x = clip.frames[: rows[0]["frames"]] if rows else clip.frames
    panels = [_banner(x, "input")]
    for row in rows:
        label = row.get("name") or row["vae"]
        if row["status"] == "ok":
            recon = read_video(out / row["recon"])[0][: len(x)]
            mark = " †" if row.get("random_weights") else ""
            panels.append(_banner(recon, f"{label}{mark} {row['psnr']:.1f} dB"))
        else:
            panels.append(_banner(np.full_like(x, 96), f"{label}: failed"))
    return np.concatenate(panels, axis=2)


def write_report(store, clips, specs: list[str], protocol, lpips_note: str) -> dict:
    """``comparison.md``, ``comparison.json``, ``comparison.png`` and ``grid_<clip>.mp4`` (+ a middle-frame PNG)."""
    from .outputs import versions
    from .video import write_image, write_video_and_sidecar

    keys = {c.path for c in clips}
    rows = [r for r in store.rows() if r["vae"] in specs and r["frames"] in protocol.frames and r["clip_path"] in keys]
    rows.sort(key=lambda r: (specs.index(r["vae"]), r["clip_path"], r["frames"]))
    summary = summarize(rows, specs, protocol.frames)
    out = store.out
    md = markdown(summary, protocol, lpips_note, [c.path for c in clips])
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    data = {"protocol": protocol.settings() | {"frames": list(protocol.frames)}, "lpips": lpips_note}
    write_json_atomic(out / "comparison.json", data | {"summary": summary, "rows": rows, "versions": versions()})
    files = {"markdown": str(out / "comparison.md"), "json": str(out / "comparison.json"), "grids": []}
    png = plot(summary, out / "comparison.png")
    files["plot"] = str(png) if png else None
    longest = max(protocol.frames)
    for clip in clips:
        mine = [r for r in rows if r["clip_path"] == clip.path and r["frames"] == longest]
        if not mine:
            continue
        frames = grid(clip, mine, out)
        name = out / f"grid_{clip.key}.mp4"
        meta = {"kind": "compare-grid", "input": clip.path, "panels": ["input"] + [r["vae"] for r in mine]}
        write_video_and_sidecar(name, frames, clip.fps, meta | {"protocol": data["protocol"]})
        write_image(name.with_suffix(".png"), frames[len(frames) // 2])
        files["grids"].append(str(name))
    return {"summary": summary, "files": files, "markdown": md}
