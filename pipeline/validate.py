"""Comparing and timing one variant against the reference, and judging the results: what the validate stage
(:mod:`pipeline.stages.validate`) calls for each row of the variant table.

Running is kept apart from judging (Polygraphy's Comparator habit):
:func:`run_logits` produces logits, :func:`compare` turns them into figures (accuracy and agreement as
fractions, accuracy delta in percentage points), :func:`latency` times a runner (ms, images/s),
:func:`over_budget` lists accuracy budgets missed and :func:`check_parity` collects every broken
tolerance and raises once.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from runtime.base import BaseRunner
from runtime.bench import measure

from .config import ValidateConfig
from .errors import ParityError, PipelineError
from .variants import Variant

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


def latency(runner: BaseRunner, images: np.ndarray, cfg: ValidateConfig) -> dict:
    """``{"<batch>": stats}`` for every batch size in ``cfg.batches``.

    Stats time the whole call (host wall clock); each carries ``includes``, what that call spans
    (``runner.latency_includes``: for TensorRT the H2D copy, GPU compute, D2H copy and synchronization).
    No "copies excluded" figure is given: Polygraphy's own ``last_inference_time()`` spans the copies too.
    """
    out = {}
    for b in cfg.batches:
        if runner.batch_range and not runner.batch_range[0] <= b <= runner.batch_range[1]:
            lo, hi = runner.batch_range
            raise PipelineError(f"{runner.name} accepts batches {lo} to {hi} (its engine's optimization profile), "
                                f"so batch {b} cannot be timed; rebuild the engine with a profile that covers it.")
        reps = -(-b // len(images))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:b]) if reps > 1 else np.ascontiguousarray(images[:b])
        feed = {INPUT: batch}
        stats = measure(lambda: runner.infer(feed), b, warmup=cfg.warmup, iterations=cfg.iterations,
                        max_seconds=cfg.max_seconds, sync=runner.synchronize)
        if stats.noisy:
            log.warning("%s batch %d: latency varies a lot (CV %.2f); the machine may be busy", runner.name, b, stats.cv)
        out[str(b)] = {**stats.as_dict(), "includes": runner.latency_includes}
    return out


def validate_variant(variant: Variant, make_runner: Callable[[], BaseRunner], images, labels,
                     reference: np.ndarray | None, cfg: ValidateConfig) -> tuple[dict, np.ndarray]:
    """One variant's report row (every figure) and its logits on ``images``; ``reference`` None means this
    variant is the reference. ``make_runner`` builds the runner (the row's factory), entered here."""
    with make_runner() as runner:
        logits = run_logits(runner, images)
        figures = compare(logits, logits if reference is None else reference, labels)
        lat = latency(runner, images, cfg)
    row = _row(variant, figures, lat)
    if variant.backend == "onnxruntime":
        row["ort_optimization"] = variant.ort_optimization
    if figures["nonfinite"]:
        log.error("%s: %d of %d test images give NaN or infinite logits", variant.name, figures["nonfinite"],
                  len(images))
    log.info("%-14s accuracy %.2f%%  agreement %.4f  max|diff| %s  p50@1 %.3f ms  %.0f img/s @%s",
             variant.name, 100 * figures["accuracy"], figures["agreement"], _diff(figures["max_abs_diff"]),
             lat[str(cfg.batches[0])]["p50_ms"], lat[str(cfg.batches[-1])]["throughput_per_s"], cfg.batches[-1])
    return row, logits


def _row(variant: Variant, figures: dict, lat: dict) -> dict:
    """The report row's common fields, wherever the variant was run."""
    return {"name": variant.name, "backend": variant.backend, "provider": variant.provider,
            "precision": variant.precision, **figures, "budget_pp": variant.budget_pp, "latency": lat}


def browser_row(variant: Variant, logits: np.ndarray, times_ms: dict[int, list[float]], reference: np.ndarray,
                labels, measured_in: str) -> dict:
    """A row measured in a browser (:mod:`pipeline.browser`): the same figures as :func:`validate_variant`'s, from
    the logits and timings the page posted. ``measured_in`` names the browser, runtime and host, and goes into the
    report beside the figures: they are not a Python runtime's."""
    from runtime.bench import summarize

    figures = compare(logits, reference, labels)
    lat = {str(b): {**summarize(np.asarray(t, np.float64), b).as_dict(),
                    "includes": "one awaited classifier run (onnxruntime-web session.run) in the page, performance.now()"}
           for b, t in sorted(times_ms.items())}
    row = {**_row(variant, figures, lat), "measured_in": measured_in}
    small, big = str(min(times_ms)), str(max(times_ms))
    log.info("%-14s accuracy %.2f%%  agreement %.4f  max|diff| %s  p50@%s %.3f ms  %.0f img/s @%s (%s)",
             variant.name, 100 * figures["accuracy"], figures["agreement"], _diff(figures["max_abs_diff"]), small,
             lat[small]["p50_ms"], lat[big]["throughput_per_s"], big, measured_in)
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
