"""QDQ conformance check: is this INT8 ONNX file one TensorRT 10 and 11 will build as intended?

TensorRT 11 removed the implicit-INT8 calibrator API, so INT8 engines come only
from *explicit* quantization: QuantizeLinear/DequantizeLinear (Q/DQ) pairs in
the ONNX graph. TensorRT accepts only symmetric INT8 (zero point 0), wants
per-channel weight scales on the output-channel axis, needs constant scales to
fold, and its ONNX parser breaks on a DequantizeLinear of an INT32 (quantized)
bias. A QDQ file that breaks one of these rules either fails to build or
silently runs some layers in higher precision; this module names each
offending node so the user can fix the exporter, not guess.

Only ``onnx``, ``numpy`` and the standard library are imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RULES = {
    "symmetric": "every QuantizeLinear/DequantizeLinear zero point is 0 (symmetric INT8)",
    "int8": "Q/DQ zero points are int8 (not uint8, int4, fp8...)",
    "constant-scale": "scales and zero points are constants (initializers or Constant nodes), finite and > 0",
    "per-channel-weights": "weights of Conv/ConvTranspose/Gemm/MatMul are quantized per channel on the output-channel axis",
    "no-int32-bias": "no DequantizeLinear of an INT32 tensor (quantized bias breaks the TensorRT parser)",
    "dynamic-batch": "the first graph input has a symbolic (dynamic) batch dimension",
    "embedded-weights": "no tensor uses external data (weights are embedded in the file)",
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PASS_THROUGH = ("Transpose", "Reshape", "Identity")


@dataclass(frozen=True)
class Violation:
    rule: str  # a key of RULES
    node: str  # offending node, initializer or input name
    detail: str  # what is wrong and what was expected


class QDQCheckError(Exception):
    """The input cannot be checked at all (missing, not ONNX, no Q/DQ nodes)."""


def _load(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise QDQCheckError(f"{path} does not exist.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise QDQCheckError(f"{path} is not an ONNX model (it could not be parsed: {type(e).__name__}).") from None
    if not proto.graph.node:
        raise QDQCheckError(f"{path} is not an ONNX model (no graph nodes after parsing).")
    return proto


def _node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def check_qdq(model) -> list[Violation]:
    """All violations of :data:`RULES` in ``model`` (a ModelProto or a path); empty means it conforms."""
    import onnx
    from onnx import numpy_helper

    proto = _load(model)
    graph = proto.graph
    nodes = list(graph.node)
    qdq = [(i, n) for i, n in enumerate(nodes) if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        raise QDQCheckError(
            "This is a float (FP32/FP16) model with no Q/DQ nodes (QuantizeLinear/DequantizeLinear), "
            "so there is nothing to check; give an INT8 QDQ model."
        )

    consts: dict[str, object] = {}  # name -> TensorProto
    for init in graph.initializer:
        consts[init.name] = init
    for n in nodes:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    producers = {o: (i, n) for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list] = {}
    for i, n in enumerate(nodes):
        for k, inp in enumerate(n.input):
            consumers.setdefault(inp, []).append((i, n, k))
    value_types = {vi.name: vi.type.tensor_type.elem_type for vi in
                   list(graph.value_info) + list(graph.input) + list(graph.output)}

    def const_array(name):
        t = consts.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(t)

    def dtype_of(name):
        if name in consts:
            return consts[name].data_type
        if name in producers and producers[name][1].op_type == "QuantizeLinear":
            q = producers[name][1]
            return consts[q.input[2]].data_type if len(q.input) > 2 and q.input[2] in consts else onnx.TensorProto.UINT8
        return value_types.get(name)

    out: list[Violation] = []
    for i, n in qdq:
        name = _node_name(n, i)
        scale_name = n.input[1] if len(n.input) > 1 else ""
        zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else ""
        scale = const_array(scale_name)
        if scale is None:
            out.append(Violation("constant-scale", name, f"scale '{scale_name}' is not a constant; TensorRT needs "
                                                         "constant scales to fold Q/DQ into INT8 kernels."))
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            out.append(Violation("constant-scale", name, f"scale '{scale_name}' has values that are not finite and > 0."))
        if zp_name:
            zp = const_array(zp_name)
            if zp is None:
                out.append(Violation("constant-scale", name, f"zero point '{zp_name}' is not a constant."))
            else:
                if zp.dtype != np.int8:
                    out.append(Violation("int8", name, f"zero point '{zp_name}' is {zp.dtype}, expected int8."))
                if np.any(zp != 0):
                    out.append(Violation("symmetric", name, f"zero point '{zp_name}' is not 0 (asymmetric "
                                                             f"quantization); TensorRT supports only symmetric INT8."))
        elif n.op_type == "QuantizeLinear":
            out.append(Violation("int8", name, "QuantizeLinear has no zero point, so by the ONNX spec it outputs "
                                               "uint8; give an int8 zero point of 0."))
        if n.op_type == "DequantizeLinear" and dtype_of(n.input[0]) == onnx.TensorProto.INT32:
            out.append(Violation("no-int32-bias", name, f"DequantizeLinear of INT32 '{n.input[0]}' (a quantized "
                                                        "bias); keep biases in float (QuantizeBias=False)."))

    out += _check_weights(nodes, consts, producers, consumers, const_array)

    if graph.input:
        first = graph.input[0]
        dims = first.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and not dims[0].dim_param:
            out.append(Violation("dynamic-batch", first.name, f"input '{first.name}' has a fixed batch of "
                                                              f"{dims[0].dim_value}; export with a dynamic batch axis."))
    for t in consts.values():
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.append(Violation("embedded-weights", t.name, f"tensor '{t.name}' is stored as external data; "
                                                             "save with the weights embedded."))
    return out


def _out_channel_axis(op, node) -> int:
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul":
        return 1
    return 0  # Conv: [out, in, kh, kw]


def _check_weights(nodes, consts, producers, consumers, const_array) -> list[Violation]:
    """Per-channel scales on the output-channel axis for every weight DequantizeLinear."""
    out = []
    for i, n in enumerate(nodes):
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        is_weight = src in consts  # int8 weight stored directly
        if not is_weight and src in producers:  # float weight -> Q -> DQ
            q = producers[src][1]
            is_weight = q.op_type == "QuantizeLinear" and q.input[0] in consts
        if not is_weight:
            continue
        targets = list(consumers.get(n.output[0], []))
        for _, c, _k in list(targets):  # follow one Transpose/Reshape
            if c.op_type in PASS_THROUGH:
                targets += consumers.get(c.output[0], [])
        for j, layer, k in targets:
            if layer.op_type not in WEIGHTED_OPS or k != 1:
                continue
            lname = _node_name(layer, j)
            scale = const_array(n.input[1]) if len(n.input) > 1 else None
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            want = _out_channel_axis(layer.op_type, layer)
            w = const_array(src) if src in consts else const_array(producers[src][1].input[0])
            channels = int(w.shape[want]) if w is not None and w.ndim > want else None
            if scale is None:
                continue  # reported as constant-scale already
            if scale.ndim == 0 or scale.size == 1 and (channels or 1) > 1:
                out.append(Violation("per-channel-weights", _node_name(n, i),
                                     f"weight of {layer.op_type} '{lname}' has one scale for the whole tensor; "
                                     f"expected one per output channel ({channels}) on axis {want}."))
            elif axis % max(1, (w.ndim if w is not None else 1)) != want:
                out.append(Violation("per-channel-weights", _node_name(n, i),
                                     f"weight of {layer.op_type} '{lname}' is quantized per channel on axis {axis}; "
                                     f"its output channels are on axis {want}."))
            elif channels is not None and scale.size != channels:
                out.append(Violation("per-channel-weights", _node_name(n, i),
                                     f"weight of {layer.op_type} '{lname}' has {scale.size} scales for {channels} "
                                     "output channels."))
    return out


def format_report(violations: list[Violation], path=None) -> str:
    """One line per violation: the rule, the node, and what is wrong."""
    head = f"{path}: " if path else ""
    if not violations:
        return f"{head}conforms to all {len(RULES)} QDQ rules."
    lines = [f"{head}{len(violations)} QDQ rule violation(s):"]
    lines += [f"  [{v.rule}] {v.node}: {v.detail}" for v in violations]
    return "\n".join(lines)
