"""CV-VAE encode/decode speed, memory, FLOPs and numerical error (random weights: speed does not
depend on their values).

    python -m benchmarks.vae_speed --out benchmarks/results            # CUDA, full table
    python -m benchmarks.vae_speed --device cpu --small --repeats 1    # smoke test anywhere (seconds, fp32)
    python -m benchmarks.vae_speed --device cpu --release-repo CV-VAE  # side by side with the release, CPU

On a CPU (without ``--small`` or ``--cases``) it measures 33 frames at 64x64, full widths, in fp32 and, where the
CPU has bf16 instructions, in bf16 (our commands' default there), against the released code itself
(``--release-repo``, a clone of AILab-CVC/CV-VAE), or without one against our rewrite of its algorithm
(``release``), next to ours by default, whole and tiled (``--tiling`` to choose). ``x release`` compares rows of
one precision, ``x release default`` every row with the release at its own precision (fp32 on a CPU, fp16 on
CUDA): the "ours, default" against "release, default" figure.

``--tiling``: ``default`` is the model's own default (whole clip when it fits, else the cheapest tiling
that fits; the row records the choice and its memory estimate), ``off`` the whole clip, ``exact`` /
``pooled`` / ``tile-norm`` tiling forced with those statistics, ``release`` the released implementation's
algorithm at its defaults (16-frame chunks, 576 px tiles, overlap 0.2222; rewritten from its description in
``benchmarks.tiling_accuracy``) run on our model, ``release-code`` the released implementation itself
(``--release-repo DIR``: a local clone of https://github.com/AILab-CVC/CV-VAE; its ``CVVAEModel`` with the
released config and our weights, at its own defaults; see ``benchmarks.release_code``). Where xformers is not
installed the release's attention runs on an SDPA stand-in, and its rows say so (``attention``). Errors are
against our fp32 whole clip, times also relative to ``release-code`` when it runs, else to ``release``.

For each case (work, precision, tiling) it reports the median of ``--repeats`` synchronised runs
after a warm-up, frames per second, peak memory, FLOPs (torch FlopCounterMode, counted once) and
achieved TFLOP/s, and the error of the fast path against our fp32 path on the same input (max and
mean absolute error, PSNR between the two outputs). Writes ``vae_speed.json`` and ``vae_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import release_code
from cvvae import CVVAEModel
from cvvae.devices import DTYPES, default_dtype, default_vae_dtype
from cvvae.tiling import tiling_report

NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass
class Case:
    work: str  # "encode" or "decode"
    frames: int  # video frames (decode: produced frames)
    height: int
    width: int


FULL = [
    Case("encode", 17, 576, 1024),
    Case("decode", 17, 576, 1024),
    Case("encode", 97, 576, 1024),
    Case("decode", 97, 576, 1024),
    Case("encode", 385, 576, 1024),
    Case("decode", 385, 576, 1024),
]
SMALL = [Case("encode", 17, 64, 96), Case("decode", 17, 64, 96)]
CPU = [Case("encode", 33, 64, 64), Case("decode", 33, 64, 64)]  # the side by side with the release


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_input(case: Case, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if case.work == "encode":
        x = torch.rand(1, 3, case.frames, case.height, case.width, generator=g) * 2 - 1
    else:
        x = torch.randn(1, 4, 1 + (case.frames - 1) // 4, case.height // 8, case.width // 8, generator=g)
    return x.to(device)


def channels_last(model: CVVAEModel) -> CVVAEModel:
    """Conv weights in NDHWC order; cuDNN then keeps activations channels-last through the network."""
    for p in model.parameters():
        if p.dim() == 5:  # Conv3d kernels (the model also holds 2-D ones, which keep their layout)
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    for net in (model.encoder, model.decoder):
        net.register_forward_pre_hook(
            lambda _m, args: (args[0].contiguous(memory_format=torch.channels_last_3d), *args[1:])
        )
    return model


def compiled(model: CVVAEModel) -> CVVAEModel:
    model.encoder.compile(dynamic=False)
    model.decoder.compile(dynamic=False)
    return model


VARIANTS = {"eager": lambda m: m, "channels_last": channels_last, "compile": compiled}


def run_once(model: CVVAEModel, case: Case, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        if getattr(model, "release_algorithm", False):
            from benchmarks.tiling_accuracy import release_decode, release_encode

            args = (16, 576, 0.2222)  # the released config's en_de_n_frames_a_time, tile_spatial_size, ratio
            if case.work == "encode":
                return release_encode(model, model._pad(x), *args)
            return release_decode(model, x, *args)
        if case.work == "encode":
            if getattr(model, "release_code", False):  # the release does not pad: give it our padded clip
                x = CVVAEModel._pad(x)
            return model.encode(x).latent_dist.mean
        return model.decode(x).sample


def set_tiling(model: CVVAEModel, tiling: str) -> CVVAEModel:
    if tiling == "off":
        model.disable_tiling()
    elif tiling == "release":
        model.release_algorithm = True
    elif tiling != "default":
        model.enable_tiling(norm={"tile-norm": "tile"}.get(tiling, tiling))
    return model


def parse_case(text: str) -> list[Case]:
    """``FxHxW`` -> an encode and a decode case of F frames of H x W."""
    f, h, w = (int(v) for v in text.lower().split("x"))
    return [Case("encode", f, h, w), Case("decode", f, h, w)]


def time_once(model, x, case, device) -> tuple[float, float, torch.Tensor]:
    """One synchronised run: seconds, peak GiB (CUDA; nan on a CPU) and the output (on the host)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    y = run_once(model, case, x)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return seconds, peak, y.cpu()


