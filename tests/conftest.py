"""Fixtures every test folder sees: real MNIST and one quick end-to-end run (each once per session), a private
copy of that run, a jetson bundle of it (once per module), the checked-in report.json of a real run and its
rendering (no training), and the TensorRT/Polygraphy stand-ins. Plain helpers are in tests/helpers.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import invoke, quick_bundle


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A private data root with the four verified MNIST IDX files."""
    from pipeline.dataset import ensure_raw

    root = tmp_path_factory.mktemp("mnist")
    ensure_raw(root)
    return root


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, data_root):
    """`pipeline run all --quick --browser` on real MNIST, once; tests read (never modify) its artifacts. With the
    browser rows (web-wasm-*) measured in headless Chromium where it is installed (.ci/run installs it)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = invoke("run", "all", "--quick", "--browser", "--artifacts", artifacts, "--data-root", data_root)
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



#: report.json of a full default run (`pipeline run all`, commit 8a5bc82, AMD EPYC, 2 cores, AVX2/FMA/AVX-512 F/VNNI,
#: torch 2.14.1 CPU, headless Chromium: the web-wasm rows), checked in as written: the report, recommend, ladder,
#: schema and renderer tests read it instead of training a model
REPORT_FIXTURE = Path(__file__).parent / "fixtures" / "report.json"


@pytest.fixture
def real_report() -> dict:
    """tests/fixtures/report.json as a dict, a fresh copy for each test (safe to edit)."""
    return json.loads(REPORT_FIXTURE.read_text())


@pytest.fixture(scope="module")
def rendered_report(tmp_path_factory) -> Path:
    """`pipeline report` on a copy of tests/fixtures/report.json, once per module: a folder with report.json,
    report.md, report.html and report/*.png. Tests read it, never modify it."""
    run = tmp_path_factory.mktemp("rendered") / "run"
    run.mkdir()
    shutil.copy(REPORT_FIXTURE, run / "report.json")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def bundle(quick_run, data_root, tmp_path_factory) -> Path:
    """`pipeline bundle --target jetson` of the quick run; tests read it, or damage a copy. Module scope: each
    test module that asks gets its own, so nothing one module leaves in it (bench.py's bytecode cache, once a
    test loads bench.py from there) can reach another module's checks of the folder."""
    return quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("bundles"), "jetson")


@pytest.fixture
def fake_polygraphy(monkeypatch):
    """TensorRT + Polygraphy stand-ins in sys.modules for this test (tests/fixtures/trt_standins.py); returns
    the list of runners created."""
    from tests.fixtures.trt_standins import install_polygraphy

    return install_polygraphy(monkeypatch)
