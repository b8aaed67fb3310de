"""How a variant's runner is built, per backend (:data:`RUNNERS`), and whether this machine can run a variant.

Every factory has the same signature, ``factory(variant, run_dir, *, model, threads)``, and returns a runner
that is not yet activated (:class:`runtime.base.BaseRunner`), so the validate stage treats every backend
alike. Each imports its backend inside the call: importing this module (and with it the table) loads no
torch, onnxruntime or TensorRT, and a backend that is missing breaks only its own rows.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from runtime.base import BaseRunner

    from pipeline.store.paths import RunDir
    from pipeline.variants import Variant


def torch_runner(v: Variant, run_dir: RunDir, *, model, threads: int = 0) -> BaseRunner:
    """PyTorch eager on the restored checkpoint (``model``); the caller sets torch's thread count."""
    from .torch_runner import TorchRunner

    return TorchRunner(model)


def onnxrt_runner(v: Variant, run_dir: RunDir, *, model=None, threads: int = 0) -> BaseRunner:
    """onnxruntime on the row's file, with its execution provider and graph optimization level."""
    from runtime.onnxrt import OnnxrtRunner

    return OnnxrtRunner(run_dir.export_file(v.file), provider=v.provider, threads=threads,
                        optimization=v.ort_optimization)


def tensorrt_runner(v: Variant, run_dir: RunDir, *, model=None, threads: int = 0) -> BaseRunner:
    """A TensorRT runner, after refusing an engine whose sidecar does not match this ONNX, TensorRT (the
    module's ``__version__``: hosts with only ``tensorrt-cu12``/``-cu13`` or JetPack's apt package have no
    distribution named ``tensorrt``), GPU, or the build parameters the engines stage uses."""
    from exporters import tensorrt as trtx
    from exporters.onnx import read_metadata
    from runtime.tensorrt import TensorRTRunner

    engine, src = run_dir.export_file(v.file), run_dir.export_file(v.source)
    try:
        version = trtx.installed_version()
        if version is None:
            raise trtx.TensorRTError("TensorRT cannot be imported here.")
        shape = tuple(json.loads(read_metadata(src).get("input_shape", "[1, 28, 28]")))  # as the engines stage
        trtx.require_fresh(engine, src, version, trtx.gpu_identity(), trtx.build_params(v.precision, shape))
    except trtx.TensorRTError as e:
        raise PipelineError(f"{e} Run `pipeline run all --force` to rebuild.") from None
    return TensorRTRunner(engine)


def openvino_runner(v: Variant, run_dir: RunDir, *, model=None, threads: int = 0) -> BaseRunner:
    """OpenVINO's CPU plugin on the row's IR, its inference precision pinned to the row's (FP32 would otherwise run in
    bfloat16 on CPUs with BF16: :mod:`runtime.openvino`)."""
    from runtime.openvino import OpenvinoRunner

    return OpenvinoRunner(run_dir.export_file(v.file), precision=v.precision, threads=threads)


def executorch_runner(v: Variant, run_dir: RunDir, *, model=None, threads: int = 0) -> BaseRunner:
    """ExecuTorch's Python runtime (XNNPACK) on the row's ``.pte``; it needs torch, so it lives in this package."""
    from .executorch_runner import ExecutorchRunner

    return ExecutorchRunner(run_dir.export_file(v.file))


def litert_runner(v: Variant, run_dir: RunDir, *, model=None, threads: int = 0) -> BaseRunner:
    """LiteRT's interpreter (ai-edge-litert) on the row's ``.tflite``, in this process (the ``litert`` extra).

    ``threads`` 0 means every core this process may use, as it does for onnxruntime and OpenVINO: LiteRT's own default
    (XNNPACK on one thread) would time it on half the cores the rows it is compared with get."""
    import os

    from runtime.litert import LitertRunner

    return LitertRunner(run_dir.export_file(v.file), threads=threads or len(os.sched_getaffinity(0)), mode="inprocess")


