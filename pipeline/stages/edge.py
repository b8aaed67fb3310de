"""The edge runtimes' recipes: OpenVINO IR, ExecuTorch ``.pte`` and LiteRT ``.tflite``, FP32 and INT8.

Each is registered with the stage that owns its precision, as the ONNX recipes are: the FP32 files with ``export``
(OpenVINO converts the FP32 ONNX file that stage just wrote; ExecuTorch and LiteRT lower the checkpoint's model), the
INT8 files with ``quantize``, each by its runtime's own post-training quantization of the same calibration images the
ONNX INT8 files use (NNCF; PT2E with ``XNNPACKQuantizer``; PT2E with litert-torch's quantizer). The converters are
:mod:`exporters.openvino`, :mod:`exporters.executorch` and :mod:`exporters.litert`; this module only picks their
inputs and words their refusals.

These rows are optional (:func:`pipeline.measure.runners.optional`): a converter that cannot lower the model (an
operator the runtime lacks) raises a :class:`PipelineError` naming the runtime and the operator, and
:func:`pipeline.stages.recipes.build` records it beside the file and lets the other rows go on.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.store import checkpoint
from pipeline.store.paths import refused_writes
from . import recipes
from .context import Context

export_recipe = recipes.registrar("export")
quantize_recipe = recipes.registrar("quantize")


def _converted(ctx: Context, v, convert) -> Path:
    """``convert(final)`` writing ``v``'s file; a converter's refusal becomes one paragraph naming the row."""
    from exporters.executorch import ExecutorchExportError
    from exporters.litert import LitertExportError
    from exporters.openvino import OpenvinoExportError

    final = ctx.rd.export_file(v.file)
    try:
        with refused_writes(final):
            return convert(final)
    except (OpenvinoExportError, ExecutorchExportError, LitertExportError) as e:
        raise PipelineError(f"{v.name} ({v.file}) was not made: {e}") from None


@export_recipe("openvino-fp32", "OpenVINO IR, FP32 weights (from the FP32 ONNX file), contract in rt_info")
def openvino_fp32(ctx: Context, v, shared) -> Path:
    from exporters import openvino

    if "fp32" not in shared.made:
        raise PipelineError("the openvino-fp32 recipe converts the FP32 ONNX file, and no row with recipe fp32 comes "
                            "before it in pipeline/variants.py.")
    return _converted(ctx, v, lambda final: openvino.export_fp32(shared.made["fp32"], final, shared.meta))


@export_recipe("executorch-fp32", "ExecuTorch .pte lowered to XNNPACK, FP32, contract in its sidecar")
def executorch_fp32(ctx: Context, v, shared) -> Path:
    from exporters import executorch

    return _converted(ctx, v, lambda final: executorch.export_fp32(shared.model, final, shared.meta))


@export_recipe("litert-fp32", "LiteRT .tflite (litert-torch), FP32, contract in its sidecar")
def litert_fp32(ctx: Context, v, shared) -> Path:
    from exporters import litert

    return _converted(ctx, v, lambda final: litert.export_fp32(shared.model, final, shared.meta, create_venv=False))


@quantize_recipe("openvino-int8", "OpenVINO IR, INT8 by NNCF PTQ ({q.calib_size} calibration images)")
def openvino_int8(ctx: Context, v, shared) -> Path:
    from exporters import openvino

    meta = shared.meta(ctx, f"ptq/nncf/{ctx.cfg.quant.calib_size}")
    return _converted(ctx, v, lambda final: openvino.export_int8(shared.fp32, final, meta, shared.calib))


@quantize_recipe("executorch-int8", "ExecuTorch .pte, INT8 by PT2E with XNNPACKQuantizer ({q.calib_size} "
                                    "calibration images)")
def executorch_int8(ctx: Context, v, shared) -> Path:
    from exporters import executorch

    meta, model = shared.meta(ctx, f"ptq/pt2e-xnnpack/{ctx.cfg.quant.calib_size}"), checkpoint.restore(shared.ckpt)
    return _converted(ctx, v, lambda final: executorch.export_int8(model, final, meta, shared.calib))


@quantize_recipe("litert-int8", "LiteRT .tflite, INT8 by PT2E (litert-torch, {q.calib_size} calibration images)")
def litert_int8(ctx: Context, v, shared) -> Path:
    from exporters import litert

    meta, model = shared.meta(ctx, f"ptq/pt2e-litert/{ctx.cfg.quant.calib_size}"), checkpoint.restore(shared.ckpt)
    return _converted(ctx, v, lambda final: litert.export_int8(model, final, meta, shared.calib, create_venv=False))
