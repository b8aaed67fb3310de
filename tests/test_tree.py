"""The tests' own layout (tests/README.md): the tests of ``<package>/<path>/<module>.py`` are in
``tests/<package>/<path>/test_<module>.py``, and only tests of the whole system sit at the top of tests/.

Every test folder is a package, so pytest imports ``tests/pipeline/bundle/test_build.py`` as
``tests.pipeline.test_bundle``; were ``tests/`` itself put on ``sys.path`` (a test folder without
``__init__.py`` does that), the folder ``tests/pipeline`` could stand in for the real ``pipeline``.
"""
from __future__ import annotations

from pathlib import Path

import exporters
import pipeline
import runtime
from tests.helpers import ROOT

TESTS = ROOT / "tests"
PACKAGES = (pipeline, exporters, runtime)
#: test files in a package's folder that are not named after one module of it, and why
NOT_ONE_MODULE = {"runtime/test_fuzz.py": "hypothesis-drawn inputs for Classifier, load_image and predict"}


def _test_files():
    return sorted(p.relative_to(TESTS) for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def test_the_packages_under_test_are_the_repositorys():
    for package in PACKAGES:
        assert Path(package.__file__).resolve() == ROOT / package.__name__ / "__init__.py", package.__file__


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []


def _module_of(rel: Path) -> Path | None:
    """The source file ``tests/<rel>`` is named after: ``test_<module>.py``, or ``test_<module>_<aspect>.py`` for
    a second file about one side of a large module (``test_init.py``: the package's ``__init__.py``)."""
    folder, words = ROOT.joinpath(*rel.parts[:-1]), rel.stem.removeprefix("test_").split("_")
    for n in range(len(words), 0, -1):
        name = "_".join(words[:n])
        source = folder / ("__init__.py" if name == "init" else f"{name}.py")
        if source.is_file():
            return source
    return None


def test_every_test_file_in_a_package_folder_is_named_after_its_module():
    """``tests/pipeline/stages/test_validate.py`` needs ``pipeline/stages/validate.py``; a renamed or removed
    module leaves its tests' file to be moved too."""
    orphans = [f"tests/{rel.as_posix()}" for rel in _test_files()
               if len(rel.parts) > 1 and rel.as_posix() not in NOT_ONE_MODULE and _module_of(rel) is None]
    assert orphans == []


def test_no_module_has_its_tests_at_the_top():
    """A top-level test file is about the whole system; one named after a module belongs in that module's folder."""
    modules = {p.stem for package in PACKAGES for p in (ROOT / package.__name__).rglob("*.py")}
    top = [rel.as_posix() for rel in _test_files() if len(rel.parts) == 1 and rel.stem.removeprefix("test_") in modules]
    assert top == []
