"""The stages of ``pipeline run`` and the bookkeeping that lets a rerun skip finished ones.

Data flows one way: data -> train -> export -> quantize -> engines -> validate. Export comes
before quantize because PTQ and the CPU INT8 variant quantize the FP32 ONNX file
(onnxruntime's calibrators work on ONNX); QAT reads the checkpoint. Each stage reads the
previous stages' artifacts by path (through :class:`RunDir`) and writes its
own. Each stage is one module here with two functions: ``key(ctx)`` (what its
result depends on) and ``run(ctx)`` (do it, return the files written). A stage is skipped when its *key* (a hash of its config and the SHA-256
of the files it reads) matches the one recorded in the manifest (``stages.json``,
see :mod:`pipeline.store.manifest`) and every file it wrote is still there with the
same SHA-256. A missing output makes its stage run again; an altered or
truncated one stops the run before anything reads or overwrites it.
``--force`` redoes every stage.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.store import checkpoint, manifest
from pipeline import models
from pipeline.config import RunConfig
from pipeline.errors import PipelineError
from pipeline.store.paths import RunDir, atomic_write, check_writable
from . import data, edge, engines, export, quantize, train, validate  # edge: recipes only (registry)
from .context import Context

log = logging.getLogger(__name__)
__all__ = ["Context", "RunDir", "STAGES", "STAGE_NAMES", "Stage", "run", "run_lock", "until"]


@dataclass(frozen=True)
class Stage:
    name: str
    key: Callable[[Context], dict]
    run: Callable[[Context], list[Path]]
    doc: str
    scratch: Callable[[Context], list[Path]] = lambda ctx: []  # working files removed once the stage is recorded


STAGES: tuple[Stage, ...] = (
    Stage("data", data.key, data.run, "MNIST via torchvision, validation split, sample grid"),
    Stage("train", train.key, train.run, "train, keep best validation epoch, checkpoint + curves",
          scratch=lambda ctx: [ctx.rd.train_state]),
    Stage("export", export.key, export.run, "FP32 and FP16 ONNX with metadata + golden logits"),
    Stage("quantize", quantize.key, quantize.run, "INT8 QDQ ONNX by PTQ and QAT (+ CPU INT8), per-layer SQNR"),
    Stage("engines", engines.key, engines.run, "TensorRT engines when TensorRT and a GPU are present"),
    Stage("validate", validate.key, validate.run, "accuracy parity on 10,000 test images, latency, report"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def until(stage: str) -> str:
    """The last stage to run for the ``STAGE`` a user gave (``all`` means every stage)."""
    last = STAGE_NAMES[-1] if stage == "all" else stage
    if last not in STAGE_NAMES:
        raise PipelineError(f"Unknown stage '{stage}'. Choose one of: all, {', '.join(STAGE_NAMES)}.")
    return last


def run(cfg: RunConfig, until: str = "validate", progress=None, group=None) -> dict[str, str]:
    """Run the stages up to and including ``until``; return what each did, in order: ``"ran"`` or ``"skipped"``.

    ``group`` (rank 0 of a DDP run, :mod:`pipeline.training.distributed`) is handed to the train stage; the stages run
    and write here, on rank 0, exactly as in one process."""
    if until not in STAGE_NAMES:
        raise PipelineError(f"Unknown stage '{until}'. Stages: {', '.join(STAGE_NAMES)}, or all.")
    ctx = Context(cfg, progress, group)
    try:
        models.build(cfg.model, cfg.model_object)  # fail on a bad --model before anything is written
    except PipelineError:
        checkpoint.refuse_object_run(ctx.rd.checkpoint)  # the folder's model was a session's object: say so
        raise
    check_writable(ctx.rd.root)
    with run_lock(ctx.rd.root):
        leftovers = manifest.temp_leftovers(ctx.rd.root)
        for p in leftovers:
            p.unlink(missing_ok=True)
        if leftovers:
            log.info("removed %d partial file(s) left by an interrupted run: %s", len(leftovers),
                     ", ".join(str(p.relative_to(ctx.rd.root)) for p in leftovers))
        return _run_stages(ctx, until)


@contextlib.contextmanager
def run_lock(root: Path):
    """One run per model folder at a time: an exclusive ``flock`` on ``<run>/.lock``.

    The kernel drops the lock when its process dies (even by SIGKILL), so a lock
    left by a killed run is never stale; the PID inside is only for the message.
    """
    import fcntl
    import os

    path = RunDir(root).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise PipelineError(f"Another `pipeline run` (pid {holder}) is using {root}; wait for it to finish "
                                "or use another --artifacts folder. Nothing was changed.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _run_stages(ctx: Context, until: str) -> dict[str, str]:
    cfg = ctx.cfg
    done = {}
    try:
        record = manifest.load(ctx.rd.stages)
    except PipelineError:
        if not cfg.force:
            raise
        log.warning("unreadable manifest %s: --force redoes every stage and writes a new one", ctx.rd.stages)
        record = {}
    for stage in STAGES:
        prev = record.get(stage.name)
        problems = manifest.check_stage(ctx.rd.root, stage.name, prev) if prev else []
        if not cfg.force:
            manifest.refuse_damaged(ctx.rd.root, problems)
        inputs = stage.key(ctx)
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        if not cfg.force and prev and prev.get("key") == key and not problems:
            log.info("%s: up to date, skipped (use --force to redo)", stage.name)
            done[stage.name] = "skipped"
        else:
            if problems:
                log.info("%s: redone, %s", stage.name, "; ".join(str(p) for p in problems))
            t0 = time.perf_counter()
            log.info("%s: %s", stage.name, stage.doc)
            saved = ctx.rd.stages.read_bytes() if prev else None
            if record.pop(stage.name, None) is not None:
                manifest.save(ctx.rd.stages, record)  # from here until it is recorded again, the stage is not done
            try:
                outputs = stage.run(ctx)
            except BaseException:
                _restore_if_untouched(ctx, stage.name, prev, saved, record)
                raise
            record[stage.name] = manifest.entry(ctx.rd.root, key, inputs, outputs, time.perf_counter() - t0)
            manifest.save(ctx.rd.stages, record)
            for p in stage.scratch(ctx):
                p.unlink(missing_ok=True)
            log.info("%s: done in %.1f s", stage.name, record[stage.name]["seconds"])
            done[stage.name] = "ran"
        if stage.name == until:
            break
    return done


def _restore_if_untouched(ctx: Context, name: str, prev: dict | None, saved: bytes | None, record: dict) -> None:
    """A stage that failed (bad input, full disk, Ctrl-C) before replacing any of its recorded outputs leaves
    the manifest exactly as it was, byte for byte; otherwise its entry stays withdrawn and the next run redoes it."""
    if prev is None or saved is None or manifest.check_stage(ctx.rd.root, name, prev):
        return
    try:
        atomic_write(ctx.rd.stages, saved)
        record[name] = prev
    except PipelineError:  # the disk is still full: the stage is redone next time, which is also correct
        pass
