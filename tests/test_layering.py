"""The import layering: no cycles among module-level imports, and lower layers never import higher ones."""

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


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (imports inside functions are deliberate lazy ones)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
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
    return {name: {m for m in top_level_imports(p) if m in names and m != name} for name, p in names.items()}


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
            if not name.startswith(prefix) or (prefix == "cvvae" and name.startswith(tuple(ALLOWED))):
                continue
            bad = sorted(t for t in targets if t.startswith(banned))
            assert not bad, f"{name} imports {bad}"
