"""The report: assembled from what the validate stage measured, then written for programs and people.

:func:`assemble` builds one dict, report.json's, recommendation included (:mod:`pipeline.report.recommend`, run
once, here); :func:`write_all` writes it as report.json (checked against the contract in
:mod:`pipeline.store.schema` first), report.md (:mod:`pipeline.report.markdown`), the figures
(:mod:`pipeline.report.figures`) and a self-contained report.html (:mod:`pipeline.report.html`). The JSON is a
contract later stages and external checks read (see docs/report.md, "Report contract"). The renderers derive
everything from the JSON and read its recommendation, never recompute it, so ``pipeline report`` rebuilds them
from the file alone.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.bench import ROUNDS_METHOD, SPREAD

from . import ladder, recommend
from pipeline import variants
from pipeline.store.paths import RunDir, atomic_write, strict_json

if TYPE_CHECKING:
    from pipeline.config import RunConfig


def _checked_json(report: dict) -> str:
    """report.json's text, after checking that it honours the report contract.

    The check runs on the strict-JSON text itself, so it sees exactly what a reader will; a report the
    pipeline builds that fails it is our bug, so it raises :class:`RuntimeError` (with a traceback),
    not a user error, and nothing is written.
    """
    from pipeline.store.schema import SchemaError, parse_report

    text = strict_json(report)
    try:
        parse_report(text, "the report about to be written")
    except SchemaError as e:
        raise RuntimeError(f"bug: {e}") from None
    return text


def complete(report: dict) -> dict:
    """``report`` with what the renderers read that reports written before it existed lack: ``recommended``,
    computed here from the rows (:func:`pipeline.report.recommend.recommend`). A report that has it is returned
    as it is: the renderers show report.json's recommendation, not one recomputed beside it."""
    if report.get("recommended") is not None:
        return report
    return {**report, "recommended": recommend.recommend(report)}


