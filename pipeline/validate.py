"""Validate stage: accuracy parity on the full test set and latency, for every variant.

Running is kept apart from judging (Polygraphy's Comparator habit):
:func:`run_logits` produces logits, :func:`compare` turns them into figures,
:func:`check_parity` collects every broken tolerance and raises once.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from runtime.base import BaseRunner
from runtime.bench import measure, summarize

from .config import ValidateConfig
from .errors import ParityError
from .variants import Variant

log = logging.getLogger(__name__)
INPUT, OUTPUT = "input", "logits"


def run_logits(runner: BaseRunner, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits for ``images`` (N, 1, 28, 28 float32), in batches; float32 (N, 10)."""
    outs = [runner.infer({INPUT: images[i : i + batch_size]})[OUTPUT] for i in range(0, len(images), batch_size)]
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

    Stats time the whole call, host<->device copies included; runners that can
    report their own device time (TensorRT) add ``copies_excluded`` stats from
    the same calls.
    """
    out = {}
    for b in cfg.batches:
        reps = -(-b // len(images))
        batch = np.ascontiguousarray(np.concatenate([images] * reps)[:b]) if reps > 1 else np.ascontiguousarray(images[:b])
        feed = {INPUT: batch}
        device_ms = []  # TensorRT: the backend's own time of each call, host copies excluded

        def run():
            runner.infer(feed)
            if hasattr(runner, "device_time_ms"):
                device_ms.append(runner.device_time_ms())

        stats = measure(run, b, warmup=cfg.warmup, iterations=cfg.iterations,
                        max_seconds=cfg.max_seconds, sync=runner.synchronize)
        if stats.noisy:
            log.warning("%s batch %d: latency varies a lot (CV %.2f); the machine may be busy", runner.name, b, stats.cv)
        out[str(b)] = stats.as_dict()
        if device_ms:
            out[str(b)]["copies_excluded"] = summarize(device_ms[-stats.iterations :], b).as_dict()
    return out


def validate_variant(variant: Variant, make_runner: Callable[[], BaseRunner], images, labels,
                     reference: np.ndarray | None, cfg: ValidateConfig) -> dict:
    """All figures for one variant; ``reference`` None means this variant is the reference."""
    with make_runner() as runner:
        logits = run_logits(runner, images)
        figures = compare(logits, logits if reference is None else reference, labels)
        lat = latency(runner, images, cfg)
    row = {"name": variant.name, "backend": variant.backend, "provider": variant.provider,
           "precision": variant.precision, **figures, "budget_pp": variant.budget_pp, "latency": lat}
    if variant.backend == "onnxruntime":
        row["ort_optimization"] = variant.ort_optimization
    if figures["nonfinite"]:
        log.error("%s: %d of %d test images give NaN or infinite logits", variant.name, figures["nonfinite"],
                  len(images))
    log.info("%-14s accuracy %.2f%%  agreement %.4f  max|diff| %s  p50@1 %.3f ms  %.0f img/s @%s",
             variant.name, 100 * figures["accuracy"], figures["agreement"], _diff(figures["max_abs_diff"]),
             lat[str(cfg.batches[0])]["p50_ms"], lat[str(cfg.batches[-1])]["throughput_per_s"], cfg.batches[-1])
    return row, logits


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
