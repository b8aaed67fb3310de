"""Stage ``quantize``: INT8 QDQ ONNX by PTQ (onnxruntime) and QAT (torchao), the CPU INT8 variants, SQNR.

The ONNX -> ONNX work (PTQ, CPU INT8, SQNR) is :mod:`exporters.precision`, the QAT file in the CPU form
:mod:`exporters.cpu_placement`; QAT, a torch fine-tuning, is :mod:`pipeline.training.qat`; the per-layer sensitivity on
validation accuracy, and the layers a PTQ file keeps in FP32 under ``--int8-budget``, are :mod:`pipeline.measure.budget`.
This module chooses the calibration images and words errors; the files are the variant rows whose ``recipe`` is one
registered here (``ptq``, ``qat``, ``ptq-cpu``, ``qat-cpu``: :mod:`pipeline.stages.recipes`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.store import checkpoint
from pipeline.config import QuantConfig, stamp
from pipeline.errors import PipelineError
from pipeline.store.paths import refused_writes, write_json
from pipeline import variants
from . import recipes
from .context import Context

if TYPE_CHECKING:
    import numpy as np

    from pipeline.measure.budget import Sensitivity

log = logging.getLogger(__name__)
recipe = recipes.registrar("quantize")


def key(ctx: Context) -> dict:
    # QAT fine-tunes at the training batch size, shuffled by the training seed (see pipeline.training.qat)
    train = ctx.cfg.train
    return {"data": ctx.sha(ctx.rd.data_summary), "checkpoint": ctx.sha(ctx.rd.checkpoint),
            "fp32": ctx.sha(_fp32_file(ctx)), "quant": stamp(ctx.cfg.quant),
            "opset": ctx.cfg.export.opset, "qat": {"batch_size": train.batch_size, "seed": train.seed},
            "rows": recipes.key(ctx, "quantize")}


def calibration_images(train_x, cfg: QuantConfig) -> np.ndarray:
    """``cfg.calib_size`` images drawn (by ``cfg.calib_seed``) from the training split, never the test set."""
    from exporters.precision import calibration_sample

    n = len(train_x)
    if cfg.calib_size > n:
        raise PipelineError(
            f"--calib-size {cfg.calib_size} is larger than the training split ({n} images); "
            f"use at most {n} (512 to 2,048 is plenty for MNIST)."
        )
    return calibration_sample(train_x.numpy(), cfg.calib_size, cfg.calib_seed)


def _fp32_file(ctx: Context) -> Path:
    """The FP32 ONNX file every INT8 file is quantized from (PTQ, SQNR, sensitivity): the ``fp32`` recipe's row."""
    return ctx.rd.export_file(next(v.file for v in variants.VARIANTS if v.recipe == "fp32"))


#: the rows are made grouped by the QuantConfig switch that builds them, in this order, and in table order within a
#: switch: so a QAT row's CPU form follows the QAT file it converts, and sqnr.json lists them in this order
SWITCHES = (None, "ptq", "qat", "cpu")


@dataclass
class Shared:
    """What the quantize recipes share within one run: the FP32 file, the checkpoint, the calibration images (PTQ,
    the CPU forms, SQNR), the sensitivity study (the PTQ files), and the files made so far (qat-cpu converts the
    file the qat recipe made)."""
    fp32: Path
    ckpt: dict
    calib: np.ndarray
    sens: Sensitivity
    made: dict[str, Path] = field(default_factory=dict)  # recipe -> the file it made in this run

    def meta(self, ctx: Context, method: str) -> dict:
        from exporters.onnx import build_metadata

        norm = self.ckpt["normalization"]
        return build_metadata(model_name=self.ckpt["model"], mean=norm["mean"], std=norm["std"],
                              classes=self.ckpt["classes"], checkpoint_sha256=ctx.sha(ctx.rd.checkpoint),
                              precision="int8", extra={"quantization": method})


def run(ctx: Context) -> list[Path]:
    from exporters import precision

    from pipeline.report import figures as plots
    from pipeline.measure.budget import Sensitivity

    q = ctx.cfg.quant
    todo = sorted(recipes.todo(ctx, "quantize"), key=lambda v: SWITCHES.index(v.quant))
    if not todo:
        log.info("quantize: --quant %s, no INT8 variants", q.mode)
        return []
    fp32 = _fp32_file(ctx)
    ckpt = checkpoint.load(ctx.rd.checkpoint)
    calib = calibration_images(ctx.splits.train_x, q)
    sens = Sensitivity(fp32, ctx.rd.sensitivity_json, calib, ctx.splits.val_x.numpy(), ctx.splits.val_y.numpy(), q,
                       ctx.cfg.model)
    shared = Shared(fp32, ckpt, calib, sens)
    made = [(v, recipes.build(ctx, v, shared)) for v in todo]
    outputs, sqnr = recipes.outputs(ctx, made), {}
    probe = calib[: q.sqnr_images]
    # per-layer SQNR compares ONNX graphs node by node: the edge runtimes' files (IR, .pte, .tflite) are not ONNX
    for v, path in [(v, path) for v, path in made if path is not None and path.suffix == ".onnx"]:
        sqnr[v.name] = precision.per_layer_sqnr(fp32, path, probe)
        worst = min(sqnr[v.name], key=lambda r: float("inf") if r["sqnr_db"] is None else r["sqnr_db"])
        log.info("quantize: %s per-layer SQNR %s dB (lowest: layer %d %s)", v.name,
                 " ".join("-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}" for r in sqnr[v.name]),
                 worst["layer"], worst["op"])
    if "qat" in shared.made:
        outputs.append(ctx.rd.qat_torch_json)
    outputs.append(write_json(ctx.rd.sqnr_json, {"images": len(probe), "source": "training split (calibration set)",
                                                 "variants": sqnr}))
    outputs.append(plots.sqnr(sqnr, ctx.rd.sqnr_png))
    if sens.result["layers"]:
        outputs.append(write_json(ctx.rd.sensitivity_json, sens.result))
        outputs.append(plots.sensitivity(sens.result, ctx.rd.sensitivity_png))
    else:  # an earlier run's ranking would otherwise reach this run's report
        ctx.rd.sensitivity_json.unlink(missing_ok=True)
        ctx.rd.sensitivity_png.unlink(missing_ok=True)
    return outputs