def time_rows(runs: list, case, device, repeats, warmup=True) -> list[tuple[float, float, torch.Tensor, dict] | None]:
    """Time each run of ``runs`` (functions that build a ``(model, input)`` pair) on ``case``: the median
    seconds, the largest peak, the last output and the tiling report of each (what the model chose), or
    None where it ran out of memory.

    On a CPU all pairs are built first and timed round-robin (run ``r`` of each before run ``r + 1`` of any,
    starting one further each round), so the drift of a noisy machine falls on every row alike. On CUDA,
    where times are steady and a peak must not count other rows' models, one pair at a time.
    """
    if device != "cuda":
        built = [run() for run in runs]
        times = [[] for _ in runs]
        outputs = [None] * len(runs)
        for r in range(int(warmup) + repeats):
            for i in [(r + k) % len(runs) for k in range(len(runs))]:
                sec, _, outputs[i] = time_once(*built[i], case, device)
                if r >= int(warmup):
                    times[i].append(sec)
        reports = [tiling_report(model) for model, _ in built]
        return [(statistics.median(t), float("nan"), y, r) for t, y, r in zip(times, outputs, reports)]
    results = []
    for run in runs:
        model = x = None
        try:
            model, x = run()  # building counts FLOPs, which may run out of memory too
            timed = [time_once(model, x, case, device) for _ in range(int(warmup) + repeats)][int(warmup) :]
            seconds, peak = statistics.median(t for t, _, _ in timed), max(p for _, p, _ in timed)
            results.append((seconds, peak, timed[-1][2], tiling_report(model)))
        except torch.OutOfMemoryError:
            results.append(None)
        del model, x
        torch.cuda.empty_cache()
    return results


def build_run(source, tiling, name, variant, case, x, flops, device) -> tuple[CVVAEModel, torch.Tensor]:
    """A copy of ``source`` at ``name``'s dtype with ``tiling`` and ``variant`` applied, and its input; counts
    the FLOPs of ``(tiling, name)`` into ``flops`` once (the same for every variant: on the eager model)."""
    model = copy.deepcopy(source).to(device=device, dtype=DTYPES[name])
    model = model if tiling == "release-code" else set_tiling(model, tiling)
    if (tiling, name) not in flops:
        flops[tiling, name] = count_flops(model, case, x.to(DTYPES[name]))
    return VARIANTS[variant](model), x.to(DTYPES[name])


def count_flops(model, case, x) -> float:
    with FlopCounterMode(display=False) as counter:
        run_once(model, case, x)
    return counter.get_total_flops()


