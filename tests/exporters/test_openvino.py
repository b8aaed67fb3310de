"""exporters/openvino.py: FP32 IR equal to torch (from the torch model and from the FP32 ONNX file), INT8 through
NNCF within the INT8 budget, weights kept FP32 on disk, the preprocessing contract in the IR's rt_info, and a
conversion failure as one paragraph naming OpenVINO."""
import json

import numpy as np
import pytest

from tests.edge_helpers import check_fp32, check_int8, run_all

pytest.importorskip("openvino", reason="OpenVINO is not installed: `pip install -e .[openvino]`")
pytest.importorskip("nncf", reason="NNCF is not installed: `pip install -e .[openvino]`")


@pytest.fixture(scope="module")
def ir_files(edge_model, tmp_path_factory):
    from exporters import openvino as eov

    d = tmp_path_factory.mktemp("openvino")
    m = edge_model
    return {"fp32": eov.export_fp32(m["model"], d / "model-fp32.xml", m["meta"], example=m["test_x"][:2]),
            "int8": eov.export_int8(m["model"], d / "model-int8.xml", m["meta"], m["calib"], example=m["test_x"][:2])}


def test_fp32_ir_equals_torch_and_keeps_fp32_weights(ir_files, edge_model):
    from runtime.openvino import OpenvinoRunner

    with OpenvinoRunner(ir_files["fp32"]) as r:
        logits = run_all(r, edge_model["test_x"])
    check_fp32(logits, edge_model["model"], edge_model["ref"])
    # save_model's default would have halved the weights (compress_to_fp16): 4 bytes per parameter stay on disk
    params = sum(p.numel() for p in edge_model["model"].parameters())
    assert ir_files["fp32"].with_suffix(".bin").stat().st_size >= 4 * params


def test_fp32_ir_from_the_onnx_file_equals_torch(edge_model, tmp_path):
    from exporters import openvino as eov
    from exporters.onnx import export_fp32
    from runtime.openvino import OpenvinoRunner, read_metadata

    onnx_file = export_fp32(edge_model["model"], tmp_path / "model-fp32.onnx", edge_model["meta"])
    xml = eov.export_fp32(onnx_file, tmp_path / "from-onnx.xml", edge_model["meta"])
    with OpenvinoRunner(xml) as r:
        check_fp32(run_all(r, edge_model["test_x"]), edge_model["model"], edge_model["ref"])
    assert read_metadata(xml)["input_name"] == "input"


def test_int8_ir_within_budget(ir_files, edge_model):
    from runtime.openvino import OpenvinoRunner, read_metadata

    with OpenvinoRunner(ir_files["int8"], precision="int8") as r:
        logits = run_all(r, edge_model["test_x"])
    check_int8(logits, edge_model["ref"], edge_model["test_y"])
    meta = read_metadata(ir_files["int8"])
    assert meta["precision"] == "int8" and "fast_bias_correction=False" in meta["quantizer"]


def test_metadata_round_trips_through_rt_info(ir_files, edge_model):
    from runtime import metadata as md
    from runtime.openvino import read_metadata

    got = read_metadata(ir_files["fp32"])
    for key, value in edge_model["meta"].items():
        if key != md.PRECISION:
            assert got[key] == value, key
    assert json.loads(got[md.MEAN]) == json.loads(edge_model["meta"][md.MEAN])
    assert got[md.PRECISION] == "fp32"


def test_conversion_failure_is_one_paragraph_naming_openvino(tmp_path):
    from exporters import openvino as eov

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    with pytest.raises(eov.OpenvinoExportError, match=r"^OpenVINO conversion failed") as e:
        eov.export_fp32(bad, tmp_path / "out.xml", {})
    assert "\n" not in str(e.value) and not (tmp_path / "out.xml").exists()
    with pytest.raises(eov.OpenvinoExportError, match="calibration"):
        eov.export_int8(bad, tmp_path / "out.xml", {}, np.full((2, 1, 28, 28), np.nan, np.float32))


def test_int8_keeps_the_onnx_nodes_asked_for_in_fp32_in_the_written_ir(edge_model, tmp_path):
    """``fp32_nodes`` (the --int8-budget fallback, ONNX node names): the IR converted from the ONNX file keeps that
    layer's weights FP32 (read from the written graph), the others INT8, and names it in its rt_info."""
    from exporters import openvino as eov
    from exporters.onnx import export_fp32
    from exporters.sensitivity import layers
    from runtime.openvino import read_metadata

    onnx_file = export_fp32(edge_model["model"], tmp_path / "model-fp32.onnx", edge_model["meta"])
    conv, head = layers(onnx_file)
    xml = eov.export_int8(onnx_file, tmp_path / "q.xml", edge_model["meta"], edge_model["calib"],
                          fp32_nodes=head.nodes)
    assert eov.layer_precisions(xml) == {conv.nodes[0]: "int8", head.nodes[0]: "fp32"}
    assert json.loads(read_metadata(xml)["int8_fp32_nodes"]) == list(head.nodes)
    assert set(eov.layer_precisions(eov.export_fp32(onnx_file, tmp_path / "f.xml", edge_model["meta"])).values()) \
        == {"fp32"}
