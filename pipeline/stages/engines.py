"""Stage ``engines``: TensorRT engines where TensorRT and a GPU are present; otherwise the reason why not."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.store.paths import write_json
from pipeline import variants
from pipeline.measure.runners import unavailable
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    trt = [v for v in variants.VARIANTS if v.backend == "tensorrt"]
    return {"sources": {v.name: ctx.sha(ctx.rd.export_file(v.source)) for v in trt
                        if ctx.cfg.quant.builds(v.quant) and ctx.rd.export_file(v.source).is_file()},
            "available": {v.name: unavailable(v) for v in trt}, "environment": _trt_identity()}


def _trt_identity() -> dict:
    """TensorRT version and GPU, so a new driver/GPU/TensorRT rebuilds the engines.

    The version is the module's ``tensorrt.__version__``, not the pip distribution's: ``tensorrt-cu12``,
    ``tensorrt-cu13`` and JetPack's apt package provide the module without a distribution named ``tensorrt``."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:  # no import (and no CUDA libraries) on CPU-only hosts
        return {}
    from exporters.tensorrt import gpu_identity, installed_version

    version = installed_version()
    return {"tensorrt": version, **gpu_identity()} if version else {}


def run(ctx: Context) -> list[Path]:
    """Build TensorRT engines when this machine can; otherwise record why not (CPU runs go on)."""
    status = {}
    outputs = []
    for v in variants.VARIANTS:
        if v.backend != "tensorrt":
            continue
        why = unavailable(v) or (None if ctx.cfg.quant.builds(v.quant) else f"not built with --quant {ctx.cfg.quant.mode}")
        if why:
            status[v.name] = {"built": False, "reason": why}
            log.info("engines: %s skipped: %s", v.name, why)
            continue
        from exporters import tensorrt as trtx
        from exporters.onnx import read_metadata

        src, engine = ctx.rd.export_file(v.source), ctx.rd.export_file(v.file)
        meta = read_metadata(src)
        try:
            side = trtx.build_engine(src, engine, v.precision, metadata=meta, log=log.info,
                                     image_shape=tuple(json.loads(meta.get("input_shape", "[1, 28, 28]"))),
                                     timing_cache=ctx.rd.export_file("timing.cache"))
        except trtx.TensorRTError as e:
            raise PipelineError(str(e)) from None
        status[v.name] = {"built": True, **{k: side[k] for k in ("tensorrt", "gpu", "compute_capability",
                                                                   "build_seconds", "gpu_fallback_layers",
                                                                   "layer_precisions")}}
        outputs += [engine, Path(str(engine) + ".json")]
        log.info("engines: %s built in %.1f s", engine, side["build_seconds"])
    return outputs + [write_json(ctx.rd.engines_status, status)]
