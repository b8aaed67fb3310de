"""exporters/qdq.py: the QDQ conformance check, on small hand-built graphs that each break exactly one rule
(no torch), and `pipeline check-qdq` on the quick run's files."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.qdq import RULES, QDQCheckError, Violation, check_qdq, format_report
from tests.helpers import invoke

FC_IN, FC_OUT, CONV_OUT = 4 * 28 * 28, 10, 4


def build(*, act_zp=0, act_zp_dtype=np.int8, no_q_zp=False, scale_from_input=False, act_scale=0.02,
          const_node_scale=False, per_tensor_weight=False, weight_axis=0, float_weight=False, weight_no_zp=False,
          int32_bias=False, fc="gemm", fc_axis=None, fixed_batch=False, external=False, unnamed=False):
    """input[batch,1,28,28] -> Q -> DQ -> Conv(int8 W, per-channel DQ) -> Relu -> Flatten -> FC -> logits.

    Every keyword defaults to the conforming choice; each switch breaks (or varies) one thing.
    ``fc`` picks the classifier layer: "gemm" (transB=1, W [out,in]), "gemm_t0" (transB=0, W [in,out]),
    "matmul" (MatMul + Add, W [in,out]) or "transpose" (W [out,in] -> DQ -> Transpose -> MatMul + Add).
    ``fc_axis`` overrides the FC weight DQ axis (None = the correct output-channel axis).
    """
    rng = np.random.default_rng(0)
    conv_w = rng.integers(-127, 128, (CONV_OUT, 1, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(act_zp, act_zp_dtype), "act_zp"),
        numpy_helper.from_array(np.array(0.01, np.float32) if per_tensor_weight
                                else np.full(CONV_OUT, 0.01, np.float32), "w_conv_scale"),
        numpy_helper.from_array(np.int8(0) if per_tensor_weight else np.zeros(CONV_OUT, np.int8), "w_conv_zp"),
        numpy_helper.from_array(np.full(CONV_OUT, 0.1, np.float32), "b_conv"),
        numpy_helper.from_array(np.full(FC_OUT, 0.01, np.float32), "w_fc_scale"),
        numpy_helper.from_array(np.zeros(FC_OUT, np.int8), "w_fc_zp"),
        numpy_helper.from_array(np.zeros(FC_OUT, np.float32), "b_fc"),
    ]
    nodes = []
    scale = "act_scale"
    if const_node_scale:
        nodes.append(helper.make_node("Constant", [], ["act_scale"], name="act_scale_const",
                                      value=numpy_helper.from_array(np.array(act_scale, np.float32))))
    else:
        inits.append(numpy_helper.from_array(np.array(act_scale, np.float32), "act_scale"))
    graph_inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1 if fixed_batch else "batch", 1, 28, 28])]
    if scale_from_input:
        graph_inputs.append(helper.make_tensor_value_info("runtime_scale", TensorProto.FLOAT, []))
        scale = "runtime_scale"
    nodes += [helper.make_node("QuantizeLinear", ["input", scale] + ([] if no_q_zp else ["act_zp"]), ["x_q"],
                               name="input_Q"),
              helper.make_node("DequantizeLinear", ["x_q", scale] + ([] if no_q_zp else ["act_zp"]), ["x_dq"],
                               name="input_DQ")]

    if float_weight:  # float weight -> Q -> DQ -> Conv
        inits.append(numpy_helper.from_array(conv_w.astype(np.float32) * 0.01, "w_conv_f"))
        nodes.append(helper.make_node("QuantizeLinear", ["w_conv_f", "w_conv_scale", "w_conv_zp"], ["w_conv_q"],
                                      name="conv_weight_Q", axis=weight_axis))
    else:
        inits.append(numpy_helper.from_array(conv_w, "w_conv_q"))
    conv_zp = [] if weight_no_zp else ["w_conv_zp"]
    nodes.append(helper.make_node("DequantizeLinear", ["w_conv_q", "w_conv_scale"] + conv_zp, ["w_conv"],
                                  name="conv_weight_DQ", axis=weight_axis))
    bias = "b_conv"
    if int32_bias:
        inits += [numpy_helper.from_array(np.zeros(CONV_OUT, np.int32), "b_conv_q"),
                  numpy_helper.from_array(np.full(CONV_OUT, 0.0002, np.float32), "b_conv_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_conv_q", "b_conv_scale"], ["b_conv_dq"],
                                      name="conv_bias_DQ"))
        bias = "b_conv_dq"
    nodes += [helper.make_node("Conv", ["x_dq", "w_conv", bias], ["c"], name="conv1", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu1"),
              helper.make_node("Flatten", ["r"], ["f"], name="flatten")]

    out_first = fc in ("gemm", "transpose")  # weight stored [out, in]
    w_fc = rng.integers(-127, 128, (FC_OUT, FC_IN) if out_first else (FC_IN, FC_OUT)).astype(np.int8)
    inits.append(numpy_helper.from_array(w_fc, "w_fc_q"))
    axis = fc_axis if fc_axis is not None else (0 if out_first else 1)
    nodes.append(helper.make_node("DequantizeLinear", ["w_fc_q", "w_fc_scale", "w_fc_zp"], ["w_fc"],
                                  name="fc_weight_DQ", axis=axis))
    if fc == "gemm":
        nodes.append(helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["logits"], name="fc", transB=1))
    elif fc == "gemm_t0":
        nodes.append(helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["logits"], name="fc"))
    else:
        weight = "w_fc"
        if fc == "transpose":
            nodes.append(helper.make_node("Transpose", ["w_fc"], ["w_fc_t"], name="fc_weight_T", perm=[1, 0]))
            weight = "w_fc_t"
        nodes += [helper.make_node("MatMul", ["f", weight], ["mm"], name="fc"),
                  helper.make_node("Add", ["mm", "b_fc"], ["logits"], name="fc_bias")]

    if unnamed:
        for n in nodes:
            n.name = ""
    graph = helper.make_graph(nodes, "qdq", graph_inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, FC_OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if external:  # as if model.onnx was copied to the device without its model.onnx.data side file
        t = next(i for i in model.graph.initializer if i.name == "w_fc_q")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "model.onnx.data"), ("offset", "0"), ("length", str(w_fc.nbytes))):
            t.external_data.add(key=key, value=value)
    return model


def found(model):
    return {(v.rule, v.node) for v in check_qdq(model)}


def assert_valid_onnx(model):
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for t in model.graph.initializer:  # the checker would look for the side file; validate the structure only
            if t.data_location == TensorProto.EXTERNAL:
                t.ClearField("external_data")
                t.data_location = TensorProto.DEFAULT
                t.raw_data = bytes(int(np.prod(t.dims)))
    onnx.checker.check_model(model, full_check=True)


CONFORMING = [{}, {"const_node_scale": True}, {"float_weight": True}, {"weight_no_zp": True},
              {"fc": "gemm_t0"}, {"fc": "matmul"}, {"fc": "transpose"}, {"unnamed": True}]


@pytest.mark.parametrize("kwargs", CONFORMING, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "base")
def test_conforming_models_are_valid_onnx_and_pass(kwargs):
    model = build(**kwargs)
    assert_valid_onnx(model)
    assert check_qdq(model) == []
    assert "conforms to all 7 QDQ rules" in format_report(check_qdq(model), "m.onnx")


def test_conforming_model_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    for kwargs in ({}, {"fc": "transpose"}, {"float_weight": True}):
        sess = ort.InferenceSession(build(**kwargs).SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"input": np.random.default_rng(1).random((3, 1, 28, 28), np.float32)})[0]
        assert out.shape == (3, FC_OUT) and np.all(np.isfinite(out))


def test_conforming_model_from_a_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(build(), str(path))
    assert check_qdq(path) == [] and check_qdq(str(path)) == []


@pytest.mark.parametrize("kwargs, rule, node", [
    ({"act_zp_dtype": np.uint8}, "int8", "input_Q"),
    ({"act_zp_dtype": np.uint8}, "int8", "input_DQ"),
    ({"no_q_zp": True}, "int8", "input_Q"),  # no zero point: the spec's default output type is uint8
    ({"act_zp": 3}, "symmetric", "input_Q"),
    ({"act_zp": -5}, "symmetric", "input_DQ"),
    ({"scale_from_input": True}, "constant-scale", "input_Q"),
    ({"act_scale": 0.0}, "constant-scale", "input_Q"),
    ({"act_scale": float("nan"), "const_node_scale": True}, "constant-scale", "input_DQ"),
    ({"per_tensor_weight": True}, "per-channel-weights", "conv_weight_DQ"),
    ({"weight_axis": 1}, "per-channel-weights", "conv_weight_DQ"),
    ({"weight_axis": 1, "float_weight": True}, "per-channel-weights", "conv_weight_DQ"),
    ({"fc_axis": 1}, "per-channel-weights", "fc_weight_DQ"),  # Gemm transB=1: output channels on axis 0
    ({"fc": "gemm_t0", "fc_axis": 0}, "per-channel-weights", "fc_weight_DQ"),
    ({"fc": "matmul", "fc_axis": 0}, "per-channel-weights", "fc_weight_DQ"),
    ({"fc": "transpose", "fc_axis": 1}, "per-channel-weights", "fc_weight_DQ"),
    ({"int32_bias": True}, "no-int32-bias", "conv_bias_DQ"),
    ({"fixed_batch": True}, "dynamic-batch", "input"),
    ({"external": True}, "embedded-weights", "w_fc_q"),
])
def test_each_rule_names_the_offending_node(kwargs, rule, node):
    model = build(**kwargs)
    assert_valid_onnx(model)
    got = found(model)
    assert (rule, node) in got, got
    assert {r for r, _ in got} == {rule}  # exactly the broken rule, nothing else
    assert rule in RULES


def test_details_say_what_was_expected():
    (v,) = [v for v in check_qdq(build(weight_axis=1)) if v.node == "conv_weight_DQ"]
    assert "axis 1" in v.detail and "axis 0" in v.detail and "conv1" in v.detail
    (v,) = check_qdq(build(per_tensor_weight=True))
    assert "per-tensor" in v.detail and "conv1" in v.detail
    details = {v.node: v.detail for v in check_qdq(build(no_q_zp=True))}
    assert "outputs uint8" in details["input_Q"]
    assert "uint8" in details["input_DQ"]  # a DQ without zero point dequantizes its input's type: uint8 here


def test_several_violations_are_all_reported():
    model = build(act_zp=5, act_zp_dtype=np.uint8, per_tensor_weight=True, int32_bias=True, fixed_batch=True,
                  external=True, scale_from_input=True)
    got = found(model)
    assert {r for r, _ in got} == set(RULES)  # every one of the seven rules
    for pair in [("symmetric", "input_Q"), ("int8", "input_DQ"), ("constant-scale", "input_Q"),
                 ("per-channel-weights", "conv_weight_DQ"), ("no-int32-bias", "conv_bias_DQ"),
                 ("dynamic-batch", "input"), ("embedded-weights", "w_fc_q")]:
        assert pair in got, pair
    text = format_report(check_qdq(model), "m.onnx")
    lines = text.splitlines()
    assert lines[0].startswith("m.onnx:") and len(lines) == 1 + len(check_qdq(model))
    assert "  [symmetric] input_Q: " in text and "[dynamic-batch] input: " in text


def test_unnamed_nodes_get_a_name():
    violations = check_qdq(build(unnamed=True, act_zp=1, weight_axis=1))
    assert violations and all(isinstance(v, Violation) and v.node for v in violations)
    assert {v.node for v in violations} >= {"QuantizeLinear_0", "DequantizeLinear_2"}


def test_external_data_file_is_reported_not_followed(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(build(), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
    assert (tmp_path / "model.onnx.data").is_file()
    got = found(path)
    assert got == {("embedded-weights", "w_fc_q")}, got


def test_rules_are_documented():
    assert set(RULES) == {"symmetric", "int8", "constant-scale", "per-channel-weights", "no-int32-bias",
                          "dynamic-batch", "embedded-weights"}
    assert all(isinstance(d, str) and d for d in RULES.values())


def test_inputs_that_cannot_be_checked(tmp_path):
    png = tmp_path / "x.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(QDQCheckError, match="not an ONNX model"):
        check_qdq(png)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(QDQCheckError, match="not an ONNX model"):
        check_qdq(text)
    good = tmp_path / "good.onnx"
    onnx.save(build(), str(good))
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 1):
        trunc = tmp_path / f"trunc{cut}.onnx"
        trunc.write_bytes(data[:cut])
        with pytest.raises(QDQCheckError, match="not an ONNX model"):
            check_qdq(trunc)
    with pytest.raises(QDQCheckError, match="does not exist"):
        check_qdq(tmp_path / "missing.onnx")
    with pytest.raises(QDQCheckError, match="not an ONNX model"):
        check_qdq(tmp_path)  # a directory
    with pytest.raises(QDQCheckError):
        check_qdq(123)


def test_float_model_has_nothing_to_check(tmp_path):
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "fp32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]))
    onnx.checker.check_model(fp32)
    with pytest.raises(QDQCheckError, match="FP32/FP16.*no Q/DQ nodes"):
        check_qdq(fp32)
    path = tmp_path / "fp32.onnx"
    onnx.save(fp32, str(path))
    with pytest.raises(QDQCheckError, match="no Q/DQ nodes"):
        check_qdq(path)


# ---------------------------------------------------------------- the check-qdq command
def test_check_qdq_command(quick_run, tmp_path):
    d = quick_run["dir"] / "export"
    r = invoke("check-qdq", d / "model-int8-ptq.onnx")
    assert r.exit_code == 0 and "conforms" in r.output
    r = invoke("check-qdq", d / "model-fp32.onnx")
    assert r.exit_code == 2 and "no Q/DQ" in r.output
    junk = tmp_path / "x.onnx"
    junk.write_bytes(b"\x89PNG\r\n")
    r = invoke("check-qdq", junk)
    assert r.exit_code == 2 and "not an ONNX model" in r.output
    r = invoke("check-qdq", d / "model-int8-cpu.onnx")  # uint8 activations: fine for CPU, not for TensorRT
    assert r.exit_code == 1, r.output
    assert "is uint8, expected int8" in r.output and "asymmetric quantization" in r.output
