"""Latency measurement that a careful engineer can trust.

Method: ``warmup`` untimed calls, then timed calls until ``iterations`` are
done or ``max_seconds`` have passed (never fewer than ``min_iterations``).
Each call is timed on the host with ``time.perf_counter_ns``; a ``sync``
callable, when given (GPU backends), runs inside the timed region so
asynchronous work is counted. Reported: percentiles, mean, std, the
coefficient of variation, and throughput = images / total timed seconds.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .errors import RuntimeInputError

METHOD = "host wall clock (time.perf_counter_ns) per call, after warm-up; device synchronized inside the timed region when a GPU is used"
NOISY_CV = 0.25  # coefficient of variation above which a figure is flagged as noisy
MAX_SECONDS = 3600.0  # longest warm-up or timing phase per batch size, in seconds: beyond it a typo, not a plan
MAX_WARMUP_CALLS = 10_000  # warm-up calls are not bounded by time, so their count is
MEMORY_FRACTION = 0.25  # largest share of physical memory one batch's random input may take (activations need the rest)


def check_timing(*, warmup: int, warmup_seconds: float, iterations: int, max_seconds: float,
                 names=("warmup", "warmup_seconds", "iterations", "max_seconds")) -> None:
    """Refuse timing settings that would hang or mean nothing (NaN, infinite, negative), all problems at once.

    ``names`` are how the caller spells the four settings (the CLI passes its option names).
    """
    n_warm, n_warm_s, n_iter, n_max = names
    problems = []
    if not 0 <= warmup <= MAX_WARMUP_CALLS:
        problems.append(f"{n_warm} must be 0..{MAX_WARMUP_CALLS:,} calls, got {warmup}")
    if not (math.isfinite(warmup_seconds) and 0 <= warmup_seconds <= MAX_SECONDS):
        problems.append(f"{n_warm_s} must be a finite number of seconds from 0 to {MAX_SECONDS:g}, got {warmup_seconds}")
    if iterations < 1:
        problems.append(f"{n_iter} must be at least 1, got {iterations}")
    if not (math.isfinite(max_seconds) and 0 < max_seconds <= MAX_SECONDS):
        problems.append(f"{n_max} must be a finite number of seconds above 0 and at most {MAX_SECONDS:g}, "
                        f"got {max_seconds}")
    if problems:
        raise RuntimeInputError("; ".join(problems) + ".")


@dataclass(frozen=True)
class LatencyStats:
    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    cv: float  # std / mean: above NOISY_CV the machine is too noisy to trust small differences
    throughput_per_s: float  # images per second over the timed calls

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(times_ms, batch: int) -> LatencyStats:
    """Statistics of per-call latencies in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings to summarize")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    return LatencyStats(
        batch=batch, iterations=int(t.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
        mean_ms=mean, std_ms=std, min_ms=float(t.min()), cv=std / mean if mean > 0 else 0.0,
        throughput_per_s=batch * t.size / (t.sum() / 1000.0) if t.sum() > 0 else float("inf"),
    )


def measure(run: Callable[[], object], batch: int, *, warmup: int = 10, iterations: int = 200,
            max_seconds: float = 2.0, min_iterations: int = 10, warmup_seconds: float = 0.0,
            sync: Callable[[], None] | None = None) -> LatencyStats:
    """Time ``run()`` (one inference of ``batch`` images) and summarize.

    Warm-up runs ``warmup`` calls and, if ``warmup_seconds`` > 0, keeps going
    until that long has passed, so caches, allocators and clocks settle.
    Settings that would hang (infinite or NaN seconds) raise :class:`RuntimeInputError`.
    """
    check_timing(warmup=warmup, warmup_seconds=warmup_seconds, iterations=iterations, max_seconds=max_seconds)
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < warmup_seconds:
        run()
        done += 1
    if sync:
        sync()
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < min_iterations or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        run()
        if sync:
            sync()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return summarize(times, batch)


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def _label(runner) -> str:
    return str(getattr(runner, "path", None) or runner.name)


