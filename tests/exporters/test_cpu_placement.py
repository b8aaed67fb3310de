"""exporters/cpu_placement.py on the quick run's QAT file: its float graph and learned grids taken apart
(split_qdq), and the layers the CPU form keeps in float. The file it writes is checked in
tests/pipeline/stages/test_quantize.py (fusion, scales), its accuracy in the report tests."""
import numpy as np
import onnx
from onnx import numpy_helper

from exporters.cpu_placement import split_qdq
from exporters.precision import input_layers


def test_split_qdq_gives_the_float_graph_and_the_learned_grids(quick_run):
    d = quick_run["dir"] / "export"
    proto = onnx.load(str(d / "model-int8-qat.onnx"))
    before = proto.SerializeToString()
    fl, overrides = split_qdq(proto)
    assert proto.SerializeToString() == before  # the caller's model is not edited
    assert not {n.op_type for n in fl.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    onnx.checker.check_model(fl)
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    floats = {t.name: numpy_helper.to_array(t) for t in fl.graph.initializer}
    weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert len(weights) == 6  # edgenet: 5 convs and the classifier
    for n in weights:  # the learned int8 weights times their per-channel scales, exactly
        q, scale = init[n.input[0]].astype(np.float32), init[n.input[1]]
        want = q * scale.reshape([-1] + [1] * (q.ndim - 1))
        assert np.array_equal(floats[n.output[0]], want.astype(np.float32)), n.name
        assert [o["scale"] for o in overrides[n.output[0]]] == list(scale) and overrides[n.output[0]][0]["axis"] == 0
    # activations: QAT's symmetric int8 grid as uint8; zero point 0 where the tensor cannot be negative
    assert int(overrides["input"][0]["zero_point"]) == 128
    relus = [t for t in overrides if t.startswith("relu")]
    assert relus and all(int(overrides[t][0]["zero_point"]) == 0 for t in relus + ["max_pool2d", "view"])
    q_input = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert float(overrides["input"][0]["scale"]) == float(init[q_input.input[1]])


def test_the_cpu_form_keeps_only_the_layer_reading_the_image_in_float(quick_run):
    d = quick_run["dir"] / "export"
    fp32 = onnx.load(str(d / "model-fp32.onnx"))
    assert input_layers(fp32) == [fp32.graph.node[0].name]
    cpu = onnx.load(str(d / "model-int8-cpu.onnx"))
    first = next(n for n in cpu.graph.node if n.op_type == "Conv")
    producers = {o: n.op_type for n in cpu.graph.node for o in n.output}
    assert first.input[0] == "input" and producers.get(first.input[1]) is None  # float image, float weight
    later = [n for n in cpu.graph.node if n.op_type == "Conv"][1:]
    assert len(later) == 4 and all(producers[n.input[0]] == "DequantizeLinear" for n in later)  # edgenet's 5 convs


def _one_layer(op, weight_shape):
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.ones(weight_shape, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"], name="layer")], "g", [x], [y], [w])
    return helper.make_model(g)


def test_only_a_narrow_conv_on_the_image_stays_in_float():
    """A wide first layer (an MLP's Gemm, a conv over 16 channels) has enough work for the int8 kernels."""
    assert input_layers(_one_layer("Conv", (8, 1, 3, 3))) == ["layer"]
    assert input_layers(_one_layer("Conv", (8, 3, 3, 3))) == ["layer"]
    assert input_layers(_one_layer("Conv", (8, 16, 3, 3))) == []
    assert input_layers(_one_layer("Gemm", (784, 10))) == []
    assert input_layers(_one_layer("MatMul", (784, 10))) == []
