"""Import direction: ``runtime/`` <- ``exporters/`` <- ``pipeline/``, never back up.

``runtime/`` is what ships to a device, so it imports neither of the others; ``exporters/`` are library
functions that take paths and arrays, so they import nothing from ``pipeline/``. Every import counts,
including those inside functions (where this code base puts its lazy imports) and relative ones.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"exporters": ("pipeline",), "runtime": ("pipeline", "exporters")}


def _imported(node: ast.AST, module: str) -> list[str]:
    """The absolute module names one node imports; ``module`` is the dotted name of the file it sits in."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            return [node.module or ""]
        package = module.split(".")[: -node.level]  # `from ..x import y` in a.b.c -> a.x
        return [".".join(package + ([node.module] if node.module else []))]
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
        return [node.args[0].value]  # importlib.import_module("pipeline.x") is an import too
    return []


def forbidden_imports(root: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for every import in ``root/package`` of a module under ``forbidden``."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        hits = [(node.lineno, name) for node in ast.walk(tree) for name in _imported(node, module)
                if name.split(".")[0] in forbidden]
        found += [f"{rel}:{line} imports {name}" for line, name in sorted(hits)]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package):
    assert (ROOT / package / "__init__.py").is_file()  # a renamed folder must not make this pass vacuously
    assert forbidden_imports(ROOT, package, FORBIDDEN[package]) == []


def test_the_checker_finds_every_kind_of_import(tmp_path):
    """Top-level, inside a function, relative, ``from`` and ``importlib``: each is reported with its line."""
    pkg = tmp_path / "exporters"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "m.py").write_text(
        "import os\n"
        "import pipeline.layout\n"
        "def f():\n"
        "    from pipeline.layout import atomic_path\n"
        "    from ...pipeline import errors\n"
        "    from . import fine\n"
        "    import importlib\n"
        "    return importlib.import_module('pipeline.config')\n"
        "from runtime import metadata\n")
    assert forbidden_imports(tmp_path, "exporters", ("pipeline",)) == [
        "exporters/sub/m.py:2 imports pipeline.layout",
        "exporters/sub/m.py:4 imports pipeline.layout",
        "exporters/sub/m.py:5 imports pipeline",
        "exporters/sub/m.py:8 imports pipeline.config",
    ]
