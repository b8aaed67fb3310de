"""The QDQ conformance check, on small hand-built graphs that each break exactly one rule."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.qdq import RULES, QDQCheckError, check_qdq, format_report


def build(*, act_zp=np.int8(0), act_zp_dtype=np.int8, weight_axis=0, per_tensor_weight=False,
          int32_bias=False, fixed_batch=False, scale_from_input=False, external=False, no_q_zp=False):
    """input -> Q -> DQ -> Conv(W: int8 DQ per-channel) -> Relu -> Flatten -> Gemm(transB=1, int8 DQ) -> logits."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "act_scale"),
        numpy_helper.from_array(np.array(act_zp, act_zp_dtype), "act_zp"),
        numpy_helper.from_array(rng.integers(-127, 127, (4, 1, 3, 3)).astype(np.int8), "w_conv_q"),
        numpy_helper.from_array(np.array(0.01, np.float32) if per_tensor_weight
                                else np.full(4, 0.01, np.float32), "w_conv_scale"),
        numpy_helper.from_array(np.int8(0) if per_tensor_weight else np.zeros(4, np.int8), "w_conv_zp"),
        numpy_helper.from_array(rng.integers(-127, 127, (10, 4 * 28 * 28)).astype(np.int8), "w_fc_q"),
        numpy_helper.from_array(np.full(10, 0.01, np.float32), "w_fc_scale"),
        numpy_helper.from_array(np.zeros(10, np.int8), "w_fc_zp"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b_fc"),
    ]
    nodes = []
    graph_inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1 if fixed_batch else "batch", 1, 28, 28])]
    scale = "act_scale"
    if scale_from_input:
        graph_inputs.append(helper.make_tensor_value_info("runtime_scale", TensorProto.FLOAT, []))
        scale = "runtime_scale"
    q_inputs = ["input", scale] if no_q_zp else ["input", scale, "act_zp"]
    nodes += [helper.make_node("QuantizeLinear", q_inputs, ["x_q"], name="input_Q"),
              helper.make_node("DequantizeLinear", ["x_q", scale, "act_zp"], ["x_dq"], name="input_DQ"),
              helper.make_node("DequantizeLinear", ["w_conv_q", "w_conv_scale", "w_conv_zp"], ["w_conv"],
                               name="conv_weight_DQ", axis=weight_axis)]
    conv_inputs = ["x_dq", "w_conv"]
    if int32_bias:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_conv_q"),
                  numpy_helper.from_array(np.full(4, 0.0002, np.float32), "b_conv_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_conv_q", "b_conv_scale"], ["b_conv"], name="conv_bias_DQ"))
        conv_inputs.append("b_conv")
    nodes += [helper.make_node("Conv", conv_inputs, ["c"], name="conv1", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu1"),
              helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
              helper.make_node("DequantizeLinear", ["w_fc_q", "w_fc_scale", "w_fc_zp"], ["w_fc"], name="fc_weight_DQ",
                               axis=0),
              helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "qdq", graph_inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external:
        t = next(i for i in model.graph.initializer if i.name == "w_fc_q")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="weights.bin")
        t.ClearField("raw_data")
    return model


def rules(model):
    return {(v.rule, v.node) for v in check_qdq(model)}


def test_conforming_model_is_valid_onnx_runs_and_passes():
    model = build()
    onnx.checker.check_model(model)
    assert check_qdq(model) == []
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})[0]
    assert out.shape == (3, 10)


@pytest.mark.parametrize("kwargs, rule, node", [
    ({"act_zp": np.uint8(0), "act_zp_dtype": np.uint8}, "int8", "input_Q"),
    ({"act_zp": np.int8(3)}, "symmetric", "input_DQ"),
    ({"no_q_zp": True}, "int8", "input_Q"),
    ({"scale_from_input": True}, "constant-scale", "input_Q"),
    ({"per_tensor_weight": True}, "per-channel-weights", "conv_weight_DQ"),
    ({"weight_axis": 1}, "per-channel-weights", "conv_weight_DQ"),
    ({"int32_bias": True}, "no-int32-bias", "conv_bias_DQ"),
    ({"fixed_batch": True}, "dynamic-batch", "input"),
    ({"external": True}, "embedded-weights", "w_fc_q"),
])
def test_each_rule_names_the_offending_node(kwargs, rule, node):
    found = rules(build(**kwargs))
    assert (rule, node) in found, found
    assert {r for r, _ in found} == {rule}  # exactly the broken rule, nothing else


def test_several_violations_are_all_reported():
    found = {r for r, _ in rules(build(act_zp=np.int8(5), int32_bias=True, fixed_batch=True))}
    assert found == {"symmetric", "no-int32-bias", "dynamic-batch"}
    text = format_report(check_qdq(build(act_zp=np.int8(5))), "m.onnx")
    assert "[symmetric] input_Q" in text and text.startswith("m.onnx:")


def test_rules_are_documented():
    assert set(RULES) == {"symmetric", "int8", "constant-scale", "per-channel-weights", "no-int32-bias",
                          "dynamic-batch", "embedded-weights"}


def test_inputs_that_cannot_be_checked(tmp_path):
    png = tmp_path / "x.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(QDQCheckError, match="not an ONNX model"):
        check_qdq(png)
    good = tmp_path / "good.onnx"
    onnx.save(build(), str(good))
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(QDQCheckError, match="not an ONNX model"):
        check_qdq(trunc)
    with pytest.raises(QDQCheckError, match="does not exist"):
        check_qdq(tmp_path / "missing.onnx")
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "fp32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]))
    with pytest.raises(QDQCheckError, match="no Q/DQ nodes"):
        check_qdq(fp32)
