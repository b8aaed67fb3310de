"""The stages of ``pipeline run`` and the bookkeeping that lets a rerun skip finished ones.

Data flows one way: data -> train -> export -> quantize -> engines -> validate. Export comes
before quantize because PTQ and the CPU INT8 variant quantize the FP32 ONNX file
(onnxruntime's calibrators work on ONNX); QAT reads the checkpoint. Each stage reads the
previous stages' artifacts by path (through :class:`RunDir`) and writes its
own. A stage is skipped when its *key* (a hash of its config and the SHA-256
of the files it reads) matches the one recorded in the manifest (``stages.json``,
see :mod:`pipeline.manifest`) and every file it wrote is still there with the
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import checkpoint, manifest, models
from .config import RunConfig, stamp
from .errors import PipelineError
from .layout import RunDir, check_writable, sha256_file, write_json
from .variants import BY_NAME, VARIANTS, unavailable

log = logging.getLogger(__name__)


class Context:
    """Per-run state shared by the stages: config, layout, lazily loaded data."""

    def __init__(self, cfg: RunConfig, progress=None):
        self.cfg = cfg
        self.rd = RunDir.for_model(cfg.artifacts, cfg.model)
        self.progress = progress
        self._splits = None

    @property
    def splits(self):
        if self._splits is None:
            from .data import load_splits

            self._splits = load_splits(self.cfg.data)
        return self._splits

    def sha(self, path: Path) -> str:
        if not path.is_file():
            raise PipelineError(f"{path} is missing; rerun the stage that writes it (or use --force).")
        return sha256_file(path)


# ---------------------------------------------------------------- data
def _data_key(ctx: Context) -> dict:
    return {k: v for k, v in stamp(ctx.cfg.data).items() if k != "root"}


def _data_run(ctx: Context) -> list[Path]:
    from . import plots
    from .data import CLASSES, RAW_FILES

    s = ctx.splits
    summary = {
        "source": "torchvision.datasets.MNIST (LeCun & Cortes, CC BY-SA 3.0)",
        "raw_md5": {name: md5 for name, (_, md5) in RAW_FILES.items()},
        "train_images": len(s.train_y), "val_images": len(s.val_y), "test_images": len(s.test_y),
        "split_seed": ctx.cfg.data.split_seed, "mean": s.mean, "std": s.std, "classes": CLASSES,
    }
    log.info("data: %d train / %d validation / %d test images; mean %.4f std %.4f (from the training split)",
             len(s.train_y), len(s.val_y), len(s.test_y), s.mean, s.std)
    imgs = (s.train_x[:9, 0] * s.std + s.mean).numpy()
    return [write_json(ctx.rd.data_summary, summary),
            plots.sample_grid(imgs, s.train_y[:9].tolist(), ctx.rd.samples_png)]


# ---------------------------------------------------------------- train
def _train_key(ctx: Context) -> dict:
    return {"data": ctx.sha(ctx.rd.data_summary), "model": ctx.cfg.model,
            "model_source": models.source_fingerprint(ctx.cfg.model), "train": stamp(ctx.cfg.train)}


def _train_run(ctx: Context) -> list[Path]:
    from . import plots
    from .data import CLASSES
    from .train import train

    cfg = ctx.cfg
    import torch

    torch.manual_seed(cfg.train.seed)  # initial weights come from the global RNG: seed it before building
    model = models.build(cfg.model)
    log.info("train: %s (%s parameters, %.2f M MACs/image), %d epochs, batch %d, %s lr %g, %s schedule",
             cfg.model, f"{models.param_count(model):,}", models.macs_per_image(model) / 1e6, cfg.train.epochs,
             cfg.train.batch_size, cfg.train.optimizer, cfg.train.lr, cfg.train.schedule)
    s = ctx.splits
    key = hashlib.sha256(json.dumps(_train_key(ctx), sort_keys=True).encode()).hexdigest()
    if cfg.force:
        ctx.rd.train_state.unlink(missing_ok=True)  # --force means from scratch
    result = train(model, s, cfg.train, progress=ctx.progress, resume_path=ctx.rd.train_state, resume_key=key)
    summary = {
        "model": cfg.model, "epochs": cfg.train.epochs, "best_epoch": result.best_epoch,
        "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
        "seconds": result.seconds, "device": result.device, "train_images": len(s.train_y),
        "val_images": len(s.val_y), "history": result.history,
    }
    ckpt = checkpoint.save(ctx.rd.checkpoint, {
        "model": cfg.model,
        "state_dict": result.model.state_dict(),
        "train_config": stamp(cfg.train),
        "normalization": {"mean": [s.mean], "std": [s.std], "pixel_scale": 1 / 255},
        "classes": CLASSES,
        "input": {"name": "input", "shape": [1, 28, 28], "layout": "NCHW", "dtype": "float32"},
        "summary": {k: v for k, v in summary.items() if k != "history"},
    })
    return [ckpt, write_json(ctx.rd.history, summary),
            plots.training_curves(result.history, ctx.rd.curves_png, result.best_epoch)]


# ---------------------------------------------------------------- export
def _export_key(ctx: Context) -> dict:
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "export": stamp(ctx.cfg.export)}


def _export_run(ctx: Context) -> list[Path]:
    import numpy as np

    from exporters.onnx import ExportError, build_metadata, export_fp16, export_fp32

    from .layout import atomic_path

    ckpt = checkpoint.load(ctx.rd.checkpoint)
    model = checkpoint.restore(ckpt)
    norm = ckpt["normalization"]
    meta = build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                          checkpoint_sha256=ctx.sha(ctx.rd.checkpoint), precision="fp32")
    try:
        onnx_path = export_fp32(model, ctx.rd.export_file(BY_NAME["onnx-fp32"].file), meta, opset=ctx.cfg.export.opset)
    except ExportError as e:
        raise PipelineError(f"Could not export {ckpt['model']} to ONNX. {e}. Models must be traceable by "
                            "torch.export (no data-dependent Python control flow).") from None
    log.info("export: %s (%s bytes), opset %d, dynamic batch, metadata embedded", onnx_path,
             f"{onnx_path.stat().st_size:,}", ctx.cfg.export.opset)
    fp16_path = export_fp16(onnx_path, ctx.rd.export_file(BY_NAME["onnx-fp16"].file), {**meta, "precision": "fp16"})
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


# ---------------------------------------------------------------- quantize
def _quantize_key(ctx: Context) -> dict:
    return {"data": ctx.sha(ctx.rd.data_summary), "checkpoint": ctx.sha(ctx.rd.checkpoint),
            "fp32": ctx.sha(ctx.rd.export_file(BY_NAME["onnx-fp32"].file)), "quant": stamp(ctx.cfg.quant),
            "opset": ctx.cfg.export.opset}


def _quantize_run(ctx: Context) -> list[Path]:
    from . import plots, quantize

    q = ctx.cfg.quant
    if q.mode == "none":
        log.info("quantize: --quant none, no INT8 variants")
        return []
    fp32 = ctx.rd.export_file(BY_NAME["onnx-fp32"].file)
    ckpt = checkpoint.load(ctx.rd.checkpoint)
    norm = ckpt["normalization"]
    from exporters.onnx import build_metadata

    def meta(method: str) -> dict:
        return build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                              checkpoint_sha256=ctx.sha(ctx.rd.checkpoint), precision="int8",
                              extra={"quantization": method})

    calib = quantize.calibration_images(ctx.splits.train_x, q)
    outputs, sqnr = [], {}
    if q.ptq:
        path = quantize.ptq(fp32, ctx.rd.export_file(BY_NAME["onnx-int8-ptq"].file), calib, q,
                            meta(f"ptq/onnxruntime/{q.calib_method}/{q.calib_size}"))
        outputs.append(path)
        log.info("quantize: PTQ (%s, %d calibration images) -> %s (%s bytes)", q.calib_method, q.calib_size, path,
                 f"{path.stat().st_size:,}")
    if q.qat:
        model = checkpoint.restore(ckpt)
        path = quantize.qat(model, ctx.splits, q, ctx.rd.export_file(BY_NAME["onnx-int8-qat"].file),
                            meta(f"qat/torchao-pt2e/{q.qat_epochs}ep/lr{q.qat_lr:g}"), ctx.cfg.export.opset,
                            progress=ctx.progress)
        outputs.append(path)
        log.info("quantize: QAT (%d epoch(s), lr %g) -> %s (%s bytes)", q.qat_epochs, q.qat_lr, path,
                 f"{path.stat().st_size:,}")
    if q.cpu_variant:
        path = quantize.cpu_int8(fp32, ctx.rd.export_file(BY_NAME["onnx-int8-cpu"].file), calib, q,
                                 meta(f"ptq/onnxruntime-u8s8/{q.calib_method}/{q.calib_size}"))
        outputs.append(path)
        log.info("quantize: CPU INT8 (uint8 activations) -> %s (%s bytes)", path, f"{path.stat().st_size:,}")
    probe = calib[: q.sqnr_images]
    for p in outputs:
        name = next(v.name for v in VARIANTS if v.file == p.name)
        sqnr[name] = quantize.per_layer_sqnr(fp32, p, probe)
        worst = min(sqnr[name], key=lambda r: r["sqnr_db"])
        log.info("quantize: %s per-layer SQNR %s dB (lowest: layer %d %s)", name,
                 " ".join(f"{r['sqnr_db']:.1f}" for r in sqnr[name]), worst["layer"], worst["op"])
    outputs.append(write_json(ctx.rd.sqnr_json, {"images": len(probe), "source": "training split (calibration set)",
                                                 "variants": sqnr}))
    outputs.append(plots.sqnr(sqnr, ctx.rd.sqnr_png))
    return outputs


# ---------------------------------------------------------------- engines
def _engines_key(ctx: Context) -> dict:
    trt = [v for v in VARIANTS if v.backend == "tensorrt"]
    return {"sources": {v.name: ctx.sha(ctx.rd.export_file(v.source)) for v in trt
                        if ctx.cfg.quant.builds(v.quant) and ctx.rd.export_file(v.source).is_file()},
            "available": {v.name: unavailable(v) for v in trt}, "environment": _trt_identity()}


def _trt_identity() -> dict:
    """TensorRT version and GPU, so a new driver/GPU/TensorRT rebuilds the engines."""
    from importlib import metadata

    try:
        version = metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        return {}
    from exporters.tensorrt import gpu_identity

    return {"tensorrt": version, **gpu_identity()}


def _engines_run(ctx: Context) -> list[Path]:
    """Build TensorRT engines when this machine can; otherwise record why not (CPU runs go on)."""
    status = {}
    outputs = []
    for v in VARIANTS:
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
                                     timing_cache=ctx.rd.export_file("timing.cache"))
        except trtx.TensorRTError as e:
            raise PipelineError(str(e)) from None
        status[v.name] = {"built": True, **{k: side[k] for k in ("tensorrt", "gpu", "compute_capability",
                                                                   "build_seconds", "gpu_fallback_layers")}}
        outputs += [engine, Path(str(engine) + ".json")]
        log.info("engines: %s built in %.1f s", engine, side["build_seconds"])
    return outputs + [write_json(ctx.rd.engines_status, status)]


# ---------------------------------------------------------------- validate
def _validate_key(ctx: Context) -> dict:
    files = {v.name: ctx.sha(ctx.rd.export_file(v.file)) for v in VARIANTS
             if v.file and ctx.cfg.quant.builds(v.quant) and unavailable(v) is None
             and ctx.rd.export_file(v.file).is_file()}
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "files": files, "validate": stamp(ctx.cfg.validate)}


def _validate_run(ctx: Context) -> list[Path]:
    import numpy as np
    import torch

    from runtime.onnxrt import OnnxrtRunner

    from . import efficiency, environment, report
    from .torch_runner import TorchRunner
    from .validate import check_parity, over_budget, validate_variant

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
            make = lambda v=v: OnnxrtRunner(ctx.rd.export_file(v.file), provider=v.provider, threads=vcfg.threads)  # noqa: E731
        row, logits = validate_variant(v, make, images, labels, reference, vcfg)
        logits_by_name[v.name] = logits
        if reference is None:
            reference = logits
        path = ctx.rd.export_file(v.file) if v.file else ctx.rd.checkpoint
        row["path"] = str(path)
        row["size_bytes"] = path.stat().st_size
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
    """A TensorRT runner, after refusing an engine whose sidecar does not match this ONNX/TensorRT/GPU."""
    from importlib import metadata

    from exporters import tensorrt as trtx
    from runtime.tensorrt import TensorRTRunner

    engine = ctx.rd.export_file(v.file)
    try:
        trtx.require_fresh(engine, ctx.rd.export_file(v.source), metadata.version("tensorrt"), trtx.gpu_identity())
    except trtx.TensorRTError as e:
        raise PipelineError(f"{e} Run `pipeline run all --force` to rebuild.") from None
    return TensorRTRunner(engine)


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _check_golden(ctx: Context, model) -> None:
    """The checkpoint must still reproduce the golden logits the export stage stored."""
    import numpy as np
    import torch

    try:
        g = np.load(ctx.rd.golden)
        x, ref = g["input"], g["logits"]
    except Exception as e:
        raise PipelineError(f"{ctx.rd.golden} is unreadable ({type(e).__name__}); rerun with --force.") from None
    with torch.inference_mode():
        diff = float(np.abs(model(torch.from_numpy(x)).numpy() - ref).max())
    if diff > 1e-5:
        raise PipelineError(f"The checkpoint no longer reproduces {ctx.rd.golden} (max diff {diff:.2e}); "
                            "rerun with --force.")


@dataclass(frozen=True)
class Stage:
    name: str
    key: Callable[[Context], dict]
    run: Callable[[Context], list[Path]]
    doc: str
    scratch: Callable[[Context], list[Path]] = lambda ctx: []  # working files removed once the stage is recorded


STAGES: tuple[Stage, ...] = (
    Stage("data", _data_key, _data_run, "MNIST via torchvision, validation split, sample grid"),
    Stage("train", _train_key, _train_run, "train, keep best validation epoch, checkpoint + curves",
          scratch=lambda ctx: [ctx.rd.train_state]),
    Stage("export", _export_key, _export_run, "FP32 ONNX with metadata + golden logits"),
    Stage("quantize", _quantize_key, _quantize_run, "INT8 QDQ ONNX by PTQ and QAT (+ CPU INT8), per-layer SQNR"),
    Stage("engines", _engines_key, _engines_run, "TensorRT engines when TensorRT and a GPU are present"),
    Stage("validate", _validate_key, _validate_run, "accuracy parity on 10,000 test images, latency, report"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def run(cfg: RunConfig, until: str = "validate", progress=None) -> dict:
    """Run the stages up to and including ``until``; return the stage record."""
    if until not in STAGE_NAMES:
        raise PipelineError(f"Unknown stage '{until}'. Stages: {', '.join(STAGE_NAMES)}, or all.")
    models.build(cfg.model)  # fail on a bad --model before anything is written
    ctx = Context(cfg, progress)
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

    path = root / ".lock"
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


def _run_stages(ctx: Context, until: str) -> dict:
    cfg = ctx.cfg
    record = manifest.load(ctx.rd.stages)
    for stage in STAGES:
        prev = record.get(stage.name)
        problems = manifest.check_stage(ctx.rd.root, stage.name, prev) if prev else []
        if not cfg.force:
            manifest.refuse_damaged(ctx.rd.root, problems)
        inputs = stage.key(ctx)
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        if not cfg.force and prev and prev.get("key") == key and not problems:
            log.info("%s: up to date, skipped (use --force to redo)", stage.name)
        else:
            if problems:
                log.info("%s: redone, %s", stage.name, "; ".join(str(p) for p in problems))
            t0 = time.perf_counter()
            log.info("%s: %s", stage.name, stage.doc)
            if record.pop(stage.name, None) is not None:
                manifest.save(ctx.rd.stages, record)  # from here until it is recorded again, the stage is not done
            outputs = stage.run(ctx)
            record[stage.name] = manifest.entry(ctx.rd.root, key, inputs, outputs, time.perf_counter() - t0)
            manifest.save(ctx.rd.stages, record)
            for p in stage.scratch(ctx):
                p.unlink(missing_ok=True)
            log.info("%s: done in %.1f s", stage.name, record[stage.name]["seconds"])
        if stage.name == until:
            break
    return record
