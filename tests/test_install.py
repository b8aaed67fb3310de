"""The installs of issue 24: after every extra the project's environment stays consistent (`pip check`), `make setup`
(so CI, through `make test`) installs every runtime extra by default, and the LiteRT converter, whose pins
conflict with the project's, stays out of the project's environment (runtime/litert_venv.py layers it on top)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from runtime import litert_venv
from tests.helpers import ROOT

#: extras that `make setup` does not install by default, and why
NOT_DEFAULT = {"gpu": "onnxruntime-gpu and onnxruntime (cpu) install the same module: pick one",
               "trt": "TensorRT comes from NVIDIA's index or JetPack, on a machine with an NVIDIA GPU"}


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_pip_check_passes_in_this_environment():
    """Every installed distribution's requirements are met here (the extras included, where installed)."""
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip check in {sys.prefix}:\n{done.stdout}{done.stderr}"


def test_make_setup_installs_every_runtime_extra_by_default():
    default = re.search(r"^EXTRAS \?= *(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert default, "the Makefile has no `EXTRAS ?= ...` line"
    assert sorted(default.group(1).split(",")) == sorted(set(_extras()) - set(NOT_DEFAULT))


def test_the_litert_converter_stays_out_of_the_project_environment():
    """[litert] is the interpreter alone; litert-torch (typing-extensions<4.13) is only in the layered venv."""
    assert _extras()["litert"] == [litert_venv.PACKAGES[0]] and litert_venv.PACKAGES[0].startswith("ai-edge-litert")
    assert not any("litert-torch" in req for reqs in _extras().values() for req in reqs)
    assert importlib.util.find_spec("litert_torch") is None, f"litert-torch is installed in {sys.prefix}"
