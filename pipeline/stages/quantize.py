"""Stage ``quantize``: INT8 QDQ ONNX by PTQ (onnxruntime) and QAT (torchao), the CPU INT8 variants, SQNR.

The ONNX -> ONNX work (PTQ, CPU INT8, SQNR) is :mod:`exporters.precision`, the QAT file in the CPU form
:mod:`exporters.cpu_placement`; QAT, a torch fine-tuning, is :mod:`pipeline.training.qat`; the per-layer sensitivity on
validation accuracy, and the layers a PTQ file keeps in FP32 under ``--int8-budget``, are :mod:`pipeline.measure.budget`.
This module chooses the calibration images, names the files and words errors.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.store import checkpoint
from pipeline.config import QuantConfig, stamp
from pipeline.errors import PipelineError
from pipeline.store.paths import refused_writes, write_json
from pipeline.variants import BY_NAME, VARIANTS
from .context import Context

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    # QAT fine-tunes at the training batch size, shuffled by the training seed (see pipeline.training.qat)
    train = ctx.cfg.train
    return {"data": ctx.sha(ctx.rd.data_summary), "checkpoint": ctx.sha(ctx.rd.checkpoint),
            "fp32": ctx.sha(ctx.rd.export_file(BY_NAME["onnx-fp32"].file)), "quant": stamp(ctx.cfg.quant),
            "opset": ctx.cfg.export.opset, "qat": {"batch_size": train.batch_size, "seed": train.seed}}


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


def run(ctx: Context) -> list[Path]:
    from exporters import precision

    from pipeline.report import figures as plots
    from pipeline.training import qat
    from pipeline.measure.budget import Sensitivity

    q = ctx.cfg.quant
    if q.mode == "none":
        log.info("quantize: --quant none, no INT8 variants")
        return []
    fp32 = ctx.rd.export_file(BY_NAME["onnx-fp32"].file)
    ckpt = checkpoint.load(ctx.rd.checkpoint)
    norm = ckpt["normalization"]
    from exporters.onnx import build_metadata

    def meta(method: str) -> dict:
        return build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                              checkpoint_sha256=ctx.sha(ctx.rd.checkpoint), precision="int8",
                              extra={"quantization": method})

    calib = calibration_images(ctx.splits.train_x, q)
    sens = Sensitivity(fp32, ctx.rd.sensitivity_json, calib, ctx.splits.val_x.numpy(), ctx.splits.val_y.numpy(), q,
                       ctx.cfg.model)
    outputs, sqnr = [], {}
    if q.ptq:
        v = BY_NAME["onnx-int8-ptq"]
        path = _ptq_file(ctx, sens, v, fp32, calib, meta(f"ptq/onnxruntime/{q.calib_method}/{q.calib_size}"))
        outputs.append(path)
        log.info("quantize: PTQ (%s, %d calibration images) -> %s (%s bytes)", q.calib_method, q.calib_size, path,
                 f"{path.stat().st_size:,}")
    if q.qat:
        model = checkpoint.restore(ckpt)
        v = BY_NAME["onnx-int8-qat"]
        path = qat.qat(model, ctx.splits, q, ctx.rd.export_file(v.file), meta(_qat_method(q)), ctx.cfg.export.opset,
                       batch_size=ctx.cfg.train.batch_size, seed=ctx.cfg.train.seed, tensorrt_rules=v.tensorrt,
                       progress=ctx.progress, simulated_json=ctx.rd.qat_torch_json)
        outputs.append(path)
        log.info("quantize: QAT (%d epoch(s), lr %g) -> %s (%s bytes)", q.qat_epochs, q.qat_lr, path,
                 f"{path.stat().st_size:,}")
        v = BY_NAME["onnx-int8-qat-cpu"]
        path = _qat_cpu(path, ctx.rd.export_file(v.file), calib,
                        meta(_qat_method(q) + "/onnxruntime-u8s8"))
        outputs.append(path)
        log.info("quantize: CPU INT8 from QAT (its learned scales, fused placement) -> %s (%s bytes)", path,
                 f"{path.stat().st_size:,}")
    if q.cpu_variant:
        v = BY_NAME["onnx-int8-cpu"]
        path = _ptq_file(ctx, sens, v, fp32, calib, meta(f"ptq/onnxruntime-u8s8/{q.calib_method}/{q.calib_size}"))
        outputs.append(path)
        log.info("quantize: CPU INT8 (uint8 activations) -> %s (%s bytes)", path, f"{path.stat().st_size:,}")
    probe = calib[: q.sqnr_images]
    for p in outputs:
        name = next(v.name for v in VARIANTS if v.file == p.name)
        sqnr[name] = precision.per_layer_sqnr(fp32, p, probe)
        worst = min(sqnr[name], key=lambda r: float("inf") if r["sqnr_db"] is None else r["sqnr_db"])
        log.info("quantize: %s per-layer SQNR %s dB (lowest: layer %d %s)", name,
                 " ".join("-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}" for r in sqnr[name]),
                 worst["layer"], worst["op"])
    if q.qat:
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
