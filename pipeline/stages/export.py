"""Stage ``export``: the FP32 and FP16 ONNX files, with metadata, and PyTorch's golden logits.

The files are the variant rows whose ``recipe`` is one registered here (:mod:`pipeline.stages.recipes`): ``fp32``
comes from :mod:`exporters.onnx` (PyTorch -> ONNX), ``fp16`` from :mod:`exporters.precision` (from the FP32 file).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.store import checkpoint
from pipeline.config import stamp
from pipeline.errors import PipelineError
from . import recipes
from .context import Context

log = logging.getLogger(__name__)
recipe = recipes.registrar("export")


def key(ctx: Context) -> dict:
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "export": stamp(ctx.cfg.export),
            "rows": recipes.key(ctx, "export")}


@dataclass
class Shared:
    """What the export recipes share: the trained model, its checkpoint and the metadata every file carries."""
    model: object
    ckpt: dict
    meta: dict
    made: dict[str, Path] = field(default_factory=dict)  # recipe -> the file it made in this run


def run(ctx: Context) -> list[Path]:
    import numpy as np

    from exporters.onnx import build_metadata

    from pipeline.store.paths import atomic_path

    ckpt = checkpoint.load(ctx.rd.checkpoint)
    model = checkpoint.restore(ckpt)
    norm = ckpt["normalization"]
    meta = build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                          checkpoint_sha256=ctx.sha(ctx.rd.checkpoint), precision="fp32")
    shared = Shared(model, ckpt, meta)
    outputs = recipes.outputs(ctx, [(v, recipes.build(ctx, v, shared)) for v in recipes.todo(ctx, "export")])
    # Golden reference: PyTorch's logits for the first test images (llm.c's habit).
    import torch

    n = ctx.cfg.export.golden_count
    x = ctx.splits.test_x[:n]
    with torch.inference_mode():
        logits = model(x).numpy()
    with atomic_path(ctx.rd.golden) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, input=x.numpy(), logits=logits, labels=ctx.splits.test_y[:n].numpy())
    return outputs + [ctx.rd.golden]


@recipe("fp32", "FP32, opset {e.opset}, dynamic batch, metadata embedded")
def fp32(ctx: Context, v, shared: Shared) -> Path:
    """PyTorch -> ONNX (torch.export), the model's preprocessing in the file's metadata."""
    from exporters.onnx import ExportError, export_fp32

    from pipeline.store.paths import refused_writes

    final = ctx.rd.export_file(v.file)
    try:
        with refused_writes(final):
            return export_fp32(shared.model, final, shared.meta, opset=ctx.cfg.export.opset)
    except ExportError as e:
        raise PipelineError(f"Could not export {shared.ckpt['model']} to ONNX. {e}. Models must be traceable by "
                            "torch.export (no data-dependent Python control flow).") from None


@recipe("fp16", "FP16 weights and compute, FP32 input/output")
def fp16(ctx: Context, v, shared: Shared) -> Path:
    """The FP32 file made by the ``fp32`` recipe in FP16 (weights and compute; input and output stay FP32)."""
    from exporters.precision import export_fp16

    from pipeline.store.paths import refused_writes

    if "fp32" not in shared.made:
        raise PipelineError("the fp16 recipe converts the FP32 ONNX file, and no row with recipe fp32 comes "
                            "before it in pipeline/variants.py.")
    final = ctx.rd.export_file(v.file)
    with refused_writes(final):
        return export_fp16(shared.made["fp32"], final, {**shared.meta, "precision": "fp16"})
