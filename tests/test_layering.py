"""The import layering: no import cycles and lower layers never import higher ones, counting every import
(inside functions too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("cvvae", "finetune", "app")
# a module whose name starts with the key must not import a module whose name starts with a value
FORBIDDEN = {
    "cvvae": ("cvvae.pipelines", "cvvae.training", "finetune", "app"),
    "cvvae.pipelines": ("cvvae.training", "finetune", "app"),
    "cvvae.training": ("cvvae.pipelines", "finetune", "app"),
    "finetune": ("app",),
}
ALLOWED = {"cvvae.pipelines", "cvvae.training"}  # these packages are the higher layers themselves
FRONT_ENDS = ("cvvae.cli", "cvvae.__main__")  # the library's command line may use every library layer


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    names = {module_name(p): p for p in files}
    return {name: {m for m in imports(p) if m in names and m != name} for name, p in names.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    assert len(edges) > 40
    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_lower_layers_never_import_higher_ones():
    for name, targets in graph().items():
        for prefix, banned in FORBIDDEN.items():
            if not name.startswith(prefix) or (prefix == "cvvae" and name.startswith((*ALLOWED, *FRONT_ENDS))):
                continue
            bad = sorted(t for t in targets if t.startswith(banned))
            assert not bad, f"{name} imports {bad}"


def _run_python(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout


def test_model_core_imports_no_file_io():
    out = _run_python("import sys; from cvvae import CVVAEModel; print(sorted({'av', 'cv2'} & set(sys.modules)))")
    assert out.strip() == "[]"


def test_command_line_parses_without_torch():
    code = (
        "import sys; from cvvae.cli import build_parser; build_parser().parse_args(['generate', 'i2v', "
        "'--image', 'x.png', '--out', 'o.mp4']); print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    assert _run_python(code).strip() == "[]"


def test_bad_values_and_missing_models_are_refused_before_torch_is_imported(tmp_path):
    """The front door answers at once: a value out of range, and an offline model that is not cached."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from cvvae.cli import main; code = main(sys.argv[1:]); "
        "print(code, sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    base = ["generate", "i2v", "--image", "assets/examples/cat.jpg", "--out", str(tmp_path / "o.mp4")]
    for extra, message in (
        (["--num-latent-frames", "999"], "num_latent_frames must be"),
        (["--preset", "svd-xt"], "cannot be loaded here"),
    ):
        run = subprocess.run([sys.executable, "-c", code, *base, *extra], capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=60)  # fmt: skip
        assert run.stdout.strip().splitlines()[-1] == "2 []" and message in run.stderr, (extra, run.stderr)
