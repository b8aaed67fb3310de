"""pipeline/measure/budget.py through the quantize stage: the ranking in the report, --int8-budget's checks, and the
errors for a budget only FP32 meets and a model with nothing to quantize (tests/fixtures/fragile.py)."""
import json

import pytest

from pipeline.config import QuantConfig, build_config
from pipeline.errors import PipelineError
from tests.helpers import invoke, one_paragraph


def test_the_report_ranks_every_layer_by_module_path_with_its_onnx_nodes(quick_run):
    sens = quick_run["report"]["quantization"]["sensitivity"]
    assert sens["variant"] == "onnx-int8-ptq" and sens["source"] == "validation split" and sens["images"] == 1000
    layers = sens["layers"]
    # edgenet is a bare nn.Sequential: its layers are named by their index in it (BatchNorm folded into the convs)
    from pipeline import models

    net = models.build("edgenet")
    want = [name for name, m in net.named_modules() if type(m).__name__ in ("Conv2d", "Linear")]
    assert sorted(x["module"] for x in layers) == sorted(want) and len(want) == 6
    assert [x["rank"] for x in layers] == list(range(1, len(want) + 1))
    assert all(len(x["nodes"]) == 1 and x["nodes"][0].startswith("node_") for x in layers)
    recovered = [x["recovered_pp"] for x in layers]
    assert recovered == sorted(recovered, reverse=True)
    md = (quick_run["dir"] / "report.md").read_text()
    assert "## INT8 sensitivity per layer" in md and f"`{layers[0]['module']}` | `{layers[0]['nodes'][0]}`" in md
    assert (quick_run["dir"] / "report" / "sensitivity.png").stat().st_size > 1000
    assert sens["fallback"] == {}  # no --int8-budget: every layer stays INT8


@pytest.mark.parametrize("given", ["abc", "-0.5", "nan", "inf", ""])
def test_a_budget_that_is_negative_or_not_a_number_is_refused_naming_it(given, tmp_path, data_root):
    r = invoke("run", "--quick", "--int8-budget", given, "--artifacts", tmp_path, "--data-root", data_root)
    out = one_paragraph(r)
    assert f"--int8-budget" in out and repr(given) in out
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.parametrize("given", [True, "x", -1, float("nan"), [0.5]])
def test_the_python_api_refuses_the_same_budgets(given):
    with pytest.raises(PipelineError, match="--int8-budget must be"):
        build_config(int8_budget=given)


def test_a_budget_may_be_text_or_a_number_and_zero():
    assert QuantConfig(int8_budget="0.25").int8_budget == 0.25
    assert build_config(int8_budget=0).quant.int8_budget == 0.0
    assert QuantConfig().int8_budget is None


def test_a_budget_only_fp32_meets_writes_no_int8_file_and_names_the_layer(tmp_path, data_root):
    r = invoke("run", "quantize", "--quick", "--quant", "ptq", "--model", "tests.fixtures.fragile:DeadPixelLinear",
               "--int8-budget", "0.5", "--artifacts", tmp_path, "--data-root", data_root)
    out = one_paragraph(r)
    assert "--int8-budget 0.5" in out and "model-int8-ptq.onnx was not written" in out
    assert "only the FP32 model itself meets it" in out and "head" in out
    run = tmp_path / "tests.fixtures.fragile__DeadPixelLinear"
    assert not list((run / "export").glob("model-int8*"))
    sens = json.loads((run / "quantize" / "sensitivity.json").read_text())
    assert [x["module"] for x in sens["layers"]] == ["head"] and sens["layers"][0]["alone_drop_pp"] > 5
    assert sens["fallback"]["onnx-int8-ptq"]["int8_drop_pp"] > 5


def test_a_model_with_nothing_to_quantize_is_refused_naming_its_ops(tmp_path, data_root):
    r = invoke("run", "quantize", "--quick", "--model", "tests.fixtures.fragile:NoLayers",
               "--artifacts", tmp_path, "--data-root", data_root)
    out = one_paragraph(r)
    assert "cannot be quantized to INT8" in out and "no Conv, Gemm or MatMul" in out and "Mul" in out
    assert "--quant none" in out
    assert (tmp_path / "tests.fixtures.fragile__NoLayers" / "export" / "model-fp32.onnx").is_file()  # kept


def test_the_fallback_keeps_the_fragile_layer_in_fp32_and_lists_it_for_each_tool(fragile_budget_run):
    """FragileAtInit stays fragile through the pipeline's own training: PTQ loses points, the ranking names
    features.3 first, and the file written under the budget is a mixed-precision QDQ file that keeps it in FP32."""
    import onnx

    from exporters.qdq import check_qdq
    from pipeline.report.markdown import _sensitivity

    run = fragile_budget_run
    sens = json.loads((run / "quantize" / "sensitivity.json").read_text())
    assert sens["layers"][0]["module"] == "features.3"
    for name, file in (("onnx-int8-ptq", "model-int8-ptq.onnx"), ("onnx-int8-cpu", "model-int8-cpu.onnx")):
        f = sens["fallback"][name]
        assert f["int8_drop_pp"] >= 1.0 and f["drop_pp"] <= 0.5
        assert f["fp32_layers"][0] == "features.3" and len(f["fp32_layers"]) < 3
        model = onnx.load(str(run / "export" / file))
        nodes = {n.name for n in model.graph.node}
        assert set(f["onnxruntime_nodes_to_exclude"]) <= nodes and "node_conv2d_1" in f["onnxruntime_nodes_to_exclude"]
        assert f["tensorrt_layer_precisions"] == ",".join(f"{n}:fp32" for n in f["onnxruntime_nodes_to_exclude"])
        assert f["torch_modules"] == f["fp32_layers"]
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["int8_fp32_nodes"]) == f["onnxruntime_nodes_to_exclude"]
        weights_dq = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        # the fragile layer stays float; the first conv is int8 in the TensorRT file (the CPU form keeps it float)
        assert "features.3.weight_quantized" not in weights_dq
        assert ("features.0.weight_quantized" in weights_dq) == (name == "onnx-int8-ptq")
    assert check_qdq(run / "export" / "model-int8-ptq.onnx") == []
    md = "\n".join(_sensitivity(sens))
    assert "`features.3`" in md and "--layerPrecisions=node_conv2d_1:fp32" in md and "nodes_to_exclude=" in md
