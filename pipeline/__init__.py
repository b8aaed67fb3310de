"""Train an MNIST model, export ONNX (FP32/FP16/INT8) and prove parity and latency: ``pipeline run`` on the
command line, :func:`pipeline.run` in Python.

Importing the package is cheap: ``run`` and its result type are loaded on first use (PEP 562), so
``import pipeline`` (and the CLI's startup) never imports torch.
"""
from __future__ import annotations

__all__ = ["PipelineError", "RunResult", "run"]


def __getattr__(name: str):
    if name in ("run", "RunResult"):
        from . import api

        return getattr(api, name)
    if name == "PipelineError":
        from .errors import PipelineError

        return PipelineError
    raise AttributeError(f"module 'pipeline' has no attribute '{name}'")
