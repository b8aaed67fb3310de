"""The accuracy ladder: one INT8 model followed step by step from torch FP32 to the engine that runs it (or, for an
edge runtime, from torch FP32 through that runtime's FP32 file to its own INT8 file).

Why: a report row says how much accuracy a deployed INT8 file lost, not which step lost it. The ladder puts
the steps in order (FP32 -> INT8 simulated -> the QDQ ONNX on onnxruntime's fused kernels -> TensorRT) and
gives each its test accuracy and its change from the rung before, so a loss is pinned to the step that
caused it: quantization itself (the simulated rung), the export or a runtime's kernels (a later rung).

Every rung but one is a row of the variant table, measured by the validate stage; the QAT model before
export exists only inside the quantize stage, which stores its accuracy (:func:`pipeline.training.qat.qat`,
``quantize/qat-torch.json``). A rung not measured here says why (no TensorRT, no engine of that file, not
built with this ``--quant``). Measures nothing: :func:`build` reads what was measured.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline import variants
from pipeline.store.paths import RunDir

#: the ``source`` of the rung measured inside the quantize stage (not a variant row): its file in the run folder
QAT_TORCH = RunDir.relative().qat_torch_json.as_posix()


@dataclass(frozen=True)
class Rung:
    step: str  # what this rung adds to the one before it
    variant: str | None = None  # the variant row measured (or QAT_TORCH)
    tensorrt_of: str | None = None  # or: the TensorRT engine row built from this variant's ONNX file


#: one ladder per way of quantizing; each starts at the reference
LADDERS: dict[str, tuple[Rung, ...]] = {
    "ptq": (
        Rung("torch FP32", variants.REFERENCE),
        Rung("INT8 simulated: the PTQ QDQ ONNX as written (Q/DQ run as float ops, onnxruntime basic)", "onnx-int8-ptq"),
        Rung("onnxruntime CPU int8 kernels (fused QLinearConv/QGemm, first conv in float; uint8 activations, 7-bit "
             "weights, same calibration images)", "onnx-int8-cpu"),
        Rung("TensorRT INT8 engine of the PTQ QDQ ONNX", tensorrt_of="onnx-int8-ptq"),
    ),
    "qat": (
        Rung("torch FP32", variants.REFERENCE),
        Rung("INT8 simulated in torch: the QAT model before export (fake quantization)", QAT_TORCH),
        Rung("the QAT QDQ ONNX on onnxruntime as written (Q/DQ run as float ops, basic)", "onnx-int8-qat"),
        Rung("onnxruntime CPU int8 kernels (fused, first conv in float; QAT's learned activation scales, 7-bit "
             "weights)", "onnx-int8-qat-cpu"),
        Rung("TensorRT INT8 engine of the QAT QDQ ONNX", tensorrt_of="onnx-int8-qat"),
    ),
    # the edge runtimes quantize with their own tools, not from the ONNX files: the FP32 rung pins a conversion loss,
    # the INT8 rung the runtime's own post-training quantization on the same calibration images
    "openvino": (
        Rung("torch FP32", variants.REFERENCE),
        Rung("OpenVINO IR FP32 (converted from the FP32 ONNX file), CPU plugin with f32 inference precision",
             "openvino-fp32"),
        Rung("OpenVINO INT8 by NNCF PTQ (fast_bias_correction off), CPU plugin", "openvino-int8"),
    ),
    "executorch": (
        Rung("torch FP32", variants.REFERENCE),
        Rung("ExecuTorch .pte FP32 lowered to XNNPACK", "executorch-fp32"),
        Rung("ExecuTorch INT8 by PT2E with XNNPACKQuantizer (symmetric, per-channel weights), XNNPACK", "executorch-int8"),
    ),
    "litert": (
        Rung("torch FP32", variants.REFERENCE),
        Rung("LiteRT .tflite FP32 (litert-torch), LiteRT CPU (XNNPACK delegate)", "litert-fp32"),
        Rung("LiteRT INT8 by PT2E (litert-torch's quantizer; int8 input and output tensors)", "litert-int8"),
    ),
}


def _tensorrt_row(of: str) -> variants.Variant | None:
    """The TensorRT row built from variant ``of``'s file (None: no such row, or ``of`` is not in the table)."""
    source = variants.BY_NAME.get(of)
    if source is None:
        return None
    return next((v for v in variants.VARIANTS if v.backend == "tensorrt" and v.source == source.file), None)


