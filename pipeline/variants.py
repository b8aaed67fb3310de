"""The one table of deployable variants: what each is, where its file lives, how strict parity is.

Argument checks, the validate stage, the report and the tests all read this
table (Ultralytics' ``export_formats()`` habit), so adding a variant is one row.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # torch | onnxruntime | tensorrt
    provider: str  # cpu | cuda
    precision: str  # fp32 | fp16 | int8
    file: str | None  # file name under <run>/export/ (None for the torch reference)
    stage: str  # the stage that writes the file
    atol: float | None = None  # enforced parity: max |logit diff| vs torch-fp32 (and agreement 1.0)
    budget_pp: float | None = None  # accuracy drop vs torch-fp32 we aim to stay within (percentage points)
    tensorrt_rules: bool = False  # INT8 file must pass exporters.qdq.check_qdq
    quant: str | None = None  # which QuantConfig switch builds it: ptq | qat | cpu


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-fp32", "torch", "cpu", "fp32", None, "train"),
    Variant("onnx-fp32", "onnxruntime", "cpu", "fp32", "model-fp32.onnx", "export", atol=1e-4),
    Variant("onnx-fp16", "onnxruntime", "cpu", "fp16", "model-fp16.onnx", "export", budget_pp=0.02),
    Variant("onnx-int8-ptq", "onnxruntime", "cpu", "int8", "model-int8-ptq.onnx", "quantize", budget_pp=0.15,
            tensorrt_rules=True, quant="ptq"),
    Variant("onnx-int8-qat", "onnxruntime", "cpu", "int8", "model-int8-qat.onnx", "quantize", budget_pp=0.05,
            tensorrt_rules=True, quant="qat"),
    Variant("onnx-int8-cpu", "onnxruntime", "cpu", "int8", "model-int8-cpu.onnx", "quantize", quant="cpu"),
)

BY_NAME = {v.name: v for v in VARIANTS}
