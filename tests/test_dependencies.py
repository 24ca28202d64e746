"""What pyproject.toml declares is what the package imports, and nothing it needs is copyleft.

A dependency imported but not declared works on the developer's machine (something else pulled it
in) and breaks a user's install; one declared but never imported is a download and a licence for
nothing; a copyleft (GPL/LGPL) library in the core tree does not belong in a BSD-3 package.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_zshard"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies(req: Requirement, extras=("",)) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)


CORE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs]
          for name, reqs in PROJECT["optional-dependencies"].items()}
DECLARED = {normalized(r.name) for r in CORE} | {
    normalized(r.name) for reqs in EXTRAS.values() for r in reqs}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(
        node.test)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported when the module is) of every absolute import in ``path``;
    ``if TYPE_CHECKING:`` blocks are left out."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], at_import) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], at_import))
            inside = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, at_import and not inside)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """distribution → [(module file, imported at module import time)]."""
    owners = md.packages_distributions()
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module, at_import in imports(path):
            if module in sys.stdlib_module_names or module in ("napari_zshard", "tomli"):
                continue
            for dist in owners.get(module, [f"<no installed distribution has {module!r}>"]):
                out.setdefault(normalized(dist), []).append((rel, at_import))
    return out


def test_every_imported_library_is_declared():
    undeclared = {dist: files for dist, files in third_party_imports().items()
                  if dist not in DECLARED}
    assert undeclared == {}


def is_core(rel: str) -> bool:
    """Neither the napari plugin (``plugin/``: the napari extra) nor ``testing/``."""
    parts = Path(rel).parts
    return parts[1] != "plugin" and "testing" not in parts


def test_what_the_core_imports_when_it_is_imported_is_a_core_dependency():
    core = {normalized(r.name) for r in CORE}
    eager = {dist: sorted({f for f, at_import in files if at_import and is_core(f)})
             for dist, files in third_party_imports().items() if dist not in core}
    assert {dist: files for dist, files in eager.items() if files} == {}


def test_every_core_dependency_is_used():
    used = set(third_party_imports())
    unused = [str(r) for r in CORE if normalized(r.name) not in used
              and normalized(r.name) != "tomli"]  # tomli: imported as a fallback for tomllib
    assert unused == []


def test_tomli_is_declared_where_tomllib_is_missing():
    (tomli,) = [r for r in CORE if normalized(r.name) == "tomli"]
    assert tomli.marker is not None
    assert tomli.marker.evaluate({"python_version": "3.10", "extra": ""})
    assert not tomli.marker.evaluate({"python_version": "3.11", "extra": ""})


def core_tree() -> dict[str, str]:
    """Every installed distribution the core dependencies pull in → its licence."""
    licences: dict[str, str] = {}
    todo = [(r, ("",)) for r in CORE if applies(r)]
    while todo:
        req, _ = todo.pop()
        name = normalized(req.name)
        if name in licences:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # not installed here: test_every_imported_library_is_declared speaks for it
        meta = dist.metadata
        classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        licences[name] = " | ".join(
            [meta.get("License-Expression") or meta.get("License") or "", *classifiers])
        extras = ("", *req.extras)
        todo.extend((sub, extras) for sub in map(Requirement, dist.requires or [])
                    if applies(sub, extras))
    return licences


def test_no_copyleft_library_in_the_core_dependency_tree():
    tree = core_tree()
    assert "google-crc32c" in tree and "zarr" in tree
    copyleft = {name: lic for name, lic in tree.items() if re.search(r"\bL?GPL|GNU", lic)}
    assert copyleft == {}


def test_the_napari_extra_leaves_the_qt_binding_to_the_user():
    napari = {normalized(r.name): r for r in EXTRAS["napari"]}
    assert "napari" in napari and napari["napari"].extras == set()
    assert not {"pyqt5", "pyqt6", "pyside2", "pyside6"} & set(napari)
    # the tests still need one
    assert "pyqt6" in {normalized(r.name) for r in EXTRAS["test"]}


@pytest.mark.parametrize("data", [
    b"123456789",
    bytearray(b"123456789"),
    memoryview(b"x123456789x")[1:-1],
])
def test_the_checksum_is_crc32c_for_any_buffer(data):
    from napari_zshard.engine.checksum import crc32c

    assert crc32c(data) == 0xE3069283  # the CRC-32C check value of "123456789"


def test_the_checksum_of_a_large_view_matches_the_one_of_its_bytes():
    import numpy as np

    from napari_zshard.engine.checksum import crc32c

    data = np.random.default_rng(0).integers(0, 2**16, size=(64, 64, 130), dtype="<u2")
    assert crc32c(data) == crc32c(data.tobytes()) == crc32c(memoryview(data.tobytes()))
