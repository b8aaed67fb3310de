"""Shared fixtures: real MNIST (materialized once per session) and one quick end-to-end run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import app


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A private data root with the four verified MNIST IDX files."""
    from pipeline.data import ensure_raw

    root = tmp_path_factory.mktemp("mnist")
    ensure_raw(root)
    return root


def invoke(*args: str):
    """Run the CLI in-process. An exception that escapes a command (which a user would see as a traceback) fails
    the calling test at once: CliRunner keeps it in ``result.exception`` and never prints it, so a check for
    "Traceback" in the output alone could never fail."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError("the command raised (a user would see a traceback):\n"
                             + "".join(traceback.format_exception(result.exception)))
    return result


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


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing was lost or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
