"""Shared fixtures: real MNIST (materialized once per session) and one quick end-to-end run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import invoke


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A private data root with the four verified MNIST IDX files."""
    from pipeline.data import ensure_raw

    root = tmp_path_factory.mktemp("mnist")
    ensure_raw(root)
    return root


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, data_root):
    """`pipeline run all --quick` on real MNIST, once; tests read (never modify) its artifacts."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = invoke("run", "all", "--quick", "--artifacts", artifacts, "--data-root", data_root)
    assert result.exit_code == 0, result.output
    run_dir = artifacts / "edgenet"
    return {"artifacts": artifacts, "dir": run_dir, "output": result.output,
            "report": json.loads((run_dir / "report.json").read_text())}


@pytest.fixture
def quick_copy(quick_run, tmp_path) -> Path:
    """A private copy of the quick run's artifacts folder, safe to damage."""
    dst = tmp_path / "artifacts"
    shutil.copytree(quick_run["artifacts"], dst)
    return dst