@recipe("ptq", "PTQ ({q.calib_method}, {q.calib_size} calibration images)")
def ptq(ctx: Context, v, shared: Shared) -> Path:
    """onnxruntime's static PTQ of the FP32 file, Q/DQ placed for TensorRT when the row says ``tensorrt``."""
    q = ctx.cfg.quant
    return _ptq_file(ctx, shared.sens, v, shared.fp32, shared.calib,
                     shared.meta(ctx, f"ptq/onnxruntime/{q.calib_method}/{q.calib_size}"))


@recipe("ptq-cpu", "CPU INT8 (uint8 activations)")
def ptq_cpu(ctx: Context, v, shared: Shared) -> Path:
    """The same calibration in onnxruntime's CPU placement (uint8 activations, fused into integer kernels)."""
    q = ctx.cfg.quant
    return _ptq_file(ctx, shared.sens, v, shared.fp32, shared.calib,
                     shared.meta(ctx, f"ptq/onnxruntime-u8s8/{q.calib_method}/{q.calib_size}"))


@recipe("qat", "QAT ({q.qat_epochs} epoch(s), lr {q.qat_lr:g})")
def qat(ctx: Context, v, shared: Shared) -> Path:
    """Quantization-aware fine-tuning of the checkpoint (torchao), exported as a Q/DQ file; the QAT model's own
    accuracy before export goes to quantize/qat-torch.json."""
    from pipeline.training import qat as qat_training

    q = ctx.cfg.quant
    model = checkpoint.restore(shared.ckpt)
    return qat_training.qat(model, ctx.splits, q, ctx.rd.export_file(v.file), shared.meta(ctx, _qat_method(q)),
                            ctx.cfg.export.opset, batch_size=ctx.cfg.train.batch_size, seed=ctx.cfg.train.seed,
                            tensorrt_rules=v.tensorrt, progress=ctx.progress, simulated_json=ctx.rd.qat_torch_json)


@recipe("qat-cpu", "CPU INT8 from QAT (its learned scales, fused placement)")
def qat_cpu(ctx: Context, v, shared: Shared) -> Path:
    """The file the ``qat`` recipe made, in onnxruntime's fused CPU placement with QAT's learned scales."""
    if "qat" not in shared.made:
        raise PipelineError("the qat-cpu recipe converts the QAT file, and no row with recipe qat (built by the same "
                            "--quant switch) comes before it in pipeline/variants.py.")
    return _qat_cpu(shared.made["qat"], ctx.rd.export_file(v.file), shared.calib,
                    shared.meta(ctx, _qat_method(ctx.cfg.quant) + "/onnxruntime-u8s8"))


def _qat_method(q: QuantConfig) -> str:
    """The QAT recipe as the file's ``quantization`` metadata: epochs, learning rate, observer freeze, EMA, augmentation."""
    return (f"qat/torchao-pt2e/{q.qat_epochs}ep/lr{q.qat_lr:g}/freeze{q.qat_observer_steps}/ema{q.qat_ema:g}"
            + ("/augment" if q.qat_augment else ""))


def _qat_cpu(qdq: Path, final: Path, images, metadata: dict) -> Path:
    """:func:`exporters.cpu_placement.qat_cpu_int8`, a refused write worded for users."""
    from exporters.cpu_placement import qat_cpu_int8

    with refused_writes(final):
        return qat_cpu_int8(qdq, final, images, metadata)


def _ptq_file(ctx: Context, sens, v, fp32: Path, calib, metadata: dict) -> Path:
    """One PTQ variant's file: its layers ranked (the first PTQ file) and, over ``--int8-budget``, the fewest kept in
    FP32, named in the file's metadata. A budget no mixed file meets writes nothing but sensitivity.json."""
    import json

    from exporters.sensitivity import nodes_of

    try:
        kept = sens.fp32_layers(v)
    except PipelineError:
        if sens.result["layers"]:  # what was measured stays readable
            write_json(ctx.rd.sensitivity_json, sens.result)
        raise
    if kept:
        metadata = {**metadata, "quantization": metadata["quantization"] + "/fp32:" + ",".join(x.label for x in kept),
                    "int8_fp32_nodes": json.dumps(list(nodes_of(kept)))}
    return _written(fp32, ctx.rd.export_file(v.file), calib, ctx.cfg.quant.calib_method, metadata,
                    for_tensorrt=v.tensorrt, exclude=nodes_of(kept))


def _written(fp32: Path, final: Path, *args, for_tensorrt: bool, exclude: tuple[str, ...] = ()) -> Path:
    """Run :func:`exporters.precision.quantize_file`, its refusals (the QDQ rules, the disk) worded for users."""
    from exporters.precision import QuantizationError, quantize_file

    try:
        with refused_writes(final):
            return quantize_file(fp32, final, *args, for_tensorrt=for_tensorrt, exclude=exclude)
    except QuantizationError as e:
        raise PipelineError(str(e)) from None
