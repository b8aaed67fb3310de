"""runtime/onnxrt.py: the onnxruntime runner reproduces the golden logits, exposes the file's metadata, and
refuses what it cannot load."""
import numpy as np
import pytest

from runtime.errors import RuntimeInputError


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
