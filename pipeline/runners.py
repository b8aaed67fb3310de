"""How a variant's runner is built, per backend: the factories the variant table names (``variants.RUNNERS``).

Every factory has the same signature, ``factory(variant, run_dir, *, model, threads)``, and returns a runner
that is not yet activated (:class:`runtime.base.BaseRunner`), so the validate stage treats every backend
alike. Each imports its backend inside the call: importing this module (and with it the table) loads no
torch, onnxruntime or TensorRT, and a backend that is missing breaks only its own rows.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .errors import PipelineError

if TYPE_CHECKING:
    from runtime.base import BaseRunner

    from .layout import RunDir
    from .variants import Variant


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