def _int8(source: str | None) -> bool:
    """Whether a rung's source is an INT8 model (a ladder with none of them measured says nothing about INT8)."""
    v = variants.BY_NAME.get(source) if source else None
    return source == QAT_TORCH or (v is not None and v.precision == "int8")


def build(rows: list[dict], skipped: list[dict], qat_torch: dict | None) -> dict:
    """The ladders of report.json: per way of quantizing, its rungs with accuracy and deltas (pp), or why not.

    ``rows`` and ``skipped`` are the validate stage's; ``qat_torch`` is ``quantize/qat-torch.json`` (None
    when QAT did not run). A ladder with no INT8 rung measured (not built, not run here) is left out.
    """
    by_name = {r["name"]: r for r in rows}
    why_skipped = {s["name"]: s["reason"] for s in skipped}
    out = {}
    for key, rungs in LADDERS.items():
        built, previous, base = [], None, None
        for rung in rungs:
            name = rung.variant
            if rung.tensorrt_of:
                engine = _tensorrt_row(rung.tensorrt_of)
                name = engine.name if engine else None
            entry = {"step": rung.step, "source": name, "accuracy": None, "delta_pp": None, "vs_fp32_pp": None,
                     "not_measured": None}
            if name == QAT_TORCH:
                acc = (qat_torch or {}).get("test_accuracy")
                why = None if acc is not None else "QAT did not run"
            elif name is None:
                source = variants.BY_NAME.get(rung.tensorrt_of)
                acc, why = None, (f"no TensorRT engine is built from {source.file if source else rung.tensorrt_of} "
                                  "in the variant table")
            else:  # a row of the table (a table without it, e.g. a user's edited one: "not in the variant table")
                acc = by_name[name]["accuracy"] if name in by_name else None
                why = None if acc is not None else why_skipped.get(
                    name, "not run" if name in variants.BY_NAME else "not in the variant table")
            if acc is None:
                entry["not_measured"] = f"not measured here: {why}"
            else:
                entry["accuracy"] = acc
                base = acc if base is None else base
                entry["vs_fp32_pp"] = round(100 * (acc - base), 4)
                if previous is not None:
                    entry["delta_pp"] = round(100 * (acc - previous), 4)
                previous = acc
            built.append(entry)
        if any(e["accuracy"] is not None and _int8(e["source"]) for e in built):
            out[key] = built
    return out


def markdown(ladders: dict) -> list[str]:
    """The report's "Accuracy ladder" section (empty when there is no ladder)."""
    if not ladders:
        return []
    lines = ["## Accuracy ladder", "",
             "Each INT8 model followed from torch FP32 to the engine that runs it, on the 10,000 test images: a rung's "
             "change from the rung before pins a loss to the step that caused it (quantization itself at the "
             "simulated rung; the export, the operator placement or a runtime's kernels later)."]
    for key, rungs in ladders.items():
        lines += ["", f"**{key.upper()}**", "", "| rung | step | source | accuracy | change (pp) | vs FP32 (pp) |",
                  "|---|---|---|---|---|---|"]
        for i, r in enumerate(rungs, 1):
            src = f"`{r['source']}`" if r["source"] else "-"
            if r["accuracy"] is None:
                lines.append(f"| {i} | {r['step']} | {src} | {r['not_measured']} | - | - |")
                continue
            delta, vs = ("-" if r[k] is None else f"{r[k]:+.2f}" for k in ("delta_pp", "vs_fp32_pp"))
            lines.append(f"| {i} | {r['step']} | {src} | {100 * r['accuracy']:.2f} % | {delta} | {vs} |")
    return lines + [""]
