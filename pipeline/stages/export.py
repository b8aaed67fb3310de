"""Stage ``export``: the FP32 and FP16 ONNX files, with metadata, and PyTorch's golden logits.

The FP32 file comes from :mod:`exporters.onnx` (PyTorch -> ONNX), the FP16 one from :mod:`exporters.precision`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.store import checkpoint
from pipeline.config import stamp
from pipeline.errors import PipelineError
from pipeline.variants import BY_NAME
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "export": stamp(ctx.cfg.export)}


def run(ctx: Context) -> list[Path]:
    import numpy as np

    from exporters.onnx import ExportError, build_metadata, export_fp32
    from exporters.precision import export_fp16

    from pipeline.store.paths import atomic_path, refused_writes

    ckpt = checkpoint.load(ctx.rd.checkpoint)
    model = checkpoint.restore(ckpt)
    norm = ckpt["normalization"]
    meta = build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                          checkpoint_sha256=ctx.sha(ctx.rd.checkpoint), precision="fp32")
    fp32_file, fp16_file = ctx.rd.export_file(BY_NAME["onnx-fp32"].file), ctx.rd.export_file(BY_NAME["onnx-fp16"].file)
    try:
        with refused_writes(fp32_file):
            onnx_path = export_fp32(model, fp32_file, meta, opset=ctx.cfg.export.opset)
    except ExportError as e:
        raise PipelineError(f"Could not export {ckpt['model']} to ONNX. {e}. Models must be traceable by "
                            "torch.export (no data-dependent Python control flow).") from None
    log.info("export: %s (%s bytes), opset %d, dynamic batch, metadata embedded", onnx_path,
             f"{onnx_path.stat().st_size:,}", ctx.cfg.export.opset)
    with refused_writes(fp16_file):
        fp16_path = export_fp16(onnx_path, fp16_file, {**meta, "precision": "fp16"})
    log.info("export: %s (%s bytes), FP16 weights and compute, FP32 input/output", fp16_path,
             f"{fp16_path.stat().st_size:,}")
    # Golden reference: PyTorch's logits for the first test images (llm.c's habit).
    import torch

    n = ctx.cfg.export.golden_count
    x = ctx.splits.test_x[:n]
    with torch.inference_mode():
        logits = model(x).numpy()
    with atomic_path(ctx.rd.golden) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, input=x.numpy(), logits=logits, labels=ctx.splits.test_y[:n].numpy())
    return [onnx_path, fp16_path, ctx.rd.golden]
