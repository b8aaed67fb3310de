"""Bare environments for the edge bundles' own checks, each with only its runtime (once per session).

The OpenVINO and LiteRT ones are fresh venvs filled by pip (`openvino numpy`, `ai-edge-litert numpy`) from the
configured index, as a device would install them (about 10 s each here). The ExecuTorch one is not: `pip install
executorch` does not bring torch, and torch from the index is its CUDA build (a 555 MB wheel plus several GB of
NVIDIA libraries), so instead the venv gets, linked from this interpreter's site-packages, exactly executorch, torch
and numpy and the distributions they require (closed over their metadata): still nothing else of the project's.
A failed pip install skips the tests that need it, with pip's words."""
from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.devices import sshd as _sshd


def pip_venv(folder: Path, *packages: str) -> Path:
    """A fresh venv at ``folder`` with ``packages`` pip-installed (and their dependencies); its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    py = folder / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"could not install {' '.join(packages)} from the package index: {pip.stderr[-300:]}")
    return py


def closure(*roots: str) -> list[str]:
    """``roots`` and every installed distribution they require, transitively (extras and absent ones left out)."""
    seen, todo = [], list(roots)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.append(key)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return seen


def linked_venv(folder: Path, *roots: str) -> Path:
    """A venv at ``folder`` holding ``roots`` and their requirements, linked from this interpreter; its python."""
    return _sshd.bare_python(folder, dists=tuple(closure(*roots)))


@pytest.fixture(scope="session")
def openvino_python(tmp_path_factory) -> Path:
    return pip_venv(tmp_path_factory.mktemp("openvino") / "venv", "openvino", "numpy")


@pytest.fixture(scope="session")
def litert_python(tmp_path_factory) -> Path:
    return pip_venv(tmp_path_factory.mktemp("litert") / "venv", "ai-edge-litert", "numpy")


@pytest.fixture(scope="session")
def executorch_python(tmp_path_factory) -> Path:
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed here: pip install -e .[executorch]")
    return linked_venv(tmp_path_factory.mktemp("executorch") / "venv", "executorch", "torch", "numpy")


@pytest.fixture(scope="session")
def numpy_python(tmp_path_factory) -> Path:
    """A venv with numpy alone: no runtime at all."""
    return linked_venv(tmp_path_factory.mktemp("numpy") / "venv", "numpy")