def default_dtypes(device: str, small: bool) -> list[str]:
    """CUDA: both half precisions. CPU: fp32 (the release's precision there), and bf16 where it is our commands'
    default (:func:`cvvae.devices.default_vae_dtype`), so that "ours, default" is timed as a user runs it."""
    if device == "cuda":
        return ["bf16", "fp16"]
    ours = NAMES[default_vae_dtype(device)]
    return ["fp32"] if small or ours == "fp32" else ["fp32", ours]


def errors(fast: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (fast.float() - ref.float()).abs()
    mse = diff.square().mean().item()
    peak = 2.0 if ref.abs().max() <= 1.5 else ref.float().abs().max().item() * 2
    return dict(
        max_abs_err=diff.max().item(),
        mean_abs_err=diff.mean().item(),
        psnr_vs_fp32=math.inf if mse == 0 else 10 * math.log10(peak**2 / mse),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="default: bf16 fp16 on CUDA; on a CPU fp32, and bf16 (our commands' default there) where the CPU has "
        "bf16 instructions",
    )
    parser.add_argument(
        "--tiling",
        nargs="+",
        default=None,
        help="default: default off on CUDA; on a CPU the side by side: release-code (with --release-repo, else "
        "release) default off exact",
        choices=["default", "off", "exact", "pooled", "tile-norm", "release", "release-code"],
    )
    parser.add_argument(
        "--release-repo",
        type=Path,
        default=None,
        metavar="DIR",
        help="a local clone of https://github.com/AILab-CVC/CV-VAE (for --tiling release-code)",
    )
    parser.add_argument("--cases", nargs="+", default=None, help="FxHxW clips instead of the built-in cases")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager"],
        choices=list(VARIANTS),
        help="optimisations to measure one by one: eager, channels_last (3-D), compile (torch.compile of the nets)",
    )
    parser.add_argument("--small", action="store_true", help="tiny sizes and a tiny model (smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the fp32 error measurement")
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up run (the FLOP count runs first anyway)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.tiling is None:
        on_cpu = args.device == "cpu" and not args.small
        release = "release-code" if args.release_repo else "release"
        args.tiling = [release, "default", "off", "exact"] if on_cpu else ["default", "off"]
    release_cls = None
    if "release-code" in args.tiling:
        if args.release_repo is None:
            parser.error("--tiling release-code needs --release-repo DIR (a local clone of AILab-CVC/CV-VAE)")
        if problem := release_code.check_repo(args.release_repo):
            parser.error(f"--release-repo: {problem}")
        try:
            release_cls, _ = release_code.release_class(args.release_repo)
        except Exception as e:  # any import failure of the clone (a missing dependency, a bad copy)
            parser.error(f"--release-repo: could not import {args.release_repo}/models: {type(e).__name__}: {e}")
        if args.small and not release_code.takes(release_cls, "norm_num_groups"):
            parser.error(
                "--tiling release-code cannot run with --small: the released CVVAEModel takes no norm_num_groups "
                "(its GroupNorms have 32 groups; the small model has 8); run it without --small"
            )
    elif args.release_repo is not None and release_code.check_repo(args.release_repo):
        parser.error(f"--release-repo: {release_code.check_repo(args.release_repo)}")
    args.dtypes = args.dtypes or default_dtypes(args.device, args.small)
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # no dtype-cast notices between rows
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config = dict(ch=32, ch_mult=(1, 1, 2, 2), norm_num_groups=8) if args.small else {}
    torch.manual_seed(0)
    base = CVVAEModel(**config).eval()
    release_base, attention = None, None
    if release_cls is not None:
        release_base, attention = release_code.build_release(args.release_repo, base, small=args.small)
        release_base.release_code = True
    args.attention = attention
    builtin = SMALL if args.small else CPU if args.device == "cpu" else FULL
    cases = [c for text in args.cases for c in parse_case(text)] if args.cases else builtin
    rows = []
    for case in cases:
        x = make_input(case, args.device)
        ref, flops, runs, case_rows = None, {}, [], []
        for tiling, name, variant in itertools.product(args.tiling, args.dtypes, args.variants):
            row = dict(asdict(case), dtype=name, tiling=tiling, variant=variant)
            if tiling == "release-code":
                row.update(attention=attention)
            source = release_base if tiling == "release-code" else base
            runs.append(functools.partial(build_run, source, tiling, name, variant, case, x, flops, args.device))
            case_rows.append(row)
        for row, timed in zip(case_rows, time_rows(runs, case, args.device, args.repeats, not args.no_warmup)):
            if timed is None:
                row.update(error="out of memory")
            else:
                sec, peak, y, report = timed
                report = report["encode" if case.work == "encode" else "decode"] or {}
                if "chosen" in report:  # the default's choice and its memory estimate
                    row.update(chosen=report["chosen"], estimate_gib=report["estimate_gib"], work_x=report["work"])
                tflop = flops[row["tiling"], row["dtype"]] / 1e12
                row.update(seconds=sec, fps=case.frames / sec, peak_gib=peak, tflop=tflop, tflops_per_s=tflop / sec)
                if not args.no_reference and case.frames <= 97:
                    if ref is None:
                        fp32 = copy.deepcopy(base).to(device=args.device)
                        fp32.disable_tiling()
                        ref = run_once(fp32, case, x.float()).cpu()
                        del fp32
                    row.update(errors(y, ref))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_reports(rows, args)


