"""Stage ``validate``: every variant on all 10,000 test images (parity, latency), then the report."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from .. import checkpoint, models
from ..config import stamp
from ..errors import PipelineError
from ..variants import BY_NAME, VARIANTS, unavailable
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    files = {v.name: ctx.sha(ctx.rd.export_file(v.file)) for v in VARIANTS
             if v.file and ctx.cfg.quant.builds(v.quant) and unavailable(v) is None
             and ctx.rd.export_file(v.file).is_file()}
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "files": files, "validate": stamp(ctx.cfg.validate)}


def run(ctx: Context) -> list[Path]:
    import numpy as np
    import torch

    from runtime.onnxrt import OnnxrtRunner

    from .. import efficiency, environment, report
    from ..torch_runner import TorchRunner
    from ..validate import check_parity, over_budget, validate_variant

    vcfg = ctx.cfg.validate
    if vcfg.threads:
        torch.set_num_threads(vcfg.threads)
    ckpt = checkpoint.load(ctx.rd.checkpoint)
    model = checkpoint.restore(ckpt)
    images = ctx.splits.test_x.numpy().astype(np.float32)
    labels = ctx.splits.test_y.numpy()
    _check_golden(ctx, model)

    rows, reference, skipped, logits_by_name = [], None, [], {}
    for v in VARIANTS:
        if not ctx.cfg.quant.builds(v.quant):
            skipped.append({"name": v.name, "reason": f"not built with --quant {ctx.cfg.quant.mode}"})
            continue
        why = unavailable(v)
        if why:
            skipped.append({"name": v.name, "reason": why})
            continue
        if v.file and not ctx.rd.export_file(v.file).is_file():
            raise PipelineError(f"{ctx.rd.export_file(v.file)} is missing; rerun with --force.")
        if v.backend == "torch":
            make = lambda: TorchRunner(model)  # noqa: E731
        elif v.backend == "tensorrt":
            make = lambda v=v: _trt_runner(ctx, v)  # noqa: E731
        else:
            make = lambda v=v: OnnxrtRunner(ctx.rd.export_file(v.file), provider=v.provider, threads=vcfg.threads,
                                             optimization=v.ort_optimization)  # noqa: E731
        row, logits = validate_variant(v, make, images, labels, reference, vcfg)
        logits_by_name[v.name] = logits
        if reference is None:
            _require_finite_reference(ctx, row["nonfinite"], len(images), "test images")
            reference = logits
        path = ctx.rd.export_file(v.file) if v.file else ctx.rd.checkpoint
        row["path"] = str(path)
        row["size_bytes"] = path.stat().st_size
        if v.backend == "tensorrt":
            row["engine"] = _engine_summary(path)
        rows.append(row)

    summary = ckpt.get("summary", {})
    params = models.param_count(model)
    macs = models.macs_per_image(model)
    peak = efficiency.peak_gflops()
    for row in rows:
        row["efficiency"] = efficiency.achieved(macs, row["latency"][str(vcfg.batches[-1])]["throughput_per_s"], peak)
    big, small = str(vcfg.batches[-1]), str(vcfg.batches[0])
    torch_row = rows[0]
    speed = {r["name"]: {
        "throughput_ratio": r["latency"][big]["throughput_per_s"] / torch_row["latency"][big]["throughput_per_s"],
        "p50_ratio": torch_row["latency"][small]["p50_ms"] / r["latency"][small]["p50_ms"],
    } for r in rows[1:]}
    rep = {
        "model": ctx.cfg.model,
        "params": params,
        "macs_per_image": macs,
        "cpu_peak_gflops": round(peak, 1),
        "cpu_peak_method": efficiency.PEAK_METHOD,
        "train": {"epochs": summary.get("epochs"), "seconds": summary.get("seconds"),
                  "val_accuracy": summary.get("val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
                  "best_epoch": summary.get("best_epoch"), "device": summary.get("device"),
                  "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
                  "config": ckpt["train_config"], "history": _read_json(ctx.rd.history, {}).get("history")},
        "variants": rows,
        "speedup_vs_torch": speed,
        "skipped": skipped,
        "quantization": _read_json(ctx.rd.sqnr_json),
        "quick": ctx.cfg.quick,
        "environment": environment.capture(vcfg.threads),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    shipped = report.shipped_variant(rows)
    rep["shipped"] = shipped
    pred = logits_by_name[shipped].argmax(1)
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (labels, pred), 1)
    rep["confusion"] = {"variant": shipped, "classes": ckpt["classes"], "matrix": matrix.tolist()}
    written = report.write_all(rep, ctx.rd.root)
    log.info("report: %s, %s and %s", ctx.rd.report_json, ctx.rd.report_md, ctx.rd.report_html)
    for msg in over_budget(rows):
        log.warning("accuracy budget: %s", msg)
    check_parity(rows, BY_NAME)
    return written


def _trt_runner(ctx: Context, v):
    """A TensorRT runner, after refusing an engine whose sidecar does not match this ONNX, TensorRT (the
    module's ``__version__``: hosts with only ``tensorrt-cu12``/``-cu13`` or JetPack's apt package have no
    distribution named ``tensorrt``), GPU, or the build parameters the engines stage uses."""
    from exporters import tensorrt as trtx
    from exporters.onnx import read_metadata
    from runtime.tensorrt import TensorRTRunner

    engine, src = ctx.rd.export_file(v.file), ctx.rd.export_file(v.source)
    try:
        version = trtx.installed_version()
        if version is None:
            raise trtx.TensorRTError("TensorRT cannot be imported here.")
        shape = tuple(json.loads(read_metadata(src).get("input_shape", "[1, 28, 28]")))  # as the engines stage
        trtx.require_fresh(engine, src, version, trtx.gpu_identity(), trtx.build_params(v.precision, shape))
    except trtx.TensorRTError as e:
        raise PipelineError(f"{e} Run `pipeline run all --force` to rebuild.") from None
    return TensorRTRunner(engine)


def _engine_summary(engine: Path) -> dict:
    """What the built engine really holds (per-layer precisions, placement, profile), from its sidecar."""
    side = _read_json(Path(str(engine) + ".json"), {})
    return {k: side[k] for k in ("tensorrt", "layer_precisions", "profile", "dla_core", "gpu_fallback_layers")
            if k in side}


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _require_finite_reference(ctx: Context, nonfinite: int, total: int, what: str) -> None:
    """The PyTorch reference must give finite logits: every variant is judged against it.

    Exit 2 (:class:`PipelineError`), not 3: exit 3 says "an exported file disagrees with a reference that is
    right"; here the reference itself, the user's trained model, is broken, so no parity can be stated at
    all, and the fix (the model's eval-mode forward, or retraining) is the user's. No report is written:
    every figure in it would be measured against NaN.
    """
    if nonfinite:
        raise PipelineError(
            f"The trained model itself ({ctx.rd.checkpoint}, run in PyTorch) gives NaN or infinite logits on "
            f"{nonfinite} of {total} {what}, so no exported variant can be checked against it and no report was "
            "written. Its eval-mode forward is broken (a division by zero, log of 0, sqrt of a negative number, or "
            "diverged weights): fix the model, then rerun with --force (a lower --lr if training diverged).")


def _check_golden(ctx: Context, model) -> None:
    """The checkpoint must still reproduce the golden logits the export stage stored (NaN never does)."""
    import numpy as np
    import torch

    try:
        g = np.load(ctx.rd.golden)
        x, ref = g["input"], g["logits"]
    except Exception as e:
        raise PipelineError(f"{ctx.rd.golden} is unreadable ({type(e).__name__}); rerun with --force.") from None
    with torch.inference_mode():
        out = model(torch.from_numpy(x)).numpy()
    _require_finite_reference(ctx, int((~np.isfinite(out).all(1)).sum()), len(out), "golden inputs")
    diff = float(np.abs(out - ref).max())
    if not diff <= 1e-5:  # NaN in the stored golden logits fails too
        raise PipelineError(f"The checkpoint no longer reproduces {ctx.rd.golden} (max diff {diff:.2e}); "
                            "rerun with --force.")
