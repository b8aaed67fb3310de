"""ONNX files from elsewhere: external data may not lead out of the model's folder (``..``, absolute, symlink)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import Classifier
from runtime.errors import RuntimeInputError
from runtime.modelfile import check_onnx_file, external_locations
from runtime.onnxrt import OnnxrtRunner
from tests.helpers import invoke


def _model_with_external(folder, location: str, name: str = "m.onnx"):
    """A 1x4 @ 4x4 MatMul whose weight lives in external data at ``location`` (relative to ``folder``)."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        e = t.external_data.add()
        e.key, e.value = k, v
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def secret(tmp_path):
    f = tmp_path / "secret.bin"
    np.arange(16, dtype=np.float32).tofile(f)  # stands for any file the process can read
    return f


def test_external_data_inside_the_folder_loads(tmp_path):
    folder = tmp_path / "model"
    path = _model_with_external(folder, "weights.bin")
    np.eye(4, dtype=np.float32).tofile(folder / "weights.bin")
    assert external_locations(path) == ["weights.bin"]
    with OnnxrtRunner(path) as r:
        y = r.infer({"x": np.ones((1, 4), np.float32)})["y"]
    assert np.array_equal(y, np.ones((1, 4), np.float32))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_external_data_leading_out_of_the_folder_is_refused(tmp_path, secret, how):
    folder = tmp_path / "model"
    folder.mkdir()
    if how == "dotdot":
        loc = "../secret.bin"
    elif how == "absolute":
        loc = str(secret)
    elif how == "symlink":
        (folder / "w.bin").symlink_to(secret)
        loc = "w.bin"
    else:
        (folder / "sub").symlink_to(tmp_path)
        loc = "sub/secret.bin"
    path = _model_with_external(folder, loc)
    with pytest.raises(RuntimeInputError, match="external data location") as e:
        OnnxrtRunner(path).activate()
    assert "outside" in str(e.value) or "absolute" in str(e.value)
    with pytest.raises(RuntimeInputError, match="external data location"):
        Classifier(path, mean=[0.0], std=[1.0], classes=list("abcd"))
    r = invoke("bench", path, "--shape", "4", "--batch", "1")
    assert r.exit_code == 2 and "external data location" in " ".join(r.output.split()) and "Traceback" not in r.output


def test_empty_and_missing_model_files(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(RuntimeInputError, match="empty"):
        check_onnx_file(tmp_path / "empty.onnx")
    with pytest.raises(RuntimeInputError, match="does not exist"):
        check_onnx_file(tmp_path / "nope.onnx")
    with pytest.raises(RuntimeInputError, match="not a file"):
        check_onnx_file(tmp_path)


def test_our_exports_are_self_contained(quick_run):
    files = sorted((quick_run["dir"] / "export").glob("*.onnx"))
    assert {f.name for f in files} >= {"model-fp32.onnx", "model-fp16.onnx", "model-int8-ptq.onnx",
                                       "model-int8-qat.onnx", "model-int8-cpu.onnx"}
    for f in files:
        assert external_locations(f) == [], f
        assert all(t.data_location != TensorProto.EXTERNAL for t in onnx.load(str(f)).graph.initializer)
