"""QDQ conformance check: is this INT8 ONNX file one TensorRT 10 and 11 will build as intended?

TensorRT 11 removed the implicit-INT8 calibrator API, so INT8 engines come only
from *explicit* quantization: QuantizeLinear/DequantizeLinear (Q/DQ) pairs in
the ONNX graph. TensorRT accepts only symmetric INT8 (zero point 0, type int8),
wants per-channel weight scales on the output-channel axis, needs constant
scales to fold the Q/DQ pairs into INT8 kernels, and its ONNX parser breaks on
a DequantizeLinear of an INT32 (quantized) bias. A QDQ file that breaks one of
these rules either fails to build or silently runs some layers in higher
precision; this module names each offending node so the user can fix the
exporter instead of guessing.

Every violation is collected (like optimum's ``validate_model_outputs``
collects every mismatch) rather than stopping at the first one.

Only ``onnx``, ``numpy`` and the standard library are imported: the check must
run on a Jetson or in a CI job that has neither torch nor onnxruntime.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
PASS_THROUGH = ("Transpose", "Reshape", "Identity")  # followed at most once between a weight DQ and its layer
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Violation:
    rule: str  # a key of RULES
    node: str  # offending node, initializer or input name; never empty
    detail: str  # what is wrong and what was expected


class QDQCheckError(Exception):
    """The input cannot be checked at all (missing, not ONNX, or a float model with no Q/DQ nodes)."""


def _dtype_name(elem_type) -> str:
    if elem_type is None:
        return "unknown"
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    except Exception:  # an elem type this onnx version does not know
        return f"type {elem_type}"


def _load(model) -> onnx.ModelProto:
    """A ModelProto as is, or a path loaded *without* following external data (so it can be reported)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise QDQCheckError(f"Expected an onnx.ModelProto or a path to a .onnx file, got {type(model).__name__}.")
    path = Path(model)
    if not path.exists():
        raise QDQCheckError(f"{path} does not exist.")
    if not path.is_file():
        raise QDQCheckError(f"{path} is not a file, so it is not an ONNX model.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise QDQCheckError(f"{path} is not an ONNX model (it could not be parsed: {type(e).__name__}).") from None
    # protobuf happily parses many byte strings as a message made only of unknown fields
    if not proto.HasField("graph") or not proto.graph.node:
        raise QDQCheckError(f"{path} is not an ONNX model (no graph nodes after parsing).")
    if not proto.opset_import:
        raise QDQCheckError(f"{path} is not an ONNX model (no opset import; the file may be truncated).")
    return proto


def _graphs(graph, prefix=""):
    """The main graph and every subgraph (If/Loop/Scan bodies), with a prefix for unnamed-node ids."""
    yield graph, prefix
    for i, n in enumerate(graph.node):
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for s in subs:
                yield from _graphs(s, f"{prefix}{n.name or f'{n.op_type}_{i}'}/{a.name}/")


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_tensor(node):
    """The TensorProto a ``Constant`` node holds, or None (sparse or string values are not Q/DQ parameters)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name == "value_float":
            return helper.make_tensor(node.output[0], TensorProto.FLOAT, [], [a.f])
        if a.name == "value_floats":
            return helper.make_tensor(node.output[0], TensorProto.FLOAT, [len(a.floats)], list(a.floats))
        if a.name == "value_int":
            return helper.make_tensor(node.output[0], TensorProto.INT64, [], [a.i])
        if a.name == "value_ints":
            return helper.make_tensor(node.output[0], TensorProto.INT64, [len(a.ints)], list(a.ints))
    return None


class _Graph:
    """Lookup tables over the whole model: constants, producers, consumers and known element types."""

    def __init__(self, proto: onnx.ModelProto):
        self.main = proto.graph
        self.nodes: list[tuple[str, onnx.NodeProto]] = []  # (display name, node)
        self.consts: dict[str, TensorProto] = {}
        self.const_owner: dict[str, str] = {}  # tensor name -> initializer / Constant node name
        self.elem_types: dict[str, int] = {}
        for g, prefix in _graphs(proto.graph):
            for t in g.initializer:
                self.consts[t.name] = t
                self.const_owner[t.name] = t.name
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                    self.elem_types[vi.name] = vi.type.tensor_type.elem_type
            for i, n in enumerate(g.node):
                name = n.name or f"{prefix}{n.op_type}_{i}"
                self.nodes.append((name, n))
                if n.op_type == "Constant" and n.output:
                    t = _constant_tensor(n)
                    if t is not None:
                        self.consts[n.output[0]] = t
                        self.const_owner[n.output[0]] = name
        self.names = {id(n): name for name, n in self.nodes}
        self.producers = {o: n for _, n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[tuple[str, onnx.NodeProto, int]]] = {}
        for name, n in self.nodes:
            for k, inp in enumerate(n.input):
                if inp:
                    self.consumers.setdefault(inp, []).append((name, n, k))

    def is_external(self, name: str) -> bool:
        t = self.consts.get(name)
        return t is not None and t.data_location == TensorProto.EXTERNAL

    def array(self, name: str):
        """The constant's values, or None when it is not a constant, is external, or cannot be decoded."""
        t = self.consts.get(name)
        if t is None or t.data_location == TensorProto.EXTERNAL:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:
            return None

    def shape(self, name: str):
        """The constant's shape from its dims (known even for external data), or None."""
        t = self.consts.get(name)
        return tuple(int(d) for d in t.dims) if t is not None else None

    def elem_type(self, name: str):
        """Element type of a tensor where the graph says it: constant, Q output, or value_info."""
        if name in self.consts:
            return self.consts[name].data_type
        q = self.producers.get(name)
        if q is not None and q.op_type == "QuantizeLinear":
            return _q_output_type(q, self)
        return self.elem_types.get(name)


def _q_output_type(q, g: _Graph):
    """QuantizeLinear's output type: its zero point's type, else ``output_dtype`` (opset 21), else uint8."""
    if len(q.input) > 2 and q.input[2]:
        zp = q.input[2]
        return g.consts[zp].data_type if zp in g.consts else g.elem_types.get(zp)
    return _attr(q, "output_dtype", 0) or TensorProto.UINT8


def check_qdq(model) -> list[Violation]:
    """All violations of :data:`RULES` in ``model`` (a ModelProto or a path); an empty list means it conforms.

    Raises :class:`QDQCheckError` when the input cannot be checked at all: a missing file, a file that is not
    ONNX, or a float model without a single QuantizeLinear/DequantizeLinear node.
    """
    proto = _load(model)
    g = _Graph(proto)
    qdq = [(name, n) for name, n in g.nodes if n.op_type in QDQ_OPS]
    if not qdq:
        raise QDQCheckError(
            "This is a float (FP32/FP16) model with no Q/DQ nodes (QuantizeLinear/DequantizeLinear), "
            "so there is nothing to check; give an INT8 QDQ model."
        )
    out: list[Violation] = []
    for name, n in qdq:
        out += _check_node(name, n, g)
    out += _check_weights(g)
    out += _check_batch(g.main)
    out += _check_embedded(g)
    return list(dict.fromkeys(out))  # drop exact duplicates (a DQ feeding the same layer twice), keep order


def _check_node(name: str, n, g: _Graph) -> list[Violation]:
    """Scale, zero point and input type of one QuantizeLinear/DequantizeLinear."""
    out = []
    x = n.input[0] if n.input else ""
    x_type = g.elem_type(x) if n.op_type == "DequantizeLinear" else None
    int32_input = x_type == TensorProto.INT32
    if int32_input:
        # TensorRT's parser rejects a DQ of INT32: it only dequantizes int8/fp8/int4 and biases must stay float
        out.append(Violation("no-int32-bias", name, f"DequantizeLinear of INT32 '{x}' (a quantized bias); TensorRT's "
                                                    "parser rejects it, keep biases in float (QuantizeBias=False)."))

    scale_name = n.input[1] if len(n.input) > 1 else ""
    if not scale_name:
        out.append(Violation("constant-scale", name, f"{n.op_type} has no scale input; a constant scale is required."))
    elif scale_name not in g.consts:
        out.append(Violation("constant-scale", name, f"scale '{scale_name}' is not a constant (initializer or "
                                                     "Constant node); TensorRT needs constant scales to fold Q/DQ "
                                                     "into INT8 kernels."))
    elif not g.is_external(scale_name):  # external scales: reported by embedded-weights, values unknown here
        scale = g.array(scale_name)
        if scale is None or scale.size == 0 or scale.dtype.kind != "f":
            out.append(Violation("constant-scale", name, f"scale '{scale_name}' is not a non-empty float tensor."))
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            out.append(Violation("constant-scale", name, f"scale '{scale_name}' has values that are not finite and "
                                                         "> 0; every scale must be a finite positive number."))

    zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else ""
    if zp_name:
        if zp_name not in g.consts:
            out.append(Violation("constant-scale", name, f"zero point '{zp_name}' is not a constant (initializer or "
                                                         "Constant node)."))
        else:
            zp_type = g.consts[zp_name].data_type
            if zp_type != TensorProto.INT8 and not int32_input:  # an INT32 DQ is already reported above
                out.append(Violation("int8", name, f"zero point '{zp_name}' is {_dtype_name(zp_type)}, expected int8 "
                                                   "(TensorRT builds INT8 only from int8 Q/DQ)."))
            zp = g.array(zp_name)
            try:
                nonzero = zp is not None and bool(np.any(zp.astype(np.float64) != 0))
            except (TypeError, ValueError):
                nonzero = False
            if nonzero:
                out.append(Violation("symmetric", name, f"zero point '{zp_name}' is not 0 (asymmetric quantization); "
                                                        "TensorRT supports only symmetric INT8, expected all zeros."))
    elif n.op_type == "QuantizeLinear":
        q_type = _q_output_type(n, g)
        if q_type != TensorProto.INT8:
            out.append(Violation("int8", name, "QuantizeLinear has no zero point, so by the ONNX spec it outputs "
                                               f"{_dtype_name(q_type)}; give an int8 zero point of 0."))
    elif x_type is not None and x_type not in (TensorProto.INT8, TensorProto.INT32):
        out.append(Violation("int8", name, f"DequantizeLinear has no zero point and its input '{x}' is "
                                           f"{_dtype_name(x_type)}, so it dequantizes {_dtype_name(x_type)}; "
                                           "expected int8."))
    return out


def _out_channel_axis(layer, ndim) -> int:
    """Output-channel axis of a layer's weight (input 1) as the layer sees it."""
    op = layer.op_type
    if op == "ConvTranspose":
        return 1  # [in, out/groups, kh, kw]
    if op == "Gemm":
        return 0 if _attr(layer, "transB", 0) else 1  # transB=1: [out, in]; transB=0: [in, out]
    if op == "MatMul":
        return max(ndim - 1, 0) if ndim else 1  # [in, out] (or [..., in, out])
    return 0  # Conv: [out, in, kh, kw]


def _reshape_target(via, src_shape, g: _Graph):
    """The resolved output shape of a Reshape of a constant of ``src_shape``, or None."""
    target = g.array(via.input[1]) if len(via.input) > 1 else None
    if target is None or src_shape is None:
        return None
    target = [int(d) for d in np.ravel(target)]
    if not _attr(via, "allowzero", 0):
        target = [src_shape[i] if d == 0 and i < len(src_shape) else d for i, d in enumerate(target)]
    total = int(np.prod(src_shape)) if src_shape else 1
    if target.count(-1) == 1:
        known = int(np.prod([d for d in target if d != -1])) if len(target) > 1 else 1
        if known <= 0 or total % known:
            return None
        target[target.index(-1)] = total // known
    if any(d < 0 for d in target) or int(np.prod(target)) != total:
        return None
    return target


def _expected_axes(layer, via, w_shape, g: _Graph):
    """(axes of the DQ tensor that hold the layer's output channels, channel count); (None, None) if unknown."""
    if w_shape is None:
        return None, None
    ndim = len(w_shape)
    if via is None or via.op_type == "Identity":
        want = _out_channel_axis(layer, ndim)
        return ([want], w_shape[want]) if want < ndim else (None, None)
    if via.op_type == "Transpose":
        perm = list(_attr(via, "perm", None) or reversed(range(ndim)))
        want = _out_channel_axis(layer, len(perm))
        if want >= len(perm) or len(perm) != ndim:
            return None, None
        src = perm[want]  # output dim i of a Transpose is input dim perm[i]
        return [src], w_shape[src]
    target = _reshape_target(via, w_shape, g)  # Reshape: which source axis lines up with the channel axis
    if target is None:
        return None, None
    want = _out_channel_axis(layer, len(target))
    if want >= len(target):
        return None, None
    channels, before = target[want], int(np.prod(target[:want]))
    axes = [a for a in range(ndim) if w_shape[a] == channels and int(np.prod(w_shape[:a])) == before]
    return axes, channels


def _check_weights(g: _Graph) -> list[Violation]:
    """Per-channel scales on the output-channel axis for every weight DequantizeLinear.

    A weight DQ dequantizes a constant (int8 initializer / Constant node), or the output of a QuantizeLinear of a
    constant float weight, and feeds input 1 of Conv/ConvTranspose/Gemm/MatMul, directly or through one
    Transpose/Reshape. TensorRT quantizes weights per output channel; a per-tensor weight scale (or one on the
    wrong axis) costs accuracy or makes TensorRT fall back to a slower layer.
    """
    out = []
    for name, n in g.nodes:
        if n.op_type != "DequantizeLinear" or not n.input or len(n.input) < 2:
            continue
        src = n.input[0]
        weight = src if src in g.consts else None
        if weight is None and src in g.producers:  # float weight -> Q -> DQ
            q = g.producers[src]
            if q.op_type == "QuantizeLinear" and q.input and q.input[0] in g.consts:
                weight = q.input[0]
        if weight is None or g.elem_type(src) == TensorProto.INT32:  # INT32: a bias, reported by no-int32-bias
            continue
        targets = []
        for _, c, k in g.consumers.get(n.output[0], []):
            targets.append((c, k, None))
            if c.op_type in PASS_THROUGH and k == 0:
                targets += [(c2, k2, c) for _, c2, k2 in g.consumers.get(c.output[0], [])]
        w_shape = g.shape(weight)
        scale_shape = g.shape(n.input[1])  # from dims, so known even for external data
        for layer, k, via in targets:
            if layer.op_type not in WEIGHTED_OPS or k != 1 or scale_shape is None:
                continue  # a non-constant scale is reported as constant-scale
            lname = g.names[id(layer)]
            what = f"weight of {layer.op_type} '{lname}'"
            axes, channels = _expected_axes(layer, via, w_shape, g)
            want = f"axis {axes[0]}" if axes and len(axes) == 1 else "the output-channel axis"
            scale_size = int(np.prod(scale_shape)) if scale_shape else 1
            axis = _attr(n, "axis", 1)  # ONNX default is 1, which is wrong for Conv/Gemm(transB=1) weights
            if w_shape and axis < 0:
                axis += len(w_shape)
            if _attr(n, "block_size", 0) or len(scale_shape) > 1:
                out.append(Violation("per-channel-weights", name, f"{what} uses blocked quantization (scale shape "
                                                                  f"{list(scale_shape)}); expected a 1-D per-channel "
                                                                  f"scale on {want}."))
            elif len(scale_shape) == 0 or (scale_size == 1 and channels != 1):
                out.append(Violation("per-channel-weights", name, f"{what} has one scale for the whole tensor "
                                                                  f"(per-tensor); expected one per output channel "
                                                                  f"({channels if channels else '?'}) on {want}."))
            elif axes is not None and axis not in axes:
                out.append(Violation("per-channel-weights", name, f"{what} is quantized per channel on axis {axis}; "
                                                                  f"its output channels are on {want}."))
            elif channels and scale_size != channels:
                out.append(Violation("per-channel-weights", name, f"{what} has {scale_size} scales for {channels} "
                                                                  "output channels; expected one per channel."))
    return out


def _check_batch(graph) -> list[Violation]:
    """The first real input (not an initializer listed as input, as old exporters did) needs a symbolic batch."""
    inits = {t.name for t in graph.initializer}
    first = next((i for i in graph.input if i.name not in inits), None)
    if first is None or not first.type.HasField("tensor_type") or not first.type.tensor_type.HasField("shape"):
        return []
    dims = first.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and not dims[0].dim_param:
        return [Violation("dynamic-batch", first.name, f"input '{first.name}' has a fixed batch of "
                                                       f"{dims[0].dim_value}; expected a symbolic batch dimension "
                                                       "(export with a dynamic batch axis) so one engine serves "
                                                       "every batch size in its optimization profile.")]
    return []


def _check_embedded(g: _Graph) -> list[Violation]:
    """External data is not followed here; a file that needs a side file breaks when copied alone to a device."""
    out = []
    for tname, t in g.consts.items():
        if t.data_location == TensorProto.EXTERNAL:
            where = next((e.value for e in t.external_data if e.key == "location"), "?")
            owner = g.const_owner.get(tname) or tname
            out.append(Violation("embedded-weights", owner, f"tensor '{tname}' is stored as external data "
                                                            f"('{where}'); expected weights embedded in the file."))
    return out


def format_report(violations: list[Violation], path=None) -> str:
    """One line per violation naming the rule and the node, under a one-line header."""
    head = f"{path}: " if path else ""
    if not violations:
        return f"{head}conforms to all {len(RULES)} QDQ rules."
    lines = [f"{head}{len(violations)} QDQ rule violation(s):"]
    lines += [f"  [{v.rule}] {v.node}: {v.detail}" for v in violations]
    return "\n".join(lines)
