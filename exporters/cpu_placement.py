"""A TensorRT-placed INT8 QDQ file re-placed in onnxruntime's fused CPU form, keeping the scales it learned.

Why: the QAT file (:mod:`pipeline.training.qat`) is written for TensorRT: symmetric int8 activations, a Q/DQ pair on
each layer's *input* only, the ReLU left in float between a Conv and the next Q. onnxruntime's CPU provider
fuses ``DQ -> Conv -> Q`` into QLinearConv only when the layer's *output* is quantized too, so that file runs
every layer as dequantize -> float Conv -> quantize, slower than FP32. The PTQ CPU file
(:func:`exporters.precision.cpu_int8`) has the fusable placement (uint8 activations, ReLU folded into the
Conv's output range by a zero point of 0) but PTQ's calibrated scales, not QAT's fine-tuned weights.

:func:`qat_cpu_int8` takes the QDQ file apart into its float graph (weights dequantized from their int8
values, so they lie exactly on the learned grid) plus each quantized tensor's learned scale, and hands both
to onnxruntime's quantizer in the CPU form: the learned scales become ``TensorQuantOverrides``, so the
quantizer places Q/DQ where the CPU kernels fuse them and uses QAT's grids instead of calibrating. The
activation grids are QAT's: a tensor known to be non-negative (after a ReLU, and through MaxPool,
ReduceMean or Reshape of one) gets uint8 with zero point 0 and QAT's scale, which is QAT's int8 grid on
[0, 127 s] (and lets the quantizer fold the ReLU); any other tensor gets zero point 128, QAT's int8 grid
shifted to uint8. Weights are re-quantized per channel to 7 bits by default, as the PTQ CPU file's are
(:func:`cpu_form` says why, and keeps QAT's 8-bit weights exactly on request).
Tensors QAT did not quantize (a Conv's output before its ReLU is folded, the logits) are calibrated on the
images given, the way the PTQ CPU file is. As in the PTQ CPU file, a narrow conv reading the image stays in
float (:func:`exporters.precision.input_layers` says why).

Only ``onnx``, ``numpy`` and (when called) onnxruntime's quantizer are imported; nothing here trains.
:func:`exporters.qdq.check_qdq` does not apply to the result: like the PTQ CPU file it is not for TensorRT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import scratch_path

#: ops that keep a non-negative input non-negative (so a uint8 zero point of 0 loses nothing)
_KEEPS_SIGN = ("MaxPool", "ReduceMean", "Reshape", "Flatten", "AveragePool", "GlobalAveragePool", "Identity")


def split_qdq(proto):
    """(float ModelProto, overrides): the QDQ graph without its Q/DQ nodes, and what they held.

    Weight ``DequantizeLinear`` nodes of constant int8 tensors become float initializers (named as the DQ's
    output, so their consumers are unchanged); each activation ``QuantizeLinear -> DequantizeLinear`` pair
    is removed and its consumers read the float tensor again. ``overrides`` maps each such tensor to
    onnxruntime's ``TensorQuantOverrides`` entry in the CPU form (see the module docstring).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never edit the caller's copy
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    consts = dict(inits)
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = next(a.t for a in n.attribute if a.name == "value")

    def arr(name):
        return numpy_helper.to_array(consts[name])

    producers = {o: n for n in g.node for o in n.output}
    rename: dict[str, str] = {}  # a removed DQ's output -> the float tensor its consumers read instead
    drop, new_inits, overrides, scales = set(), [], {}, {}
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        src, scale = n.input[0], arr(n.input[1])
        zp = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros_like(scale, dtype=np.int8)
        if src in inits:  # a weight: int8 values x per-channel scale
            q = arr(src).astype(np.float32)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            if scale.ndim:
                shape[axis] = -1
            w = (q - zp.astype(np.float32).reshape(shape)) * scale.astype(np.float32).reshape(shape)
            new_inits.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
            if scale.ndim:
                overrides[n.output[0]] = [{"axis": axis, "scale": np.array(s, np.float32),
                                           "zero_point": np.array(0, np.int8)} for s in scale.astype(np.float32)]
            drop.add(id(n))
            continue
        q = producers.get(src)
        if q is None or q.op_type != "QuantizeLinear":
            continue
        rename[n.output[0]] = q.input[0]
        # the same grid in uint8: an int8 value v is the uint8 value v + 128
        scales[q.input[0]] = (float(scale), int(zp) + (128 if zp.dtype == np.int8 else 0))
        drop.update((id(n), id(q)))
    g.ClearField("initializer")
    g.initializer.extend([t for t in inits.values() if t.name in _used(g, drop, rename)] + new_inits)
    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
    for out in g.output:  # a graph output that was a DQ's: the float tensor under the output's name
        if out.name in rename:
            kept.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name], name=f"{out.name}_float"))
    g.ClearField("node")
    g.node.extend(kept)
    nonneg = _non_negative(kept)
    for tensor, (s, zp) in scales.items():
        overrides[tensor] = [{"scale": np.array(s, np.float32), "zero_point": np.array(0 if tensor in nonneg else zp,
                                                                                      np.uint8)}]
    return proto, overrides


