"""Quantize stage: INT8 by post-training quantization and by quantization-aware training.

Both produce *explicit-quantization* QDQ ONNX, the one INT8 form TensorRT 10
and 11 both build (TensorRT 11 removed the implicit-INT8 calibrator API):
int8 with zero point 0 for activations and weights, per-channel weight
scales on the output-channel axis, no quantized (INT32) bias, constant
scales, a dynamic batch axis. Every such file passes
:func:`exporters.qdq.check_qdq` before it is written as final.

- **PTQ** uses ``onnxruntime.quantization.quantize_static`` on the FP32 ONNX:
  its calibrators are exactly the three methods users ask for (MinMax,
  Entropy, Percentile), it reads calibration batches through the small
  ``CalibrationDataReader`` interface, and it writes QDQ directly.
- **QAT** uses torchao's pt2e flow (``prepare_qat_pt2e`` -> fine-tune ->
  ``convert_pt2e``) with a symmetric-int8 quantizer config, then the dynamo
  ONNX exporter, which turns the quantize/dequantize ops into Q/DQ nodes.
- **onnx-int8-cpu** is for CPU edge devices, not TensorRT: uint8 activations
  and int8 weights (onnxruntime's U8S8 QDQ), which onnxruntime's CPU provider
  fuses into integer kernels. It is deliberately exempt from the TensorRT rules.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np

from .config import QuantConfig
from .errors import PipelineError
from .layout import atomic_path

log = logging.getLogger(__name__)


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


def calibration_images(train_x, cfg: QuantConfig) -> np.ndarray:
    """``cfg.calib_size`` images drawn (seeded) from the training split, never the test set."""
    n = len(train_x)
    if cfg.calib_size > n:
        raise PipelineError(
            f"--calib-size {cfg.calib_size} is larger than the training split ({n} images); "
            f"use at most {n} (512 to 2,048 is plenty for MNIST)."
        )
    idx = np.random.default_rng(cfg.calib_seed).choice(n, size=cfg.calib_size, replace=False)
    return np.asarray(train_x.numpy()[np.sort(idx)], dtype=np.float32)


def _ort_quantize(fp32: Path, out: Path, images: np.ndarray, method: str, *, for_tensorrt: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
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
    # onnxruntime's recommended pre-pass: shape inference and graph clean-up before calibration
    prepared = out.with_name(out.name + ".pre.tmp")  # beside the temp file; a killed run's copy is swept
    try:
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared), str(out), BatchReader(images), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=methods[method],
            reduce_range=reduce_range, extra_options=extra,
        )
    finally:
        prepared.unlink(missing_ok=True)


def _finish(tmp_model: Path, final: Path, metadata: dict, *, tensorrt_rules: bool) -> Path:
    """Stamp metadata, verify the QDQ rules (TensorRT variants), then write ``final`` atomically."""
    import onnx

    from exporters.onnx import save_checked, set_metadata
    from exporters.qdq import QDQCheckError, check_qdq, format_report

    proto = onnx.load(str(tmp_model))
    set_metadata(proto, metadata)
    if tensorrt_rules:
        try:
            violations = check_qdq(proto)
        except QDQCheckError as e:  # e.g. the quantizer found no layer it could quantize
            raise PipelineError(f"The INT8 model for {final.name} was not written: {e} The quantizer found "
                                "no Conv/Linear layer it could quantize in this model.") from None
        if violations:
            raise PipelineError(f"The INT8 model for {final.name} breaks the TensorRT QDQ rules, so it was not "
                                f"written: {format_report(violations)}")
    return save_checked(proto, final)


def ptq(fp32: Path, final: Path, images: np.ndarray, cfg: QuantConfig, metadata: dict) -> Path:
    """Post-training quantization of the FP32 ONNX, calibrated on ``images``."""
    with atomic_path(final.with_suffix(".raw.onnx")) as tmp:
        _ort_quantize(fp32, tmp, images, cfg.calib_method, for_tensorrt=True)
        return _finish(tmp, final, metadata, tensorrt_rules=True)


def cpu_int8(fp32: Path, final: Path, images: np.ndarray, cfg: QuantConfig, metadata: dict) -> Path:
    with atomic_path(final.with_suffix(".raw.onnx")) as tmp:
        _ort_quantize(fp32, tmp, images, cfg.calib_method, for_tensorrt=False)
        return _finish(tmp, final, metadata, tensorrt_rules=False)


def symmetric_int8_quantizer(is_qat: bool):
    """torchao's x86 quantizer with TensorRT's scheme: int8, zero point 0, per-channel weights (axis 0).

    The stock x86 config uses uint8 asymmetric activations, which TensorRT rejects.
    """
    import torch
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationSpec
    from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    eps = {"eps": 2**-12}
    if is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **eps)
        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **eps)
    else:
        act_ctr, w_ctr = HistogramObserver.with_args(**eps), PerChannelMinMaxObserver.with_args(**eps)
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                           is_dynamic=False, observer_or_fake_quant_ctr=act_ctr)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=w_ctr)
    return X86InductorQuantizer().set_global(QuantizationConfig(act, act, weight, None, is_qat))


def fold_batchnorm(model):
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` into the conv.

    QAT then fine-tunes exactly the weights that get deployed, and torchao's
    convert skips its conv-BN re-folding pass (about 20 s of pattern tracing on
    a 2-core CPU). BatchNorms elsewhere (custom user models) are left to torchao.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = model.eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = torch.nn.Identity()
    return model


def qat(model, splits, cfg: QuantConfig, final: Path, metadata: dict, opset: int, progress=None) -> Path:
    """Quantization-aware fine-tuning from the FP32 weights, then QDQ ONNX export."""
    import torch
    import torch.nn.functional as F
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from exporters.onnx import ExportError, torch_to_onnx_proto

    from .train import check_loss

    torch.manual_seed(cfg.calib_seed)
    model = fold_batchnorm(model)
    example = splits.train_x[:2]
    try:
        graph = torch.export.export(model.train(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
        prepared = prepare_qat_pt2e(graph, symmetric_int8_quantizer(is_qat=True))
    except Exception as e:  # torch.export / the quantizer reject some user models
        raise PipelineError(
            f"QAT could not prepare this model ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "torchao's pt2e quantizer needs a model torch.export can trace; use --quant ptq or --quant none."
        ) from None
    x, y = splits.train_x, splits.train_y
    n = min(len(x), cfg.qat_max_images) if cfg.qat_max_images else len(x)
    steps = cfg.qat_epochs * math.ceil(n / 128)
    opt = torch.optim.SGD(prepared.parameters(), lr=cfg.qat_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(cfg.calib_seed)
    task = progress.add_task("QAT", total=steps) if progress else None
    for epoch in range(cfg.qat_epochs):
        move_exported_model_to_train(prepared)
        perm = torch.randperm(len(x), generator=gen)[:n]
        for i in range(0, n, 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(prepared(x[idx]), y[idx])
            value = float(loss.detach())
            check_loss(value, "QAT fine-tuning", epoch + 1, cfg.qat_epochs, i // 128 + 1, math.ceil(n / 128),
                       f"--qat-lr (now {cfg.qat_lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress:
                progress.update(task, advance=1, description=f"QAT epoch {epoch + 1}/{cfg.qat_epochs} loss {value:.4f}")
    if progress:
        progress.remove_task(task)
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    try:
        with warnings.catch_warnings():  # the converted graph keeps training=True; its ops are already eval-mode
            warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
            proto = torch_to_onnx_proto(converted, opset, example=splits.train_x[:2])
    except ExportError as e:
        raise PipelineError(f"Could not export the QAT model to ONNX: {e}") from None
    with atomic_path(final.with_suffix(".raw.onnx")) as tmp:
        import onnx

        onnx.save_model(proto, str(tmp))
        return _finish(tmp, final, metadata, tensorrt_rules=True)


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
