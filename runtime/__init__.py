"""Inference and benchmarking that need only numpy and onnxruntime (TensorRT optional).

Importing this package never imports torch, so apps can embed an exported
model with a small dependency set. Heavy modules load on first attribute use.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Classifier": "runtime.classifier",
    "OnnxrtRunner": "runtime.onnxrt",
    "BaseRunner": "runtime.base",
    "measure": "runtime.bench",
    "LatencyStats": "runtime.bench",
    "ModelMetadata": "runtime.metadata",
    "RuntimeInputError": "runtime.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute '{name}'")
