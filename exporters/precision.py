"""Reduced-precision ONNX -> ONNX transforms of an FP32 model file, and the per-layer error they cause.

Each function reads an ONNX file and writes one (atomically, checked, metadata stamped), taking plain
arguments: paths, arrays of images, a method name, counts. Nothing here trains or imports torch; QAT,
which is a torch fine-tuning, is :mod:`pipeline.training.qat` and hands its graph to :func:`write_int8`.

- **FP16** (:func:`export_fp16`): weights and compute in FP16, FP32 input and output. It sits here, not in
  :mod:`exporters.onnx` (PyTorch -> ONNX), because it is a precision transform of the FP32 file just like
  INT8: same input, same kind of output, same error measure; the export stage calls it because TensorRT
  and onnxruntime want it beside the FP32 file, not because it is an export from PyTorch.
- **INT8 for TensorRT** (:func:`ptq`): *explicit-quantization* QDQ ONNX, the one INT8 form TensorRT 10 and
  11 both build (TensorRT 11 removed the implicit-INT8 calibrator API): int8 with zero point 0 for
  activations and weights, per-channel weight scales on the output-channel axis, no quantized (INT32)
  bias, constant scales, a dynamic batch axis. Every such file passes :func:`exporters.qdq.check_qdq`
  before it is written as final. It uses ``onnxruntime.quantization.quantize_static``: its calibrators are
  exactly the three methods users ask for (MinMax, Entropy, Percentile), it reads calibration batches
  through the small ``CalibrationDataReader`` interface (:class:`BatchReader`), and it writes QDQ directly.
- **INT8 for CPUs** (:func:`cpu_int8`): for CPU edge devices, not TensorRT: uint8 activations and int8
  weights (onnxruntime's U8S8 QDQ), which onnxruntime's CPU provider fuses into integer kernels; the layer
  that reads the image stays in float, which is faster (:func:`input_layers`). It is
  deliberately exempt from the TensorRT rules.
- **Per-layer SQNR** (:func:`per_layer_sqnr`): where a reduced-precision file loses accuracy, layer by layer.

A model the rules refuse raises :class:`QuantizationError` and nothing is written; a write the file system
refuses raises the plain ``OSError`` (the pipeline words both for its users).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from .atomic import scratch_path

log = logging.getLogger(__name__)


class QuantizationError(Exception):
    """The INT8 model was not written: the quantizer found nothing to quantize, or the result breaks the rules."""


class BatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array of images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str = "input", batch_size: int = 64):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._i = 0

    def get_next(self):
        if self._i >= len(self.images):
            return None
        batch = self.images[self._i : self._i + self.batch_size]
        self._i += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):
        self._i = 0


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` of ``images`` drawn without replacement by ``seed``, kept in their original order, as float32.

    The pipeline passes the training split, never the test set, so calibration cannot leak test images.
    """
    n = len(images)
    if not 1 <= count <= n:
        raise ValueError(f"cannot draw {count} calibration images from {n}")
    idx = np.random.default_rng(seed).choice(n, size=count, replace=False)
    return np.asarray(np.asarray(images)[np.sort(idx)], dtype=np.float32)


