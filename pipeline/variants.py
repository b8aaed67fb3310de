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
    atol: float | None  # FP32 parity: max |logit diff| vs torch-fp32, enforced; None = reported only
    stage: str  # the stage that writes the file


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-fp32", "torch", "cpu", "fp32", None, None, "train"),
    Variant("onnx-fp32", "onnxruntime", "cpu", "fp32", "model-fp32.onnx", 1e-4, "export"),
)

BY_NAME = {v.name: v for v in VARIANTS}