def assemble(cfg: RunConfig, ckpt: dict, rows: list[dict], skipped: list[dict], logits: dict, labels, *,
             params: int, macs: int, peak_gflops: float, environment: dict, history: list | None,
             quantization: dict | None, qat_torch: dict | None = None, timing: dict | None = None) -> dict:
    """The report dict (docs/report.md, "Report contract") from what the validate stage measured.

    ``rows`` are the variants' figures (the reference first), ``logits`` each run variant's test-set logits
    (name -> (N, 10)), ``timing`` how they were timed (:func:`timing_record`), ``labels`` the test labels; ``ckpt`` is the loaded checkpoint (training summary,
    config, class names). ``peak_gflops`` is the CPU's measured float32 peak (GFLOP/s) and ``environment``
    the machine and versions; ``history`` and ``quantization`` are the training curves and per-layer SQNR
    (None when absent); ``qat_torch`` the QAT model's accuracy before export (the accuracy ladder's simulated
    rung, :mod:`pipeline.report.ladder`). Adds every row's speed against onnxruntime FP32 (``variants.BASELINE``,
    timed in the same rounds), to each INT8 row its speed against the FP32 row of its backend and
    provider (``vs_fp32``), to each row its efficiency (GFLOP/s at the largest timed batch, and that as a
    fraction of the peak); adds speed ratios against the reference, the per-target recommendation
    (:mod:`pipeline.report.recommend`) and the CPU recommendation's confusion matrix. Measures nothing and writes nothing.
    """
    import numpy as np

    from pipeline.measure import efficiency

    batches = cfg.validate.batches
    big, small = str(batches[-1]), str(batches[0])
    for row in rows:
        row["efficiency"] = efficiency.achieved(macs, row["latency"][big]["throughput_per_s"], peak_gflops)
    ref = next(r for r in rows if r["name"] == variants.REFERENCE)
    speed = {r["name"]: _ratios(r, ref, small, big) for r in rows if r is not ref}
    # against onnxruntime FP32: only the rows timed in its interleaved rounds (the browser rows are timed in their own)
    base = next((r for r in rows if r["name"] == variants.BASELINE), None)
    vs_base = {r["name"]: _ratios(r, base, small, big) for r in rows
               if base is not None and r is not base and r["backend"] != variants.BROWSER}
    for row in rows:
        fp32 = _fp32_of(row, rows)
        if row["precision"] == "int8" and fp32 is not None:
            row["vs_fp32"] = {"against": fp32["name"], **_ratios(row, fp32, small, big)}
    # the recommendation reads the model and the rows alone; the confusion matrix is the CPU recommendation's
    # (measured on this CPU: its logits exist); the reference stands in if the CPU pick is a file to build elsewhere
    recommended = recommend.recommend({"model": cfg.model, "variants": rows})
    chosen = recommended["cpu"]["variant"]
    chosen = chosen if chosen in logits else variants.REFERENCE
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (labels, logits[chosen].argmax(1)), 1)
    summary = ckpt.get("summary", {})
    rep = {
        "model": cfg.model,
        "params": params,
        "macs_per_image": macs,
        "cpu_peak_gflops": round(peak_gflops, 1),
        "cpu_peak_method": efficiency.PEAK_METHOD,
        "train": {"epochs": summary.get("epochs"), "seconds": summary.get("seconds"),
                  "val_accuracy": summary.get("val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
                  "best_epoch": summary.get("best_epoch"), "device": summary.get("device"),
                  "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
                  "world_size": summary.get("world_size", 1), "throughput": summary.get("throughput"),
                  "config": ckpt["train_config"], "history": history},
        "variants": rows,
        "speedup_vs_torch": speed,
        "speedup_vs_onnx_fp32": vs_base,
        "skipped": skipped,
        "quantization": quantization,
        "ladder": ladder.build(rows, skipped, qat_torch),
        "quick": cfg.quick,
        "environment": environment,
        "timing": timing,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recommended": recommended,
        "confusion": {"variant": chosen, "classes": ckpt["classes"], "matrix": matrix.tolist()},
    }
    return rep


def timing_record(cfg, sessions: list[dict]) -> dict:
    """report.json's ``timing``: the rounds' settings (``cfg``, a :class:`~pipeline.config.ValidateConfig`), the
    spread's definition, every timing session (:func:`pipeline.measure.compare.timing_session`) and whether to trust them."""
    why = [f"{s['where']}: {reason}" for s in sessions for reason in s["untrusted"]]
    return {"method": ROUNDS_METHOD, "spread": SPREAD, "rounds": cfg.rounds, "burst_calls": cfg.iterations,
            "burst_seconds": cfg.max_seconds, "warmup_calls": cfg.warmup, "sessions": sessions, "trusted": not why,
            "untrusted": why}


def _ratios(row: dict, base: dict, small: str, big: str) -> dict:
    """How many times ``base``'s throughput (at ``big``) and how many times lower than its p50 (at ``small``)."""
    return {"throughput_ratio": row["latency"][big]["throughput_per_s"] / base["latency"][big]["throughput_per_s"],
            "p50_ratio": base["latency"][small]["p50_ms"] / row["latency"][small]["p50_ms"]}


def _fp32_of(row: dict, rows: list[dict]) -> dict | None:
    """The FP32 row an INT8 row is timed against: same backend and provider (onnx-fp32 for onnxruntime CPU)."""
    return next((r for r in rows if r["precision"] == "fp32" and r["backend"] == row["backend"]
                 and r["provider"] == row["provider"]), None)


def write_all(report: dict, run_dir: Path) -> list[Path]:
    """report.json (``report`` as it is), report.md, report.html and the figures under report/ (these three from
    :func:`complete`'s report); returns the paths written."""
    from . import figures, html, markdown

    from . import on_devices

    run = RunDir(Path(run_dir))
    json_path, md_path, html_path = run.report_json, run.report_md, run.report_html
    report = on_devices.attach(report, run.root)  # the run's device recordings (pipeline.devices)
    text = _checked_json(report)
    shown = complete(report)
    md = markdown.render_markdown(shown)
    atomic_write(json_path, text)
    atomic_write(md_path, md)
    figs = figures.draw_report(shown, run)
    atomic_write(html_path, html.render_html(shown, md, figs))
    return [json_path, md_path, html_path, *figs.values()]