def _ort_quantize(fp32: Path, out: Path, images: np.ndarray, method: str, *, for_tensorrt: bool,
                  exclude: tuple[str, ...] = (), prepared: Path | None = None,
                  calibration_cache: Path | None = None) -> None:
    """``exclude``: node names left in float (onnxruntime's ``nodes_to_exclude``: no Q/DQ on their weights or
    inputs). The sensitivity analysis quantizes one model many times, so it passes ``prepared`` (``fp32`` already
    through :func:`prepare`) and ``calibration_cache`` (onnxruntime's ``calibration_cache_path``: the tensor ranges
    of the first call are saved there and loaded by the next; the calibrator sees every tensor whatever is
    excluded, so the ranges, and the files, are the same as a fresh calibration's)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}; got {method!r}")
    if for_tensorrt:
        act, extra, reduce_range = QuantType.QInt8, {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                     "QuantizeBias": False}, False
    else:  # onnxruntime CPU: u8 activations / s8 weights are what its integer kernels fuse. Weights get 7 bits
        # (reduce_range): x86 CPUs without VNNI multiply u8 x s8 pairs into saturating 16-bit sums (VPMADDUBSW),
        # which with full-range weights flipped 3 % of a quick model's predictions on this machine.
        act, extra, reduce_range = QuantType.QUInt8, {"WeightSymmetric": True}, True
    if method == "entropy":
        log.warning("--calib-method entropy: onnxruntime's quantize_static runs its entropy calibrator with 128 "
                    "histogram bins and 128 quantized bins, which leaves one candidate range, the full one, so the "
                    "result equals minmax (measured with onnxruntime 1.31); use percentile for clipped ranges")
    def quantize(source: Path) -> None:
        float_layers = [] if for_tensorrt else _input_layers(source)  # CPU: the first conv is faster in float
        quantize_static(
            str(source), str(out), BatchReader(images), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=methods[method],
            reduce_range=reduce_range, extra_options=extra,
            nodes_to_exclude=sorted(set(exclude) | set(float_layers)),
            calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
        )

    if prepared is not None:
        quantize(prepared)
        return
    # onnxruntime's recommended pre-pass: shape inference and graph clean-up before calibration
    scratch = out.with_name(out.name + ".pre.tmp")  # beside the temp file; a killed run's copy is swept
    try:
        prepare(fp32, scratch)
        quantize(scratch)
    finally:
        scratch.unlink(missing_ok=True)


def prepare(fp32: Path, out: Path) -> Path:
    """onnxruntime's recommended pre-pass before quantization (shape inference, graph clean-up); node names kept."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(out))
    return out


#: a Conv reading the image with at most this many input channels (per group) stays in float in the CPU form
FLOAT_FIRST_CONV_CHANNELS = 4


def input_layers(proto) -> list[str]:
    """Names of the Conv nodes that read a graph input (the image) directly with few input channels (at most
    :data:`FLOAT_FIRST_CONV_CHANNELS`): the layers the CPU form keeps in float. A Gemm/MatMul reading the
    input (an MLP's wide first layer) is not one of them.

    Why: the first conv of an image model has one (or three) input channels, so its int8 kernel has almost
    nothing to multiply per output and pays for quantizing the image and repacking its output; in float it
    is faster. Measured on the quick model (Intel Xeon, AVX2/FMA, AVX-512 VNNI, AVX-VNNI, AMX-INT8, one
    thread): batch-1 latency 1.65-1.76x FP32's with the first conv in float against 1.36-1.45x all int8,
    batch-256 throughput the same (1.6x), test accuracy within 0.03 pp. See docs/quantization.md, "CPU INT8 speed".
    """
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    inputs = {i.name for i in proto.graph.input} - set(shapes)
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[0] in inputs
            and len(shapes.get(n.input[1], [])) > 1 and shapes[n.input[1]][1] <= FLOAT_FIRST_CONV_CHANNELS]


def _input_layers(path: Path) -> list[str]:
    import onnx

    return input_layers(onnx.load(str(path)))


def write_int8(proto, final: Path, metadata: dict[str, str], *, tensorrt_rules: bool) -> Path:
    """Stamp ``metadata`` on a quantized ModelProto, verify the QDQ rules (TensorRT variants), write ``final``.

    Raises :class:`QuantizationError` (nothing written) when the rules are broken or nothing was quantized.
    """
    from .onnx import save_checked, set_metadata
    from .qdq import QDQCheckError, check_qdq, format_report

    set_metadata(proto, metadata)
    if tensorrt_rules:
        try:
            violations = check_qdq(proto)
        except QDQCheckError as e:  # e.g. the quantizer found no layer it could quantize
            raise QuantizationError(f"The INT8 model for {final.name} was not written: {e} The quantizer found "
                                    "no Conv/Linear layer it could quantize in this model.") from None
        if violations:
            raise QuantizationError(f"The INT8 model for {final.name} breaks the TensorRT QDQ rules, so it was not "
                                    f"written: {format_report(violations)}")
    return save_checked(proto, final)


def quantize_file(fp32: Path, final: Path, images: np.ndarray, method: str, metadata: dict[str, str], *,
                  for_tensorrt: bool, exclude: tuple[str, ...] = ()) -> Path:
    """Post-training quantization of an FP32 ONNX file into ``final``, calibrated on ``images`` by ``method``.

    ``for_tensorrt`` (the variant table's ``tensorrt`` column) picks the flavour: symmetric int8 activations
    placed as TensorRT's explicit quantization wants (and checked against its Q/DQ rules), or onnxruntime's
    CPU integer kernels (U8S8, 7-bit weights). :func:`ptq` and :func:`cpu_int8` name the two. ``exclude``
    names the nodes kept in float (a mixed-precision file: :mod:`exporters.sensitivity` chooses them).
    """
    import onnx

    final = Path(final)
    with scratch_path(final.with_suffix(".raw.onnx")) as raw:  # onnxruntime writes files, not protos
        _ort_quantize(Path(fp32), raw, images, method, for_tensorrt=for_tensorrt, exclude=tuple(exclude))
        proto = onnx.load(str(raw))
    return write_int8(proto, final, metadata, tensorrt_rules=for_tensorrt)


