"""Stage ``validate``: every variant on all 10,000 test images (parity, latency), then the report.

The stage only sequences: load the checkpoint, check it against the golden logits, run every variant of the
table (:mod:`pipeline.variants`, each runner built by its row's factory), time them all together in interleaved
rounds (docs/timing.md), assemble the report (:func:`pipeline.report.assemble.assemble`), write it, and only then judge
parity, so a failing run still leaves a report to inspect. Comparing one variant and timing them all is
:mod:`pipeline.measure.compare`.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from pipeline.store import checkpoint
from pipeline import variants
from pipeline.config import stamp
from pipeline.errors import PipelineError
from pipeline.measure.runners import build as build_runner, optional, unavailable
from runtime.errors import BackendUnavailable, RuntimeInputError
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    files = {v.name: ctx.sha(ctx.rd.export_file(v.file)) for v in variants.VARIANTS
             if v.file and ctx.cfg.quant.builds(v.quant) and unavailable(v) is None
             and ctx.rd.export_file(v.file).is_file()}
    sens = ctx.rd.sensitivity_json  # the report carries it: a new ranking redoes the report
    return {"checkpoint": ctx.sha(ctx.rd.checkpoint), "files": files, "validate": stamp(ctx.cfg.validate),
            **({"sensitivity": ctx.sha(sens)} if sens.is_file() else {})}


def run(ctx: Context) -> list[Path]:
    import numpy as np

    from pipeline.measure import efficiency, environment
    from pipeline import models
    from pipeline.report import assemble as report
    from pipeline.measure.compare import check_parity, over_budget

    vcfg = ctx.cfg.validate
    ckpt = checkpoint.load(ctx.rd.checkpoint)
    model = checkpoint.restore(ckpt)
    images = ctx.splits.test_x.numpy().astype(np.float32)
    labels = ctx.splits.test_y.numpy()
    with _torch_threads(vcfg.threads):
        _check_golden(ctx, model)
        rows, skipped, logits, sessions = _run_variants(ctx, model, images, labels)
    rep = report.assemble(ctx.cfg, ckpt, rows, skipped, logits, labels,
                          params=models.param_count(model), macs=models.macs_per_image(model),
                          peak_gflops=efficiency.peak_gflops(), environment=environment.capture(vcfg.threads),
                          history=_read_json(ctx.rd.history, {}).get("history"),
                          quantization=_quantization(ctx),
                          # a file left by an earlier run with QAT is not this run's rung
                          qat_torch=_read_json(ctx.rd.qat_torch_json) if ctx.cfg.quant.qat else None,
                          timing=report.timing_record(vcfg, sessions))
    written = report.write_all(rep, ctx.rd.root)
    log.info("report: %s, %s and %s", ctx.rd.report_json, ctx.rd.report_md, ctx.rd.report_html)
    for msg in over_budget(rows):
        log.warning("accuracy budget: %s", msg)
    check_parity(rows, variants.BY_NAME)
    return written


@contextlib.contextmanager
def _torch_threads(threads: int):
    """torch's intra-op thread count set to ``threads`` (0: left alone) inside the block, and put back after it,
    even on an error: the stage runs inside the caller's process (a notebook, through the Python API), whose
    torch must be left as it was found."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def _run_variants(ctx: Context, model, images, labels) -> tuple[list[dict], list[dict], dict, list[dict]]:
    """Run every variant of the table that this config builds and this machine can run, then time them all together.

    Each runner is activated once and stays active until the rounds are done: the logits (parity) are computed
    variant by variant, then every variant is timed in interleaved rounds (:func:`pipeline.measure.compare.latency`), so
    a burst of other work lands on all of them alike instead of deciding which one looks fastest.

    Returns the report rows (the reference first), the skipped variants with the reason, each run variant's
    logits on the test set (name -> (N, 10) float32), and the timing sessions (contention signals; one for the
    Python runtimes, one for the browser when it measured)."""
    from pipeline.measure.compare import latency, log_latency, validate_variant

    vcfg = ctx.cfg.validate
    rows, reference, skipped, logits_by_name, in_browser, runners = [], None, [], {}, [], {}
    with contextlib.ExitStack() as active:
        for v in variants.VARIANTS:
            if not ctx.cfg.quant.builds(v.quant):
                skipped.append({"name": v.name, "reason": f"not built with --quant {ctx.cfg.quant.mode}"})
                continue
            if v.backend == variants.BROWSER and not vcfg.browser:
                skipped.append({"name": v.name, "reason": "not measured: --no-browser (the --quick budget's default)"})
                continue
            why = unavailable(v)
            if why:
                skipped.append({"name": v.name, "reason": why})
                continue
            if v.file and not ctx.rd.export_file(v.file).is_file():
                note = _read_json(ctx.rd.unbuilt(v.file))
                # its converter refused the model, or is not set up here (LiteRT's runs in a venv of its own)
                why = (note["reason"] if isinstance(note, dict) and isinstance(note.get("reason"), str)
                       else unavailable(v, build=True)) if optional(v) else None
                if why:
                    skipped.append({"name": v.name, "reason": why})
                    continue
                raise PipelineError(f"{ctx.rd.export_file(v.file)} is missing; rerun with --force.")
            if v.backend == variants.BROWSER:  # measured together, in one browser session, once the reference exists
                in_browser.append(v)
                continue
            try:
                runner = active.enter_context(build_runner(v, ctx.rd, model=model, threads=vcfg.threads))
                row, logits = validate_variant(v, runner, images, labels, reference)
            except (BackendUnavailable, RuntimeInputError) as e:
                if not optional(v):
                    raise
                # an edge runtime that cannot load or run its file: that row is skipped with the reason, the rest go on
                log.warning("validate: %s skipped: %s", v.name, e)
                skipped.append({"name": v.name, "reason": f"{v.backend} could not run {v.file}: {e}"})
                continue
            logits_by_name[v.name] = logits
            if reference is None:  # the first row, variants.REFERENCE: every later one is compared with it
                _require_finite_reference(ctx, row["nonfinite"], len(images), "test images")
                reference = logits
            path = ctx.rd.export_file(v.file) if v.file else ctx.rd.checkpoint
            row["path"] = str(path)
            row["size_bytes"] = sum(ctx.rd.export_file(n).stat().st_size for n in variants.files_of(v)) if v.file \
                else path.stat().st_size  # an OpenVINO IR's size is its .xml and its .bin; a sidecar counts too
            if v.backend == "tensorrt":
                row["engine"] = _engine_summary(path)
            rows.append(row)
            runners[v.name] = runner
        log.info("validate: timing %d variants together, %d rounds", len(runners), vcfg.rounds)
        timed, session = latency(runners, images, vcfg)
    sessions = [session]
    for row in rows:
        row["latency"] = timed[row["name"]]
        log_latency(row)
    if in_browser:
        measured, failed, browser_session = _in_browser(ctx, in_browser, reference, labels)
        for row, logits in measured:
            logits_by_name[row["name"]] = logits
            rows.append(row)
        skipped += failed
        sessions += [browser_session] if browser_session else []
    return rows, skipped, logits_by_name, sessions