def the_input(runner):
    """The one input of an onnxruntime model, or :class:`RuntimeInputError` saying why the model has none or several:
    a benchmark feeds one batch of images."""
    inputs = runner.session.get_inputs()
    if len(inputs) != 1:
        listed = ", ".join(f"'{i.name}' {i.type} {i.shape}" for i in inputs) or "none"
        raise RuntimeInputError(f"{_label(runner)} has {len(inputs)} inputs ({listed}); only models with exactly "
                                "one input (a batch of images) can be benchmarked.")
    return inputs[0]


def image_shape_of(runner, override: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Per-image input shape of an onnxruntime model; ``override`` wins; symbolic dims need one."""
    inp = the_input(runner)
    if override:
        return tuple(int(d) for d in override)
    dims = list(inp.shape)[1:]
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise RuntimeInputError(
            f"The model's input shape {inp.shape} has unknown dimensions beyond the batch; "
            "pass the per-image shape with --shape, e.g. --shape 1,28,28."
        )
    return tuple(dims)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_feed(runner, batches, image_shape: tuple[int, ...]) -> np.dtype:
    """Refuse, before anything is timed, what this model cannot be fed: an input type without random data
    (int64, string, bool...), a per-image shape that contradicts the graph, a batch size other than a fixed
    one, or a batch whose random input alone would take over :data:`MEMORY_FRACTION` of the RAM.
    Returns the input's numpy dtype."""
    inp = the_input(runner)
    name = _label(runner)
    if inp.type not in ORT_DTYPES:
        raise RuntimeInputError(f"{name} takes {inp.type} input '{inp.name}'; bench feeds random float, uint8 or "
                                "int8 tensors, so it cannot time this model.")
    graph = list(inp.shape)
    if len(graph) != 1 + len(image_shape) or any(isinstance(g, int) and g > 0 and g != d
                                                 for g, d in zip(graph[1:], image_shape)):
        raise RuntimeInputError(f"{name} takes input {graph}, which a batch of per-image shape "
                                f"{list(image_shape)} does not fit; give the model's own per-image shape.")
    fixed = graph[0] if isinstance(graph[0], int) and graph[0] > 0 else None
    wrong = [b for b in batches if fixed is not None and b != fixed]
    if wrong:
        raise RuntimeInputError(f"{name} has a fixed batch size of {fixed} (input {graph}), so batch size(s) "
                                f"{', '.join(map(str, wrong))} cannot be run; time it with batch {fixed} only.")
    dtype = np.dtype(ORT_DTYPES[inp.type])
    ram = physical_memory()
    per_image = math.prod(image_shape) * (8 + dtype.itemsize)  # drawn as 64-bit, then converted
    for b in batches:
        if ram and b * per_image > MEMORY_FRACTION * ram:
            raise RuntimeInputError(
                f"batch size {b} of {list(image_shape)} inputs needs {b * per_image / 2**30:,.1f} GiB for its random "
                f"input alone, over {MEMORY_FRACTION:.0%} of this machine's {ram / 2**30:,.1f} GiB of memory; "
                "use a smaller batch.")
    return dtype


def sweep(runner, batches, image_shape: tuple[int, ...], *, seed: int = 0, **measure_kwargs) -> dict[int, LatencyStats]:
    """Latency at each batch size for an onnxruntime runner, on random inputs of the model's dtype.

    Every batch size is checked (:func:`check_feed`) before the first is timed."""
    inp = the_input(runner)
    dtype = check_feed(runner, batches, image_shape)  # timing settings are checked by measure, before warm-up
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        data = rng.standard_normal((b, *image_shape)).astype(dtype) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 255, (b, *image_shape)).astype(dtype)
        feed = {inp.name: data}
        out[b] = measure(lambda: runner.infer(feed), b, sync=runner.synchronize, **measure_kwargs)
    return out


#: added to a phase's own seconds to bound one call: room for a first call's lazy set-up (memory arenas, CUDA kernels)
CALL_GRACE_S = 30.0


def call_limit(max_seconds: float, warmup_seconds: float) -> float:
    """Seconds one timed or warm-up call may take before the runner stops it (``OnnxrtRunner.time_limit``): the
    longer phase plus :data:`CALL_GRACE_S`. Without it, a model that never returns (an endless Loop) would hang the
    benchmark despite :func:`check_timing`'s finite budgets, since a call is only timed after it returns."""
    return max(max_seconds, warmup_seconds) + CALL_GRACE_S
