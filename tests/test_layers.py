"""The folder layout is the architecture: the package root holds only the layers named here,
imports point down the layers of DESIGN.md, only the napari plugin (``plugin/``) imports napari,
Qt or magicgui, and nothing has an import cycle. Read from the source (module-level imports,
not the ones inside functions or under TYPE_CHECKING, which never run at import time — except
where a test says it reads every import)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_zshard

ROOT = Path(napari_zshard.__file__).parent
#: what each layer (a folder or a module at the package root) may import from the project
#: (besides itself) when it is imported; the package root holds exactly these and ``testing/``
ALLOWED = {
    "errors": set(),
    "keys": {"errors"},
    "sample": {"errors", "keys", "store", "engine", "ome"},
    "ome": {"errors", "keys"},
    "store": {"errors", "keys"},
    "engine": {"errors", "keys", "store"},
    "multiscale": {"errors", "keys", "store", "engine", "ome"},
    "survey": {"errors", "keys", "store", "engine", "ome", "multiscale", "reshard",
               "annotations"},
    "reshard": {"errors", "keys", "store", "engine", "ome", "multiscale"},
    "annotations": {"errors", "keys", "store", "engine", "ome", "multiscale"},
    # the two front ends: each may use the whole library, neither the other (the CLI opens
    # napari only when ``zshard view`` runs: see LAZY_PLUGIN_IMPORTS)
    "cli": {"errors", "keys", "sample", "store", "engine", "ome", "multiscale", "survey",
            "reshard", "annotations"},
    "plugin": {"errors", "keys", "sample", "store", "engine", "ome", "multiscale", "survey",
               "reshard", "annotations"},
}
#: top-level modules of napari and the GUI toolkits it brings; only ``plugin/`` imports them
GUI_MODULES = {"napari", "napari_builtins", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
               "magicgui", "vispy", "superqt", "app_model", "npe2"}
#: the only imports of ``plugin/`` from outside it, both inside a function: the notebook helpers
#: ``napari_zshard.view_path``/``refresh_layers`` and ``zshard view``
LAZY_PLUGIN_IMPORTS = {("", "plugin.viewer"), ("cli.zshard", "plugin.viewer")}


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
    assert import_cycles(deps) == []


def import_cycles(deps: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of the module graph ``deps`` meets, as ``a -> b -> a``."""
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
    return cycles


def every_import(path: Path, modules: set[str]) -> set[str]:
    """Everything ``path`` imports, at any depth (in functions, under TYPE_CHECKING too): project
    modules as dotted names below the root, other modules by their top-level name."""
    me = module_name(path).split(".") if module_name(path) else []
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                found.add(rest if top == "napari_zshard" else top)
        elif isinstance(node, ast.ImportFrom):
            if not node.level and not (node.module or "").startswith("napari_zshard"):
                found.add((node.module or "").split(".")[0])
                continue
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module.removeprefix("napari_zshard").lstrip(".")
            for alias in node.names:  # "from .plugin import viewer" imports plugin.viewer
                sub = f"{target}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else target)
    return {f for f in found if f}


def test_the_package_root_holds_only_the_layers():
    """A module or folder at the root is a layer with its import rules above; front ends live
    in ``cli/`` and ``plugin/``, so napari adapters and commands cannot pile up at the root."""
    entries = {p.name.removesuffix(".py") for p in ROOT.iterdir()
               if p.name not in ("__init__.py", "__pycache__", "napari.yaml")
               and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert entries == set(ALLOWED) | {"testing"}
    strays = [p.name for p in ROOT.iterdir() if p.name not in ("__pycache__", "napari.yaml")
              and not p.name.endswith(".py") and not (p / "__init__.py").exists()]
    assert strays == []


def test_no_two_names_in_a_folder_mean_the_same_thing():
    """``commands/`` beside ``_commands.py``, ``reader.py`` beside ``readers/``: one concept,
    one place."""
    clashes = []
    for folder in [ROOT, *(p for p in ROOT.rglob("*") if (p / "__init__.py").exists())]:
        seen: dict[str, str] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("__") or not (
                    entry.suffix == ".py" or (entry / "__init__.py").exists()):
                continue
            concept = entry.name.removesuffix(".py").lstrip("_").removesuffix("s")
            if concept in seen:
                clashes.append(f"{folder.relative_to(ROOT.parent)}: {seen[concept]} and "
                               f"{entry.name}")
            seen[concept] = entry.name
    assert clashes == []


def test_only_the_plugin_imports_napari_qt_or_magicgui():
    """Not even inside a function: the library serves notebooks, the CLI and dask workers
    without napari installed, and ``zshard view`` reaches napari through ``plugin/``."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    eager = graph()
    wrong = []
    for name, path in sorted(modules.items()):
        if name.split(".")[0] == "plugin":
            continue
        for target in sorted(every_import(path, set(modules))):
            lazy_plugin = (name, target) in LAZY_PLUGIN_IMPORTS and target not in eager[name]
            if target in GUI_MODULES or (target.split(".")[0] == "plugin" and not lazy_plugin):
                wrong.append(f"{name or '__init__'} imports {target}")
    assert wrong == []


def test_the_package_has_no_import_cycle():
    assert import_cycles(graph()) == []
