"""The layering docs/architecture.md describes, checked on the source: no import circles in
the package, the product never imports its test oracle, no public function shadows a module
of the package, one version, and the package marks itself typed."""
from __future__ import annotations

import ast
import importlib.metadata
import pkgutil
import re
from pathlib import Path

import noether_core as nc

PKG = Path(nc.__file__).parent


def _module_imports() -> dict[str, set[str]]:
    """Package-internal imports of every facade module (module-level and in functions)."""
    graph = {}
    for path in sorted(PKG.glob("*.py")):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:                                   # from .x import y
                    deps.add(node.module.split(".")[0])
                else:                                             # from . import x, y
                    deps.update(a.name for a in node.names)
        graph[name] = deps - {name}
    return graph


def test_no_import_circles():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(mod, path):
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if dep not in graph:
                continue                                          # _kernels, a package
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path + [mod, dep]))
            if dep not in state:
                visit(dep, path + [mod])
        state[mod] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [])


def test_product_never_imports_the_oracle():
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "noether_ref" for n in names), path


def test_kernels_are_reached_through_the_bridge_only():
    """No facade module but the bridge imports a compiled kernel module."""
    for path in PKG.glob("*.py"):
        if path.name == "_bridge.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert not (node.module or "").startswith("_kernels"), (
                    f"{path.name} imports from .{node.module}: go through _bridge")


def test_no_public_name_shadows_a_module():
    modules = {m.name for m in pkgutil.iter_modules([str(PKG)])}
    for name in nc.__all__:
        obj = getattr(nc, name)
        if name in modules:
            assert getattr(obj, "__name__", None) == f"noether_core.{name}", (
                f"nc.{name} is {obj!r}, which hides the module noether_core.{name}")


def test_version_is_single_sourced():
    """One version string: pyproject.toml takes the metadata's version from
    noether_core/_version.py, which the package re-exports; when the package is installed
    (README's command), the installed metadata says the same.  A source checkout on
    PYTHONPATH has no metadata, an installed wheel no pyproject.toml: each is checked
    where it exists, and one of them must."""
    from noether_core import _version

    assert nc.__version__ is _version.__version__
    checked = 0
    pyproject = PKG.parent / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text()
        assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', text, re.M)
        assert re.search(r'^version\s*=\s*\{\s*attr\s*=\s*"noether_core\._version\.__version__"'
                         r'\s*\}', text, re.M)
        checked += 1
    try:
        installed = importlib.metadata.version("noether_core")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None:
        assert nc.__version__ == installed
        checked += 1
    assert checked


def test_package_is_marked_typed():
    assert (PKG / "py.typed").is_file()
