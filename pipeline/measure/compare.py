"""Comparing and timing one variant against the reference, and judging the results: what the validate stage
(:mod:`pipeline.stages.validate`) calls for each row of the variant table.

Running is kept apart from judging (Polygraphy's Comparator habit):
:func:`run_logits` produces logits, :func:`compare` turns them into figures (accuracy and agreement as
fractions, accuracy delta in percentage points), :func:`latency` times all runners together in rounds (ms,
images/s, spread in percent),
:func:`over_budget` lists accuracy budgets missed and :func:`check_parity` collects every broken
tolerance and raises once.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from runtime.base import BaseRunner
from runtime.bench import interleave, untrusted

from pipeline.config import ValidateConfig
from pipeline.errors import ParityError, PipelineError
from pipeline.variants import Variant

log = logging.getLogger(__name__)
INPUT, OUTPUT = "input", "logits"


def run_logits(runner: BaseRunner, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits for ``images`` (N, 1, 28, 28 float32), in batches; float32 (N, 10).

    Batches stay within what the runner accepts (``runner.batch_range``: a TensorRT engine's optimization
    profile, read from the engine; feeding more makes ``set_input_shape`` fail): at most ``batch_size`` and
    the range's maximum. A last chunk below the range's minimum (a static profile, as DLA builds need) is
    padded with copies of its last image and the padding's logits are dropped."""
    lo, hi = runner.batch_range or (1, batch_size)
    step = max(lo, min(batch_size, hi))
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step]
        n = len(chunk)
        if n < lo:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
        outs.append(runner.infer({INPUT: chunk})[OUTPUT][:n])
    return np.concatenate(outs).astype(np.float32)


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy (fraction), agreement of argmax with the reference (fraction), max |logit diff|,
    accuracy delta vs the reference (percentage points), the test indices whose prediction flips, and
    ``nonfinite``: how many images got a NaN or infinite logit.

    ``nan > tol`` is False, so NaN would otherwise pass every check (argmax of an all-NaN row is 0: a
    NaN model "agrees" with a NaN reference and scores the share of zeros). An image with a non-finite
    logit (in ``logits`` or ``reference``) therefore counts as wrong and as a flip, and ``max_abs_diff``
    is None (null in report.json): no difference can be computed, it is not a number.
    """
    ok, ref_ok = np.isfinite(logits).all(1), np.isfinite(reference).all(1)
    pred = np.where(ok, logits.argmax(1), -1)
    ref_pred = np.where(ref_ok, reference.argmax(1), -1)
    acc, ref_acc = float((pred == labels).mean()), float((ref_pred == labels).mean())
    both = ok & ref_ok
    return {
        "accuracy": acc,
        "agreement": float(((pred == ref_pred) & both).mean()),
        "max_abs_diff": float(np.abs(logits - reference).max()) if both.all() else None,
        "nonfinite": int((~ok).sum()),
        "accuracy_delta": round(100 * (acc - ref_acc), 4),
        "flips": np.flatnonzero((pred != ref_pred) | ~both).tolist(),
    }


def feeds(runner: BaseRunner, images: np.ndarray, batches) -> dict[int, Callable[[], object]]:
    """``{batch: run}``: one inference of the first ``batch`` test images (repeated when fewer) per call, for every
    batch size; a batch outside the runner's engine profile is refused before anything is timed."""
    out = {}
    for b in batches:
        if runner.batch_range and not runner.batch_range[0] <= b <= runner.batch_range[1]:
            lo, hi = runner.batch_range
            raise PipelineError(f"{runner.name} accepts batches {lo} to {hi} (its engine's optimization profile), "
                                f"so batch {b} cannot be timed; rebuild the engine with a profile that covers it.")
        reps = -(-b // len(images))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:b]) if reps > 1 else np.ascontiguousarray(images[:b])
        out[b] = (lambda feed: lambda: runner.infer(feed))({INPUT: batch})
    return out


def latency(runners: dict[str, BaseRunner], images: np.ndarray, cfg: ValidateConfig) -> tuple[dict, dict]:
    """Every runner timed together, in rounds (:func:`runtime.bench.interleave`), at every batch size of ``cfg``.

    Returns ``({name: {"<batch>": stats}}, session)``: stats time the whole call (host wall clock), median over
    ``cfg.rounds`` rounds with their spread, and each carries ``includes``, what that call spans
    (``runner.latency_includes``: for TensorRT the H2D copy, GPU compute, D2H copy and synchronization; no "copies
    excluded" figure: Polygraphy's own ``last_inference_time()`` spans the copies too). ``session`` is
    :func:`timing_session`'s record: the contention signals and why the figures may not be trusted."""
    calls = {name: feeds(r, images, cfg.batches) for name, r in runners.items()}
    stats, signals = interleave(calls, rounds=cfg.rounds, burst_calls=cfg.iterations, burst_seconds=cfg.max_seconds,
                                warmup=cfg.warmup, syncs={name: r.synchronize for name, r in runners.items()})
    out = {name: {str(b): {**st.as_dict(), "includes": runners[name].latency_includes} for b, st in by.items()}
           for name, by in stats.items()}
    return out, timing_session("python", list(runners), signals, stats)


def timing_session(where: str, names: list[str], signals: dict, stats: dict) -> dict:
    """One timing session's record for report.json's ``timing.sessions``: where it ran (``python``: this process's
    runtimes; ``browser``: headless Chromium), the variants it timed together, the contention signals and the
    reasons (plain sentences) its figures are not to be trusted, each also logged as a warning."""
    why = untrusted(signals, stats)
    for reason in why:
        log.warning("timing (%s): not to be trusted: %s", where, reason)
    return {"where": where, "variants": names, **signals, "untrusted": why}


def validate_variant(variant: Variant, runner: BaseRunner, images, labels,
                     reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One variant's report row (every figure but latency, which :func:`latency` adds for all variants at once)
    and its logits on ``images``; ``reference`` None means this variant is the reference. ``runner`` is active."""
    logits = run_logits(runner, images)
    figures = compare(logits, logits if reference is None else reference, labels)
    row = _row(variant, figures, {})
    if variant.backend == "onnxruntime":
        row["ort_optimization"] = variant.ort_optimization
    if figures["nonfinite"]:
        log.error("%s: %d of %d test images give NaN or infinite logits", variant.name, figures["nonfinite"],
                  len(images))
    log.info("%-14s accuracy %.2f%%  agreement %.4f  max|diff| %s", variant.name, 100 * figures["accuracy"],
             figures["agreement"], _diff(figures["max_abs_diff"]))
    return row, logits


def log_latency(row: dict) -> None:
    """One line per timed row: p50 at the smallest batch (and its spread), throughput at the largest."""
    lat = row["latency"]
    small, big = min(lat, key=int), max(lat, key=int)
    log.info("%-14s p50@%s %.3f ms (spread %.1f%%)  %.0f img/s @%s%s", row["name"], small, lat[small]["p50_ms"],
             lat[small].get("spread_pct") or 0.0, lat[big]["throughput_per_s"], big,
             f" ({row['measured_in']})" if row.get("measured_in") else "")


def _row(variant: Variant, figures: dict, lat: dict) -> dict:
    """The report row's common fields, wherever the variant was run."""
    return {"name": variant.name, "backend": variant.backend, "provider": variant.provider,
            "precision": variant.precision, **figures, "budget_pp": variant.budget_pp, "latency": lat}


def browser_row(variant: Variant, logits: np.ndarray, times_ms: dict[int, list[list[float]]], reference: np.ndarray,
                labels, measured_in: str) -> dict:
    """A row measured in a browser (:mod:`pipeline.measure.browser`): the same figures as :func:`validate_variant`'s, from
    the logits and the per-round timings (``{batch: [[ms, ...] per round]}``) the page posted, combined as Python's
    rounds are (:func:`runtime.bench.combine_rounds`). ``measured_in`` names the browser, runtime and host, and goes
    into the report beside the figures: they are not a Python runtime's."""
    from runtime.bench import combine_rounds

    figures = compare(logits, reference, labels)
    lat = {str(b): {**combine_rounds(t, b).as_dict(),
                    "includes": "one awaited classifier run (onnxruntime-web session.run) in the page, performance.now()"}
           for b, t in sorted(times_ms.items())}
    row = {**_row(variant, figures, lat), "measured_in": measured_in}
    log.info("%-14s accuracy %.2f%%  agreement %.4f  max|diff| %s (%s)", variant.name, 100 * figures["accuracy"],
             figures["agreement"], _diff(figures["max_abs_diff"]), measured_in)
    log_latency(row)
    return row


def _diff(value) -> str:
    return "NaN/inf" if value is None or not math.isfinite(value) else f"{value:.2e}"


def over_budget(rows: list[dict]) -> list[str]:
    """Variants whose accuracy dropped more than their budget (reported as a warning, not a failure).
    A delta that is not a finite number is over any budget."""
    return [f"{r['name']} dropped {-r['accuracy_delta']:.2f} pp (budget {r['budget_pp']:.2f})" for r in rows
            if r.get("budget_pp") is not None
            and not (math.isfinite(r["accuracy_delta"]) and r["accuracy_delta"] >= -r["budget_pp"] - 1e-9)]


def check_parity(rows: list[dict], variants: dict[str, Variant]) -> None:
    """Raise one :class:`ParityError` listing every variant that broke its tolerance, and every variant
    (with or without a tolerance) whose logits are NaN or infinite.

    Each test is written so that NaN fails it (``not diff <= atol``, never ``diff > atol``).
    """
    bad = []
    for row in rows:
        v = variants.get(row["name"])
        why = []
        if row.get("nonfinite", 0):
            why.append(f"{row['nonfinite']} test images give NaN or infinite logits")
        if v is not None and v.atol is not None:
            diff = row["max_abs_diff"]
            if not row["agreement"] >= 1.0 or diff is None or not diff <= v.atol:
                why.append(f"agreement {row['agreement']:.4f} (needs 1.0), max |logit diff| {_diff(diff)} "
                           f"(needs <= {v.atol:g})")
        if why:
            bad.append(f"{row['name']}: " + ", ".join(why))
    if bad:
        raise ParityError("Parity with the PyTorch reference (FP32 within tolerance, every variant finite) is "
                          "broken: " + "; ".join(bad) + ". The report was still written so you can inspect it.")