def _used(g, drop, rename) -> set[str]:
    return {rename.get(i, i) for n in g.node if id(n) not in drop for i in n.input}


def _non_negative(nodes) -> set[str]:
    """Tensors that cannot be negative: ReLU outputs and what the sign-keeping ops make of them."""
    out: set[str] = set()
    for n in nodes:  # graph order is topological, so one pass sees every producer first
        if n.op_type == "Relu" or (n.op_type in _KEEPS_SIGN and n.input and n.input[0] in out):
            out.update(n.output)
    return out


def cpu_form(qdq: Path, scratch_beside: Path, images: np.ndarray, *, weight_bits: int = 7,
             float_nodes: tuple[str, ...] | None = None):
    """The CPU-form INT8 ModelProto of the QDQ file ``qdq``, with its learned scales (nothing kept on disk).

    ``images`` calibrate only the tensors the QDQ file left in float. ``weight_bits`` 7 (the default, as
    :func:`exporters.precision.cpu_int8`) re-quantizes the learned weights to 7 bits per channel
    (onnxruntime's ``reduce_range``): x86 CPUs without VNNI multiply u8 x s8 pairs into saturating 16-bit
    sums, and 8-bit weights can overflow them; 8 keeps QAT's int8 weights exactly (safe on VNNI, AMX and
    ARM dot-product CPUs). Both gave the same test accuracy within 0.05 pp on the quick run. ``float_nodes``
    (Conv/Gemm node names of the float graph) stay in float; None: :func:`exporters.precision.input_layers`, as the PTQ CPU file.
    Scratch files go beside ``scratch_beside``.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .precision import BatchReader

    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits}")
    float_proto, overrides = split_qdq(onnx.load(str(qdq)))
    if weight_bits == 7:  # keep only the activations' learned grids; weights get 7-bit per-channel scales
        overrides = {k: v for k, v in overrides.items() if "axis" not in v[0]}
    beside = Path(scratch_beside)
    with scratch_path(beside.with_suffix(".float.onnx")) as fl, scratch_path(beside.with_suffix(".pre.onnx")) as pre, \
            scratch_path(beside.with_suffix(".raw.onnx")) as raw:
        onnx.save(float_proto, str(fl))
        quant_pre_process(str(fl), str(pre))
        if float_nodes is None:
            from .precision import input_layers

            float_nodes = input_layers(onnx.load(str(pre)))
        quantize_static(str(pre), str(raw), BatchReader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=weight_bits == 7, nodes_to_exclude=list(float_nodes),
                        extra_options={"WeightSymmetric": True, "TensorQuantOverrides": overrides})
        return onnx.load(str(raw))


def qat_cpu_int8(qdq: Path, final: Path, images: np.ndarray, metadata: dict[str, str]) -> Path:
    """Write ``final`` (atomically, checked, ``metadata`` stamped): the QDQ file ``qdq`` (the QAT export) in
    onnxruntime's fused CPU form (:func:`cpu_form`)."""
    from .precision import write_int8

    return write_int8(cpu_form(qdq, final, images), Path(final), metadata, tensorrt_rules=False)
