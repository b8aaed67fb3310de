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


@pytest.fixture(scope="session")
def fragile_budget_run(tmp_path_factory, data_root) -> Path:
    """`pipeline run quantize --quick --quant ptq --model tests.fixtures.fragile:FragileAtInit --int8-budget 0.5`,
    once (the ONNX fallback's tests and the edge INT8 files' follow it); tests read it. Returns the run folder."""
    artifacts = tmp_path_factory.mktemp("fragile")
    r = invoke("run", "quantize", "--quick", "--quant", "ptq", "--model", "tests.fixtures.fragile:FragileAtInit",
               "--int8-budget", "0.5", "--artifacts", artifacts, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    return artifacts / "tests.fixtures.fragile__FragileAtInit"


@pytest.fixture
def quick_copy(quick_run, tmp_path) -> Path:
    """A private copy of the quick run's artifacts folder, safe to damage."""
    dst = tmp_path / "artifacts"
    shutil.copytree(quick_run["artifacts"], dst)
    return dst



#: report.json of a full default run (`make run` in a fresh clone at commit 3b098b0, AMD EPYC, 2 cores, AVX2/FMA/AVX-512
#: F/VNNI/BF16, torch 2.14.1, OpenVINO, ExecuTorch and LiteRT installed: their rows; headless Chromium: the web-wasm
#: rows; docs/results.md#edge-runtimes), checked in as written: the report, recommend, ladder,
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


@pytest.fixture(scope="session")
def edge_model(data_root):
    """A small user model (tests/fixtures/user_models.py TinyNet) trained for a few seconds on real MNIST, for
    the edge-runtime exporters and runners (tests/exporters/test_openvino.py etc.): its eval-mode model, 3,000
    real test images and labels (normalized like the pipeline does), 512 calibration images from the training
    split, its torch FP32 logits on the test images and the preprocessing contract to embed."""
    import torch
    from torchvision import datasets

    from exporters.onnx import build_metadata
    from tests.fixtures.user_models import TinyNet

    torch.manual_seed(0)
    train, test = (datasets.MNIST(str(data_root), train=t, download=False) for t in (True, False))
    mean, std = float(train.data.float().div(255).mean()), float(train.data.float().div(255).std())

    def norm(u8):
        return ((u8.float() / 255 - mean) / std).unsqueeze(1).contiguous()

    x, y = norm(train.data[:12000]), train.targets[:12000]
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(0, len(x), 128):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128]).backward()
        opt.step()
    model.eval()
    test_x = norm(test.data[:3000])
    with torch.no_grad():
        ref = model(test_x).numpy()
    meta = build_metadata(model_name="tinynet", mean=[mean], std=[std], classes=[str(c) for c in range(10)],
                          checkpoint_sha256="0" * 64, precision="fp32")
    return {"model": model, "test_x": test_x.numpy(), "test_y": test.targets[:3000].numpy(), "ref": ref,
            "calib": norm(train.data[-512:]).numpy(), "meta": meta}