#: how a backend's runner is built: ``factory(variant, run_dir, model=..., threads=...)`` -> an unactivated
#: runner (:class:`runtime.base.BaseRunner`). Each factory imports its backend when called, not here.
RUNNERS = {"torch": torch_runner, "onnxruntime": onnxrt_runner, "tensorrt": tensorrt_runner,
           "openvino": openvino_runner, "executorch": executorch_runner, "litert": litert_runner}


def _missing(*modules: str) -> str | None:
    """The first of ``modules`` that cannot be imported here (found without importing it), else None."""
    import importlib.util

    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a parent package missing
            return name
    return None


def _openvino(build: bool) -> str | None:
    gone = _missing("openvino", *(("nncf",) if build else ()))
    return f"{gone} is not installed (pip install -e .[openvino])" if gone else None


def _openvino_bf16(build: bool) -> str | None:
    from runtime.openvino import cpu_has_bf16

    return _openvino(False) or (None if cpu_has_bf16() else "this CPU has no BF16 (OpenVINO's CPU plugin offers no "
                                                              "bfloat16 here), so the row would be FP32 mislabelled")


def _executorch(build: bool) -> str | None:
    gone = _missing("executorch.runtime")
    return f"ExecuTorch is not installed ({gone} is missing; pip install -e .[executorch])" if gone else None


def _litert(build: bool) -> str | None:
    if _missing("ai_edge_litert.interpreter"):
        return "LiteRT's interpreter is not installed (pip install -e .[litert])"
    if build:
        from exporters.litert import LitertExportError, venv_python

        try:
            venv_python(create=False)
        except LitertExportError as e:
            return f"the LiteRT converter (litert-torch) is not set up: {e}"
    return None


#: the edge runtimes a row may require (its ``requires``): why this machine cannot run a row (``build``: nor make its
#: file), or None. Their rows are optional: a missing runtime or a converter that fails skips them, saying why.
REQUIRES = {"openvino": _openvino, "openvino-bf16": _openvino_bf16, "executorch": _executorch, "litert": _litert}


def optional(v: Variant) -> bool:
    """Whether ``v`` is an edge-runtime row, which is skipped with the reason (and the run goes on) when its runtime is
    missing, its converter cannot lower the model, or its runner cannot load the file."""
    return v.requires in REQUIRES


def build(v: Variant, run_dir: RunDir, model=None, threads: int = 0) -> BaseRunner:
    """``v``'s runner, not yet activated, built by its backend's factory (:data:`RUNNERS`).

    ``run_dir`` locates the file; ``model`` is the restored torch model (torch rows only); ``threads`` is the
    intra-op thread count (0: the backend's default)."""
    if v.backend not in RUNNERS:
        raise ValueError(f"{v.name} is measured in a browser (pipeline.measure.browser), not by a Python runner")
    return RUNNERS[v.backend](v, run_dir, model=model, threads=threads)


def unavailable(v: Variant, build: bool = False) -> str | None:
    """Why this machine cannot run ``v`` (with ``build``: nor make its file), None when it can.

    Never imports tensorrt (which loads CUDA libraries): only onnxruntime's provider list and, for TensorRT
    rows on a host that has TensorRT, torch's view of the GPU."""
    if v.requires is None:
        return None
    if v.requires in REQUIRES:
        return REQUIRES[v.requires](build)
    if v.requires == "browser":
        from . import browser

        return None if browser.find() else ("no Chromium or Chrome on PATH to measure it in (Debian: apt-get install "
                                            "chromium)")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    if v.requires == "cuda":
        if "CUDAExecutionProvider" not in providers:
            return "onnxruntime has no CUDA provider here (install the `gpu` extra, onnxruntime-gpu, on a machine with an NVIDIA GPU)"
        return None
    if _missing("tensorrt"):
        return "TensorRT is not installed (GPU hosts: pip install tensorrt; Jetson: JetPack 6)"
    if _missing("polygraphy"):
        return "polygraphy is not installed (pip install -e .[trt])"
    import torch

    if not torch.cuda.is_available():
        return "no NVIDIA GPU is visible"
    return None