def write_reports(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    meta = dict(device=device, torch=torch.__version__, small=args.small, repeats=args.repeats)
    if getattr(args, "attention", None):
        meta.update(release_repo=str(args.release_repo), release_attention=args.attention)
    (args.out / "vae_speed.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    columns = [
        "work",
        "frames",
        "size",
        "dtype",
        "tiling",
        "variant",
        "s",
        "frames/s",
        "peak GiB",
        "x release",
        "x release default",
        "TFLOP",
        "GFLOP/s",
        "max err",
        "mean err",
        "PSNR vs fp32",
        "chosen (est. GiB)",
    ]
    release_dtype = NAMES[default_dtype(args.device)]  # fp16 on CUDA, fp32 on a CPU
    baseline = "release-code" if any(r["tiling"] == "release-code" and "seconds" in r for r in rows) else "release"
    release = {(r["work"], r["frames"], r["height"], r["width"], r["dtype"]): r.get("seconds") for r in rows
               if r["tiling"] == baseline}  # fmt: skip
    lines = [
        f"Device: {device}, torch {torch.__version__}, median of {args.repeats} runs after warm-up, "
        "rows of a clip timed round-robin.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    for r in rows:
        cells = [r["work"], r["frames"], f"{r['height']}x{r['width']}", r["dtype"], r["tiling"], r["variant"]]
        if "error" in r:
            cells += [r["error"]] + [""] * 11
        else:
            rel = release.get((r["work"], r["frames"], r["height"], r["width"], r["dtype"]))
            rel_default = release.get((r["work"], r["frames"], r["height"], r["width"], release_dtype))
            cells += [
                f"{r['seconds']:.2f}",
                f"{r['fps']:.1f}",
                f"{r['peak_gib']:.2f}",
                f"{r['seconds'] / rel:.2f}x" if rel else "",
                f"{r['seconds'] / rel_default:.2f}x" if rel_default else "",
                f"{r['tflop']:.2f}",
                f"{r['tflops_per_s'] * 1000:.0f}",
                f"{r.get('max_abs_err', float('nan')):.3g}",
                f"{r.get('mean_abs_err', float('nan')):.3g}",
                f"{r.get('psnr_vs_fp32', float('nan')):.1f}",
                f"{r['chosen']} ({r['estimate_gib']:.2f})" if "chosen" in r else "",
            ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    if any(release.values()):
        lines += [
            "",
            f"x release: time relative to the `{baseline}` row of the same clip and dtype; x release default: "
            f"relative to it at the release's own precision here ({release_dtype}).",
        ]
    if getattr(args, "attention", None):
        lines.append(
            f"release-code: the released implementation from {args.release_repo}, attention: {args.attention}."
        )
    (args.out / "vae_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
