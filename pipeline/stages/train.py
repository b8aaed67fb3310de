"""Stage ``train``: seed, build, train (resumable; data-parallel with ``--nproc``), and write the self-describing
checkpoint, the curves and the training summary with its throughput (images/s, GFLOP/s against the CPU's peak)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pipeline.store import checkpoint
from pipeline import models
from pipeline.config import stamp
from pipeline.store.paths import write_json
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    """For a model given as an object, ``model_source`` is its fingerprint (architecture and initial weights), so
    the same object again skips training and a changed one retrains; for a named model, its source file's hash."""
    obj = ctx.cfg.model_object
    return {"data": ctx.sha(ctx.rd.data_summary), "model": ctx.cfg.model,
            "model_source": obj.fingerprint if obj is not None else models.source_fingerprint(ctx.cfg.model),
            "train": stamp(ctx.cfg.train)}


def run(ctx: Context) -> list[Path]:
    import torch

    from pipeline.report import figures as plots
    from pipeline.dataset import CLASSES
    from pipeline.training.fit import train

    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed)  # initial weights come from the global RNG: seed it before building
    model = models.build(cfg.model, cfg.model_object)  # an object: a copy with its own initial weights
    log.info("train: %s (%s parameters, %.2f M MACs/image), %d epochs, batch %d, %s lr %g, %s schedule",
             cfg.model, f"{models.param_count(model):,}", models.macs_per_image(model) / 1e6, cfg.train.epochs,
             cfg.train.batch_size, cfg.train.optimizer, cfg.train.lr, cfg.train.schedule)
    s = ctx.splits
    resume_key = hashlib.sha256(json.dumps(key(ctx), sort_keys=True).encode()).hexdigest()
    if cfg.force:
        ctx.rd.train_state.unlink(missing_ok=True)  # --force means from scratch
    result = train(model, s, cfg.train, progress=ctx.progress, resume_path=ctx.rd.train_state, resume_key=resume_key,
                   group=ctx.group)
    throughput = _throughput(result, models.macs_per_image(result.model))
    summary = {
        "model": cfg.model, "epochs": cfg.train.epochs, "best_epoch": result.best_epoch,
        "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
        "seconds": result.seconds, "device": result.device, "train_images": len(s.train_y),
        "val_images": len(s.val_y), "world_size": cfg.train.world_size, "throughput": throughput,
        "history": result.history,
    }
    ckpt = checkpoint.save(ctx.rd.checkpoint, {
        "model": cfg.model,
        "state_dict": result.model.state_dict(),
        "train_config": stamp(cfg.train),
        "normalization": {"mean": [s.mean], "std": [s.std], "pixel_scale": 1 / 255},
        "classes": CLASSES,
        "input": {"name": "input", "shape": [1, 28, 28], "layout": "NCHW", "dtype": "float32"},
        "summary": {k: v for k, v in summary.items() if k != "history"},
        **checkpoint.object_record(cfg.model_object),
    })
    return [ckpt, write_json(ctx.rd.history, summary),
            plots.training_curves(result.history, ctx.rd.curves_png, result.best_epoch)]


def _throughput(result, macs: int) -> dict | None:
    """Training images/s over the epochs' training loops (validation excluded; every rank's images in a DDP
    run) and what that achieves against the CPU's measured peak (:func:`pipeline.measure.efficiency.training`)."""
    from pipeline.measure import efficiency

    rows = [h for h in result.history if h.get("train_seconds")]  # states saved before it existed lack it
    if not rows:
        return None
    images, seconds = sum(h["images"] for h in rows), sum(h["train_seconds"] for h in rows)
    peak = efficiency.peak_gflops() if result.device == "cpu" else None  # the CPU's peak says nothing of a GPU
    out = efficiency.training(macs, images / seconds, peak)
    log.info("train: %s images/s, %.2f GFLOP/s at %d x %s forward MACs per image%s", f"{out['images_per_s']:,.0f}",
             out["gflops"], efficiency.TRAIN_MACS_FACTOR, f"{macs / 1e6:.2f} M",
             f" = {100 * out['fraction_of_peak']:.1f} % of the measured CPU peak ({peak:.0f} GFLOP/s)" if peak else "")
    return out
