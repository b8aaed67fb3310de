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
    requires: str | None = None  # hardware/backend it needs: cuda (onnxruntime-gpu) | tensorrt
    source: str | None = None  # for engines: the ONNX file they are built from
    # onnxruntime graph optimizations: "all" (what an app gets by default) or "basic", which runs Q/DQ exactly as
    # written (dequantize -> float op -> quantize), i.e. what TensorRT computes. The TensorRT-targeted INT8 files
    # use "basic": onnxruntime's fused x86 int8 kernels saturate 16-bit intermediates on CPUs without VNNI (such
    # as the AVX2 machine this was built on), which would misreport those files' accuracy by several points.
    ort_optimization: str = "all"


VARIANTS: tuple[Variant, ...] = (
    Variant("torch-fp32", "torch", "cpu", "fp32", None, "train"),
    Variant("onnx-fp32", "onnxruntime", "cpu", "fp32", "model-fp32.onnx", "export", atol=1e-4),
    Variant("onnx-fp16", "onnxruntime", "cpu", "fp16", "model-fp16.onnx", "export", budget_pp=0.02),
    Variant("onnx-int8-ptq", "onnxruntime", "cpu", "int8", "model-int8-ptq.onnx", "quantize", budget_pp=0.15,
            tensorrt_rules=True, quant="ptq", ort_optimization="basic"),
    Variant("onnx-int8-qat", "onnxruntime", "cpu", "int8", "model-int8-qat.onnx", "quantize", budget_pp=0.05,
            tensorrt_rules=True, quant="qat", ort_optimization="basic"),
    Variant("onnx-int8-cpu", "onnxruntime", "cpu", "int8", "model-int8-cpu.onnx", "quantize", quant="cpu"),
    Variant("onnx-fp32-cuda", "onnxruntime", "cuda", "fp32", "model-fp32.onnx", "export", requires="cuda"),
    Variant("trt-fp32", "tensorrt", "cuda", "fp32", "model-fp32.engine", "engines", requires="tensorrt",
            source="model-fp32.onnx"),
    Variant("trt-fp16", "tensorrt", "cuda", "fp16", "model-fp16.engine", "engines", budget_pp=0.05,
            requires="tensorrt", source="model-fp16.onnx"),
    Variant("trt-int8", "tensorrt", "cuda", "int8", "model-int8-ptq.engine", "engines", budget_pp=0.15,
            requires="tensorrt", quant="ptq", source="model-int8-ptq.onnx"),
)


def unavailable(v: Variant) -> str | None:
    """Why this machine cannot run ``v`` (None when it can). Imports nothing heavy."""
    import importlib.util

    if v.requires is None:
        return None
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    if v.requires == "cuda":
        if "CUDAExecutionProvider" not in providers:
            return "onnxruntime has no CUDA provider here (install the `gpu` extra, onnxruntime-gpu, on a machine with an NVIDIA GPU)"
        return None
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (GPU hosts: pip install tensorrt; Jetson: JetPack 6)"
    if importlib.util.find_spec("polygraphy") is None:
        return "polygraphy is not installed (pip install -e .[trt])"
    import torch

    if not torch.cuda.is_available():
        return "no NVIDIA GPU is visible"
    return None

BY_NAME = {v.name: v for v in VARIANTS}
