"""Latency measurement that a careful engineer can trust.

Method: ``warmup`` untimed calls, then timed calls until ``iterations`` are
done or ``max_seconds`` have passed (never fewer than ``min_iterations``).
Each call is timed on the host with ``time.perf_counter_ns``; a ``sync``
callable, when given (GPU backends), runs inside the timed region so
asynchronous work is counted. Reported: percentiles, mean, std, the
coefficient of variation, and throughput = images / total timed seconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

METHOD = "host wall clock (time.perf_counter_ns) per call, after warm-up; device synchronized inside the timed region when a GPU is used"
NOISY_CV = 0.25  # coefficient of variation above which a figure is flagged as noisy


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
    """
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


def image_shape_of(runner, override: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Per-image input shape of an onnxruntime model; ``override`` wins; symbolic dims need one."""
    from .errors import RuntimeInputError

    if override:
        return tuple(int(d) for d in override)
    dims = list(runner.session.get_inputs()[0].shape)[1:]
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        raise RuntimeInputError(
            f"The model's input shape {runner.session.get_inputs()[0].shape} has unknown dimensions beyond the batch; "
            "pass the per-image shape with --shape, e.g. --shape 1,28,28."
        )
    return tuple(dims)


def sweep(runner, batches, image_shape: tuple[int, ...], *, seed: int = 0, **measure_kwargs) -> dict[int, LatencyStats]:
    """Latency at each batch size for an onnxruntime runner, on random inputs of the model's dtype."""
    inp = runner.session.get_inputs()[0]
    dtype = ORT_DTYPES.get(inp.type, np.float32)
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        data = rng.standard_normal((b, *image_shape)).astype(dtype) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 255, (b, *image_shape)).astype(dtype)
        feed = {inp.name: data}
        out[b] = measure(lambda: runner.infer(feed), b, sync=runner.synchronize, **measure_kwargs)
    return out