def ptq(fp32: Path, final: Path, images: np.ndarray, method: str, metadata: dict[str, str]) -> Path:
    """Post-training quantization of the FP32 ONNX for TensorRT, calibrated on ``images`` by ``method``."""
    return quantize_file(fp32, final, images, method, metadata, for_tensorrt=True)


def cpu_int8(fp32: Path, final: Path, images: np.ndarray, method: str, metadata: dict[str, str]) -> Path:
    """Post-training quantization of the FP32 ONNX for onnxruntime's CPU integer kernels (U8S8, 7-bit weights)."""
    return quantize_file(fp32, final, images, method, metadata, for_tensorrt=False)


def export_fp16(fp32_path: Path, path: Path, metadata: dict[str, str]) -> Path:
    """Convert an FP32 ONNX file to FP16 weights and compute, keeping FP32 input and output.

    TensorRT 11 builds FP16 engines only from such a model (its builder flag is
    gone), and onnxruntime's CPU provider runs it too (slower: it upcasts).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx_ir
    from onnx_ir.passes.common import TopologicalSortPass

    from .onnx import save_checked, set_metadata

    proto = onnx.load(str(fp32_path))
    proto16 = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    # the converter appends its input/output Casts at the end of the node list; ONNX requires topological order
    ir_model = onnx_ir.from_proto(proto16)
    TopologicalSortPass()(ir_model)
    proto16 = onnx_ir.to_proto(ir_model)
    set_metadata(proto16, metadata)
    return save_checked(proto16, path)


def layer_outputs(path: Path, images: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(node name, op type, output) of every Conv/Gemm/MatMul in graph order, via onnxruntime.

    The model is copied in memory with those outputs added as graph outputs,
    so FP32 and INT8 files of the same network can be compared layer by layer
    (their compute layers appear in the same order).
    """
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    layers = [(n.name or f"{n.op_type}_{i}", n.op_type, n.output[0])
              for i, n in enumerate(proto.graph.node) if n.op_type in ("Conv", "Gemm", "MatMul")]
    existing = {o.name for o in proto.graph.output}
    for _, _, tensor in layers:
        if tensor not in existing:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every layer visible
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [t for _, _, t in layers]
    outs = sess.run(names, {sess.get_inputs()[0].name: images})
    return [(name, op, out) for (name, op, _), out in zip(layers, outs)]


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 10*log10(sum(ref^2) / sum((ref-test)^2)), in dB."""
    noise = float(np.sum((reference.astype(np.float64) - test) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if not (math.isfinite(noise) and math.isfinite(signal)):
        return float("nan")
    return float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def per_layer_sqnr(fp32: Path, int8: Path, images: np.ndarray) -> list[dict]:
    """SQNR of each compute layer's output, INT8 model vs FP32 model, on the same images.

    The error is cumulative (each layer sees its quantized predecessors), which
    is what shows where accuracy is lost. ``sqnr_db`` is None (null in sqnr.json and report.json, which are
    strict JSON) where the SQNR is not a finite number: infinite (identical outputs) or undefined (NaN/inf
    outputs, logged as a warning; the validate stage then fails that variant).
    """
    ref, q = layer_outputs(fp32, images), layer_outputs(int8, images)
    if len(ref) != len(q):
        log.warning("SQNR: %s has %d compute layers, %s has %d; comparing the first %d in order",
                    fp32.name, len(ref), int8.name, len(q), min(len(ref), len(q)))
    rows = []
    for i, ((rn, op, r), (_, _, t)) in enumerate(zip(ref, q)):
        db = sqnr_db(r, t)
        if math.isnan(db):
            log.warning("SQNR: layer %d (%s) of %s gives NaN or infinite outputs", i, op, int8.name)
        rows.append({"layer": i, "name": rn, "op": op, "sqnr_db": round(db, 2) if math.isfinite(db) else None})
    return rows