def _in_browser(ctx: Context, todo: list, reference, labels) -> tuple[list[tuple[dict, object]], list[dict], dict | None]:
    """The browser rows (``web-wasm-*``), measured in one headless Chromium session (:mod:`pipeline.measure.browser`), timed
    in rotated rounds as the Python rows are; also returns that session's timing record (None when not measured).

    A browser that cannot measure (onnxruntime-web not fetchable, Chromium failing) skips these rows with the
    reason, as a missing GPU skips the CUDA rows: the Python figures stand on their own."""
    import numpy as np

    from exporters.onnx import read_metadata

    from runtime.bench import combine_rounds

    from pipeline.measure import browser
    from pipeline.bundle import js as bundle_js, layout, ort_web
    from pipeline.measure.compare import browser_row, timing_session

    vcfg = ctx.cfg.validate
    exe = browser.find()
    pixels = ctx.splits.test_u8.numpy().astype(np.uint8)
    batches = (vcfg.batches[0], vcfg.batches[-1])  # what the report's columns and recommendation read
    name = browser.version(exe) or "Chromium"  # asked once: each call starts the executable
    log.info("validate: %s in headless %s (%s)", ", ".join(v.name for v in todo), name, exe)
    try:
        models = {v.name: {"path": ctx.rd.export_file(v.file),
                           "entry": bundle_js.preprocessing(read_metadata(ctx.rd.export_file(v.file)),
                                                            layout.model(v.file), v.name, None)} for v in todo}
        got = browser.measure(exe, models, pixels, batches=batches, warmup=vcfg.warmup, rounds=vcfg.rounds,
                              iterations=vcfg.iterations, max_seconds=vcfg.max_seconds)
    except PipelineError as e:
        log.warning("validate: the browser rows were not measured: %s", e)
        return [], [{"name": v.name, "reason": f"not measured in the browser: {e}"} for v in todo], None
    where = (f"headless {name} on this host, onnxruntime-web {ort_web.VERSION} wasm "
             f"(SIMD, 1 thread, as classifier.js runs it; WebGPU "
             + ("offered but not measured: the web bundle carries the wasm build only)" if got["webgpu"]
                else "absent: the browser offers no adapter here)"))
    out = []
    for v in todo:
        m = got["models"][v.name]
        row = browser_row(v, m.logits, m.times_ms, reference, labels, where)
        row["path"] = str(models[v.name]["path"])
        row["size_bytes"] = models[v.name]["path"].stat().st_size
        out.append((row, m.logits))
    stats = {v.name: {b: combine_rounds(t, b) for b, t in got["models"][v.name].times_ms.items()} for v in todo}
    return out, [], timing_session("browser", [v.name for v in todo], got["contention"], stats)


def _engine_summary(engine: Path) -> dict:
    """What the built engine really holds (per-layer precisions, placement, profile), from its sidecar."""
    side = _read_json(Path(str(engine) + ".json"), {})
    return {k: side[k] for k in ("tensorrt", "layer_precisions", "profile", "dla_core", "gpu_fallback_layers")
            if k in side}


def _quantization(ctx: Context) -> dict | None:
    """sqnr.json, with the quantize stage's sensitivity.json (when it wrote one) under ``sensitivity``."""
    q = _read_json(ctx.rd.sqnr_json)
    sens = _read_json(ctx.rd.sensitivity_json)
    if q is not None and sens is not None:
        q["sensitivity"] = sens
    return q


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
    tol = ctx.cfg.validate.golden_atol
    if not diff <= tol:  # NaN in the stored golden logits fails too
        raise PipelineError(f"The checkpoint no longer reproduces {ctx.rd.golden} (max diff {diff:.2e}, allowed "
                            f"{tol:g}); rerun with --force.")
