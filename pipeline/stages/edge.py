"""The edge runtimes' recipes: OpenVINO IR, ExecuTorch ``.pte`` and LiteRT ``.tflite``, FP32 and INT8.

Each is registered with the stage that owns its precision, as the ONNX recipes are: the FP32 files with ``export``
(OpenVINO converts the FP32 ONNX file that stage just wrote; ExecuTorch and LiteRT lower the checkpoint's model), the
INT8 files with ``quantize``, each by its runtime's own post-training quantization of the same calibration images the
ONNX INT8 files use (NNCF; PT2E with ``XNNPACKQuantizer``; PT2E with litert-torch's quantizer). The converters are
:mod:`exporters.openvino`, :mod:`exporters.executorch` and :mod:`exporters.litert`; this module only picks their
inputs and words their refusals. Under ``--int8-budget`` the OpenVINO and ExecuTorch INT8 files keep the layers the ONNX
PTQ file keeps in FP32 (by ONNX node name, by module path); LiteRT's converter cannot, which its file says
(docs/runtimes.md).

These rows are optional (:func:`pipeline.measure.runners.optional`): a converter that cannot lower the model (an
operator the runtime lacks) raises a :class:`PipelineError` naming the runtime and the operator, and
:func:`pipeline.stages.recipes.build` records it beside the file and lets the other rows go on.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.store import checkpoint
from pipeline.store.paths import refused_writes
from . import recipes
from .context import Context

log = logging.getLogger(__name__)
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


def _kept(shared) -> dict:
    """The ``--int8-budget`` fallback of the ONNX PTQ file (the first row with recipe ``ptq``, made before the edge
    INT8 rows: the stage builds the ``ptq`` rows in table order), which the edge INT8 files follow so every PTQ file
    keeps the same layers in FP32: its ``fp32_layers`` (labels), ``onnxruntime_nodes_to_exclude`` (ONNX node names)
    and ``torch_modules`` (module paths). Empty without a budget or when every layer stays INT8."""
    from pipeline import variants

    ptq = next((row.name for row in variants.VARIANTS if row.recipe == "ptq"), None)
    entry = shared.sens.result["fallback"].get(ptq) or {}
    return entry if entry.get("fp32_layers") else {}


def _marked(meta: dict, kept: dict) -> dict:
    """``meta`` with the layers kept in FP32 named in its ``quantization`` entry, as the ONNX PTQ file's is."""
    return {**meta, "quantization": meta["quantization"] + "/fp32:" + ",".join(kept["fp32_layers"])} if kept else meta


@quantize_recipe("openvino-int8", "OpenVINO IR, INT8 by NNCF PTQ ({q.calib_size} calibration images)")
def openvino_int8(ctx: Context, v, shared) -> Path:
    from exporters import openvino

    meta = shared.meta(ctx, f"ptq/nncf/{ctx.cfg.quant.calib_size}")
    kept = _kept(shared)
    nodes, meta = tuple(kept.get("onnxruntime_nodes_to_exclude", ())), _marked(meta, kept)  # IR names = ONNX names
    return _converted(ctx, v, lambda final: openvino.export_int8(shared.fp32, final, meta, shared.calib,
                                                                 fp32_nodes=nodes))


@quantize_recipe("executorch-int8", "ExecuTorch .pte, INT8 by PT2E with XNNPACKQuantizer ({q.calib_size} "
                                    "calibration images)")
def executorch_int8(ctx: Context, v, shared) -> Path:
    from exporters import executorch

    meta, model = shared.meta(ctx, f"ptq/pt2e-xnnpack/{ctx.cfg.quant.calib_size}"), checkpoint.restore(shared.ckpt)
    kept = _kept(shared)
    modules = tuple(kept.get("torch_modules", ()))
    if len(modules) != len(kept.get("fp32_layers", ())):
        raise PipelineError(f"ExecuTorch INT8 keeps layers in FP32 by module path, and the --int8-budget fallback keeps "
                            f"{', '.join(kept['fp32_layers'])}, of which some have none (their ONNX nodes name no "
                            "PyTorch module), so the file could not keep the same layers in FP32.")
    meta = _marked(meta, kept)
    return _converted(ctx, v, lambda final: executorch.export_int8(model, final, meta, shared.calib,
                                                                   fp32_modules=modules))


@quantize_recipe("litert-int8", "LiteRT .tflite, INT8 by PT2E (litert-torch, {q.calib_size} calibration images)")
def litert_int8(ctx: Context, v, shared) -> Path:
    from exporters import litert

    meta, model = shared.meta(ctx, f"ptq/pt2e-litert/{ctx.cfg.quant.calib_size}"), checkpoint.restore(shared.ckpt)
    kept = _kept(shared)
    if kept:  # docs/runtimes.md: why the LiteRT file does not follow the fallback (yet)
        log.warning("quantize: %s does not follow --int8-budget: the ONNX PTQ file keeps %s in FP32, but LiteRT's "
                    "converter quantizes a float layer that sits between quantized ones (litert-torch 0.10), so the "
                    "LiteRT file has every layer INT8; it is judged against its own accuracy budget like every row.",
                    v.name, ", ".join(kept["fp32_layers"]))
        meta = {**meta, "int8_budget_fallback": "not applied: every layer INT8 (docs/runtimes.md)"}
    return _converted(ctx, v, lambda final: litert.export_int8(model, final, meta, shared.calib, create_venv=False))
