"""The folder layout is the architecture: imports point down the layers of DESIGN.md, and the
engine has no import cycle. Read from the source (module-level imports, not the ones inside
functions or under TYPE_CHECKING, which never run at import time)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_zshard

ROOT = Path(napari_zshard.__file__).parent
#: what each core package may import from the project (besides itself)
ALLOWED = {
    "ome": {"errors", "keys"},
    "store": {"errors", "keys"},
    "engine": {"errors", "keys", "store"},
    "multiscale": {"errors", "keys", "store", "engine", "ome"},
    "survey": {"errors", "keys", "store", "engine", "ome", "multiscale", "reshard",
               "annotations"},
    "reshard": {"errors", "keys", "store", "engine", "ome", "multiscale"},
    "annotations": {"errors", "keys", "store", "engine", "ome", "multiscale"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def top_level_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports when it is imported, as dotted names below the root."""
    tree = ast.parse(path.read_text())
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target] if node.module else [[*target, a.name] for a in node.names]
            found.update(".".join(n) for n in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "napari_zshard"):
            found.add(node.module.removeprefix("napari_zshard").lstrip("."))
    return {f for f in found if f}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        deps = set()
        for target in top_level_imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        out[name] = deps
    return out


def test_core_packages_import_only_the_layers_below_them():
    wrong = []
    for name, deps in graph().items():
        layer = name.split(".")[0]
        if layer not in ALLOWED:
            continue
        for dep in deps:
            if dep.split(".")[0] not in ALLOWED[layer] | {layer}:
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_the_engine_has_no_import_cycle():
    deps = {n: {d for d in ds if d.startswith("engine")} for n, ds in graph().items()
            if n.startswith("engine")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(deps.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(deps):
        if node not in state:
            visit(node, [node])
    assert cycles == []
