"""runtime/: the runner interface, benchmark statistics, and the no-torch promise."""
import subprocess
import sys

import numpy as np
import pytest

from runtime.bench import measure, summarize
from runtime.errors import RuntimeInputError


def test_summarize_percentiles_and_throughput():
    s = summarize([1.0] * 98 + [10.0, 20.0], batch=4)
    assert s.p50_ms == 1.0 and s.p99_ms > 10 and s.iterations == 100
    assert s.throughput_per_s == pytest.approx(4 * 100 / (128 / 1000))
    assert s.noisy  # one 20x outlier makes the coefficient of variation large


def test_measure_respects_iteration_bounds():
    calls = []
    s = measure(lambda: calls.append(1), batch=1, warmup=5, iterations=30, max_seconds=10)
    assert s.iterations == 30 and len(calls) == 35
    s = measure(lambda: None, batch=1, warmup=0, iterations=10**9, max_seconds=0.05, min_iterations=3)
    assert 3 <= s.iterations < 10**9


def test_runtime_imports_without_torch():
    code = ("import sys, runtime; runtime.OnnxrtRunner; runtime.measure; runtime.ModelMetadata;"
            "import runtime.onnxrt, runtime.bench, runtime.metadata, runtime.base;"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnxrt_runner_matches_golden_and_exposes_metadata(quick_run):
    from runtime.onnxrt import OnnxrtRunner

    d = quick_run["dir"]
    golden = np.load(d / "export" / "golden.npz")
    with OnnxrtRunner(d / "export" / "model-fp32.onnx") as r:
        out = r.infer({"input": golden["input"]})["logits"]
        assert r.metadata_props()["model_name"] == "edgenet"
    assert np.abs(out - golden["logits"]).max() < 1e-4
    assert not r.is_active


def test_onnxrt_runner_errors(tmp_path):
    from runtime.onnxrt import OnnxrtRunner

    with pytest.raises(RuntimeInputError, match="does not exist"):
        OnnxrtRunner(tmp_path / "nope.onnx").activate()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    with pytest.raises(RuntimeInputError, match="could not load"):
        OnnxrtRunner(junk).activate()
    with pytest.raises(RuntimeInputError, match="provider"):
        OnnxrtRunner(junk, provider="tpu")
    with pytest.raises(RuntimeError, match="activate"):
        OnnxrtRunner(junk).infer({})
