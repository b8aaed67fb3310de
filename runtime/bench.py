"""Latency measurement that a careful engineer can trust, on a machine that may be busy.

One thing, :func:`measure`: ``warmup`` untimed calls, then timed calls until ``iterations`` are done or
``max_seconds`` have passed (never fewer than ``min_iterations``).

Several things compared, :func:`interleave`: a load burst during one variant's turn must not decide which is
faster, so all of them are timed together in ROUNDS. Each round gives every variant a short burst (at most
``burst_calls`` calls or ``burst_seconds``) at each batch size, the variants' order rotated by one each round;
per variant and batch the figures are the MEDIAN over rounds of each round's median latency (and of each round's
throughput), and the SPREAD is how far the rounds disagree (:func:`spread_pct`). :class:`Contention` watches the
machine meanwhile (load average against cores, CPU steal and other processes' CPU time from ``/proc/stat``), and
:func:`pick` calls a winner only when it is faster by more than that noise (otherwise a tie, broken by the
smaller file, then the higher accuracy, then the name).

Each call is timed on the host with ``time.perf_counter_ns``; a ``sync`` callable, when given (GPU backends),
runs inside the timed region so asynchronous work is counted. Reported: percentiles, mean, std, the
coefficient of variation, and throughput = images / timed seconds. numpy and the standard library only.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from .errors import RuntimeInputError

METHOD = "host wall clock (time.perf_counter_ns) per call, after warm-up; device synchronized inside the timed region when a GPU is used"
ROUNDS_METHOD = ("variants timed together in rounds (each round a short burst per variant and batch size, the "
                 "order rotated each round); p50 and throughput are medians over rounds of each round's figure")
#: how :attr:`LatencyStats.spread_pct` is defined (the report and docs quote it)
SPREAD = "(max - min) / median of the per-round p50 latencies, in percent"
MIN_ROUNDS = 3  # fewer rounds give no median worth the name and no spread
MAX_ROUNDS = 1000
NOISY_SPREAD_PCT = 10.0  # per-round p50s further apart than this (percent of their median): the machine was busy
BUSY_LOAD = 1.5  # 1-minute load average per core above which the machine was busy (the timing itself fills ~1)
BUSY_OTHERS = 0.15  # share of all cores' time other processes used while timing, above which it was busy
BUSY_STEAL = 0.05  # share of CPU time the hypervisor gave to other guests while timing, above which it was busy
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
    throughput_per_s: float  # images per second over the timed calls (rounds: the median of each round's)
    rounds: int = 1  # interleaved rounds the figures come from (1: timed alone, by measure)
    round_p50_ms: tuple[float, ...] = ()  # each round's median latency, in the order the rounds ran
    spread_pct: float | None = None  # SPREAD over the rounds, percent; None when timed in one go

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV or (self.spread_pct is not None and self.spread_pct > NOISY_SPREAD_PCT)

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


def spread_pct(round_p50s) -> float:
    """How far the rounds disagree: (max - min) / median of the per-round p50s, in percent (:data:`SPREAD`).

    Min-max rather than an interquartile range: with a handful of rounds an IQR would ignore the one round a load
    burst hit, and that is the round a verdict must survive."""
    t = np.asarray(round_p50s, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no rounds to take a spread of")
    med = float(np.median(t))
    return 100.0 * float(t.max() - t.min()) / med if med > 0 else 0.0


def combine_rounds(per_round_ms, batch: int) -> LatencyStats:
    """Statistics of one variant at one batch size timed in rounds: ``per_round_ms`` holds each round's per-call
    latencies (ms). p50 and throughput are medians over the rounds of each round's median and throughput, so one
    round slowed by other work moves neither; p90, p99, mean, std, min and CV are over all calls pooled (the tail
    a user sees); ``spread_pct`` is :func:`spread_pct` of the per-round medians."""
    rounds = [np.asarray(r, dtype=np.float64) for r in per_round_ms]
    if not rounds or any(r.size == 0 for r in rounds):
        raise ValueError("every round needs at least one timing")
    pooled = summarize(np.concatenate(rounds), batch)
    p50s = [float(np.median(r)) for r in rounds]
    thr = [batch * r.size / (r.sum() / 1000.0) if r.sum() > 0 else float("inf") for r in rounds]
    return replace(pooled, p50_ms=float(np.median(p50s)), throughput_per_s=float(np.median(thr)),
                   rounds=len(rounds), round_p50_ms=tuple(p50s), spread_pct=spread_pct(p50s))


def check_rounds(*, rounds: int, burst_calls: int, burst_seconds: float, warmup: int, warmup_seconds: float = 0.0,
                 names=("rounds", "burst calls", "burst seconds", "warmup", "warmup_seconds")) -> None:
    """Refuse round settings that would hang or mean nothing, all problems at once (``names``: the caller's
    spelling of the five settings)."""
    n_rounds, n_calls, n_secs, n_warm, n_warm_s = names
    problems = []
    if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        problems.append(f"{n_rounds} must be {MIN_ROUNDS} to {MAX_ROUNDS} (a median and a spread need at least "
                        f"{MIN_ROUNDS}), got {rounds}")
    try:
        check_timing(warmup=warmup, warmup_seconds=warmup_seconds, iterations=burst_calls, max_seconds=burst_seconds,
                     names=(n_warm, n_warm_s, n_calls, n_secs))
    except RuntimeInputError as e:
        problems.append(str(e).rstrip("."))
    if problems:
        raise RuntimeInputError("; ".join(problems) + ".")


def rotated(names: list, r: int) -> list:
    """The order of round ``r``: ``names`` rotated left by ``r``, so each goes first once every len(names) rounds."""
    k = r % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def interleave(calls: dict[str, dict[int, Callable[[], object]]], *, rounds: int = 7, burst_calls: int = 100,
               burst_seconds: float = 0.15, warmup: int = 10, warmup_seconds: float = 0.0, min_calls: int = 3,
               syncs: dict[str, Callable[[], None] | None] | None = None) -> tuple[dict[str, dict[int, LatencyStats]], dict]:
    """Time several things together in rounds: ``calls[name][batch]()`` runs one inference of ``batch`` images.

    Every (name, batch) is warmed up first (``warmup`` calls, and until ``warmup_seconds`` passed). Then each of
    ``rounds`` rounds goes batch by batch, giving every name in that round's rotated order (:func:`rotated`) a
    burst of at most ``burst_calls`` timed calls or ``burst_seconds`` (never fewer than ``min_calls``). The
    variants' bursts at one batch size thus run seconds apart, never minutes, and each is first in turn.

    Returns ``({name: {batch: LatencyStats}}, contention)``: :func:`combine_rounds` per name and batch, and
    :meth:`Contention.signals` over the timed rounds (warm-up excluded)."""
    check_rounds(rounds=rounds, burst_calls=burst_calls, burst_seconds=burst_seconds, warmup=warmup,
                 warmup_seconds=warmup_seconds)
    syncs = syncs or {}
    names = list(calls)
    for name in names:
        for run in calls[name].values():
            t0 = time.perf_counter()
            done = 0
            while done < warmup or time.perf_counter() - t0 < warmup_seconds:
                run()
                done += 1
        if syncs.get(name):
            syncs[name]()
    times: dict[str, dict[int, list[list[float]]]] = {n: {b: [] for b in calls[n]} for n in names}
    floor = min(min_calls, burst_calls)
    with Contention() as watch:
        for r in range(rounds):
            for b in sorted({b for n in names for b in calls[n]}):
                for name in rotated(names, r):
                    if b not in calls[name]:
                        continue
                    times[name][b].append(_timed_calls(calls[name][b], syncs.get(name), burst_calls, floor,
                                                       burst_seconds))
    stats = {n: {b: combine_rounds(per_round, b) for b, per_round in by_batch.items()} for n, by_batch in times.items()}
    return stats, watch.signals()


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
    return summarize(_timed_calls(run, sync, iterations, min_iterations, max_seconds), batch)


def _timed_calls(run: Callable[[], object], sync: Callable[[], None] | None, most: int, least: int,
                 seconds: float) -> list[float]:
    """Milliseconds of each timed call of ``run()`` (then ``sync()``, which a GPU runner needs inside the timed
    region): at least ``least`` calls, then more until ``most`` calls or ``seconds`` have passed. The one timed
    loop of :func:`measure` and of each burst of :func:`interleave`."""
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < most and (len(times) < least or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        run()
        if sync:
            sync()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


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


def feeds(runner, batches, image_shape: tuple[int, ...], *, seed: int = 0) -> dict[int, Callable[[], object]]:
    """``{batch: run}`` for an onnxruntime runner, each ``run()`` one inference of a random batch of the model's
    dtype; every batch size is checked (:func:`check_feed`) before anything is built."""
    inp = the_input(runner)
    dtype = check_feed(runner, batches, image_shape)
    rng = np.random.default_rng(seed)
    out = {}
    for b in batches:
        data = rng.standard_normal((b, *image_shape)).astype(dtype) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 255, (b, *image_shape)).astype(dtype)
        out[b] = (lambda feed: lambda: runner.infer(feed))({inp.name: data})
    return out


#: added to a phase's own seconds to bound one call: room for a first call's lazy set-up (memory arenas, CUDA kernels)
CALL_GRACE_S = 30.0


def call_limit(max_seconds: float, warmup_seconds: float) -> float:
    """Seconds one timed or warm-up call may take before the runner stops it (``OnnxrtRunner.time_limit``): the
    longer phase plus :data:`CALL_GRACE_S`. Without it, a model that never returns (an endless Loop) would hang the
    benchmark despite :func:`check_timing`'s finite budgets, since a call is only timed after it returns."""
    return max(max_seconds, warmup_seconds) + CALL_GRACE_S


# ---------------------------------------------------------------------------------------------- contention


def _proc_stat() -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks summed over all CPUs since boot, from ``/proc/stat``; None off Linux."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if len(first) < 5 or first[0] != "cpu":
        return None
    try:
        v = [int(x) for x in first[1:9]]
    except ValueError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
    return user + nice + system + irq + softirq, steal, sum(v)


def _load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


class Contention:
    """What else the machine did while a block timed something (a context manager; :meth:`signals` after it).

    - ``load_1min``: the 1-minute load average at the end, against ``cores`` (the timing itself keeps about one
      runnable thread per core busy, so only well above one per core means others queued for the CPUs);
    - ``steal_pct``: CPU time a hypervisor gave to other guests, percent of all CPU time (``/proc/stat``, Linux);
    - ``others_cpu_pct``: CPU time used by processes other than this one (and its waited-for children), percent
      of all cores' time (``/proc/stat`` minus ``os.times()``); None when ``own=False`` (the timing ran in a
      process this one does not wait for, as Chromium's renderer, so it cannot be told apart from others).
    """

    def __init__(self, own: bool = True):
        self.own = own
        self._start = self._stop = None

    @staticmethod
    def _sample():
        t = os.times()
        return time.monotonic(), _proc_stat(), t.user + t.system + t.children_user + t.children_system

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        self._stop = self._sample()
        return False

    def signals(self) -> dict:
        """``{seconds, cores, load_1min, steal_pct, others_cpu_pct}``; a figure this OS does not give is None."""
        (t0, s0, own0), (t1, s1, own1) = self._start, self._stop or self._sample()
        cores = os.cpu_count() or 1
        out = {"seconds": round(t1 - t0, 3), "cores": cores, "load_1min": _load_1min(), "steal_pct": None,
               "others_cpu_pct": None}
        if s0 and s1 and s1[2] > s0[2]:
            total = s1[2] - s0[2]
            out["steal_pct"] = round(100.0 * (s1[1] - s0[1]) / total, 2)
            if self.own and t1 > t0:
                hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
                others = (s1[0] - s0[0]) / hz - (own1 - own0)
                out["others_cpu_pct"] = round(max(0.0, 100.0 * others / ((t1 - t0) * cores)), 1)
        return out


def untrusted(signals: dict, stats: dict[str, dict[int, LatencyStats]] | None = None) -> list[str]:
    """Why the figures timed under ``signals`` (:meth:`Contention.signals`) with these rounds are not to be trusted,
    one plain sentence per reason; empty when nothing says so."""
    why = []
    load, cores = signals.get("load_1min"), signals.get("cores") or 1
    if load is not None and load > BUSY_LOAD * cores:
        why.append(f"the 1-minute load average was {load:.2f} on {cores} cores (over {BUSY_LOAD:g} per core: other "
                   "work queued for the CPUs)")
    others = signals.get("others_cpu_pct")
    if others is not None and others > 100 * BUSY_OTHERS:
        why.append(f"other processes used {others:.0f} % of the CPU time while timing (over {100 * BUSY_OTHERS:.0f} %)")
    steal = signals.get("steal_pct")
    if steal is not None and steal > 100 * BUSY_STEAL:
        why.append(f"the hypervisor gave {steal:.1f} % of the CPU time to other guests (steal, over "
                   f"{100 * BUSY_STEAL:.0f} %)")
    worst = max(((st.spread_pct, n, b) for n, by in (stats or {}).items() for b, st in by.items()
                 if st.spread_pct is not None), default=None)
    if worst and worst[0] > NOISY_SPREAD_PCT:
        why.append(f"the rounds disagree by up to {worst[0]:.0f} % ({worst[1]} at batch {worst[2]}; over "
                   f"{NOISY_SPREAD_PCT:g} %)")
    return why


# ---------------------------------------------------------------------------------------------- the tie rule


@dataclass(frozen=True)
class Candidate:
    """One thing to choose between: its p50 latency (ms, median over rounds) and that figure's spread (percent),
    and what breaks a tie: file size (bytes) and accuracy (fraction); None where unknown (never breaks a tie)."""

    name: str
    p50_ms: float
    spread_pct: float | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    #: each round's p50 (ms), in the order the rounds ran: when two candidates were timed in the same rounds, they
    #: are compared round by round (:func:`paired_gap`), which a drift that slows every variant alike cannot sway
    rounds: tuple[float, ...] = ()


#: what breaks a tie within the noise, in order (a key where smaller wins; unknown values tie)
TIE_BREAKERS: tuple[tuple[str, Callable[[Candidate], object]], ...] = (
    ("smaller file", lambda c: (c.size_bytes is None, c.size_bytes or 0)),
    ("higher accuracy", lambda c: (c.accuracy is None, -(c.accuracy or 0.0))),
    ("name", lambda c: c.name),
)


@dataclass(frozen=True)
class Verdict:
    """What :func:`pick` decided. ``tied`` lists every candidate within the noise of the fastest (the winner
    included; empty when there is no tie); ``difference_pct`` is how much slower than the fastest (percent) the
    slowest of them is, or, without a tie, the runner-up; ``spread_pct`` the noise that difference was held
    against (the larger spread of the two)."""

    winner: str
    fastest: str
    tied: tuple[str, ...] = ()
    difference_pct: float | None = None
    spread_pct: float | None = None
    broken_by: str | None = None
    runner_up: str | None = None

    @property
    def tie(self) -> bool:
        return bool(self.tied)

    def sentence(self) -> str:
        """``tie within noise (3.1 % vs spread 7.9 %), broken by: smaller file``, or why the winner won."""
        if self.tie:
            return (f"tie within noise ({self.difference_pct:.1f} % vs spread {self.spread_pct:.1f} %), "
                    f"broken by: {self.broken_by}")
        if self.runner_up is None:
            return "the only candidate"
        return (f"faster than `{self.runner_up}` by {self.difference_pct:.1f} %, beyond the spread "
                f"{self.spread_pct:.1f} %")

    def as_dict(self) -> dict:
        return {"winner": self.winner, "fastest": self.fastest, "tied": list(self.tied),
                "difference_pct": None if self.difference_pct is None else round(self.difference_pct, 2),
                "spread_pct": None if self.spread_pct is None else round(self.spread_pct, 2),
                "broken_by": self.broken_by, "runner_up": self.runner_up, "sentence": self.sentence()}


def slower_pct(p50_ms: float, fastest_ms: float) -> float:
    """How much slower ``p50_ms`` is than ``fastest_ms``, in percent of the latter."""
    if fastest_ms > 0:
        return 100.0 * (p50_ms / fastest_ms - 1.0)
    return 0.0 if p50_ms <= 0 else math.inf


def paired_gap(c: Candidate, fastest: Candidate) -> tuple[float, float] | None:
    """(how much slower ``c`` is than ``fastest``, the noise of that figure), both in percent, from the rounds the
    two were timed in together: per round the ratio of their p50s; the difference is the median ratio, the noise
    the spread of the ratios ((max - min) / median, as :func:`spread_pct`). None when they were not timed in the
    same rounds (different counts, fewer than 3, or a figure that is not a positive finite number).

    Why paired: on a shared machine every variant of a round slows down together (measured here on a quiet AMD
    EPYC VM: one variant's p50 at batch 256 moved between 38 and 88 ms from round to round), so each variant's own
    spread is wide while the ratio inside a round barely moves. Holding the ratio against its own spread calls a
    real 1.5x difference a difference, and still calls two copies of one file a tie."""
    a, b = np.asarray(c.rounds, np.float64), np.asarray(fastest.rounds, np.float64)
    if a.size != b.size or a.size < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()
                                              and (a > 0).all() and (b > 0).all()):
        return None
    with np.errstate(over="ignore"):  # figures from a damaged report may overflow: then they do not pair
        ratio = a / b
    if not np.isfinite(ratio).all():
        return None
    med = float(np.median(ratio))
    # not slower round by round than the one with the lowest median p50: no difference at all (and so a tie)
    return max(0.0, 100.0 * (med - 1.0)), 100.0 * float(ratio.max() - ratio.min()) / med


def _gap(c: Candidate, fastest: Candidate) -> tuple[float, float]:
    """(difference, noise) in percent: paired over the rounds where both have them, else the two medians held
    against the larger of the two spreads."""
    return paired_gap(c, fastest) or (slower_pct(c.p50_ms, fastest.p50_ms),
                                      max(fastest.spread_pct or 0.0, c.spread_pct or 0.0))


def pick(candidates: list[Candidate]) -> Verdict:
    """The faster candidate, only when it is faster by more than the noise; else a tie, broken by
    :data:`TIE_BREAKERS` (smaller file, then higher accuracy, then name).

    The fastest is the lowest p50. Another candidate is tied with it when it is slower by no more than the noise
    (:func:`_gap`: round by round when both were timed in the same rounds, else the larger of the two spreads: a
    difference the rounds themselves vary by is no difference). A NaN figure is never "beyond the noise"
    (``not x > y``)."""
    if not candidates:
        raise ValueError("nothing to pick from")
    fastest = min(candidates, key=lambda c: (c.p50_ms, c.name))
    gaps = [(*_gap(c, fastest), c) for c in candidates if c is not fastest]
    tied = [g for g in gaps if not g[0] > g[1]]
    if not tied:
        if not gaps:
            return Verdict(fastest.name, fastest.name)
        x, y, c = min(gaps, key=lambda g: (g[0], g[2].name))
        return Verdict(fastest.name, fastest.name, difference_pct=x, spread_pct=y, runner_up=c.name)
    group = [fastest] + [g[2] for g in tied]
    order = sorted(group, key=lambda c: tuple(key(c) for _, key in TIE_BREAKERS))
    broken_by = next((rule for rule, key in TIE_BREAKERS if key(order[0]) != key(order[1])), TIE_BREAKERS[-1][0])
    return Verdict(order[0].name, fastest.name, tied=tuple(c.name for c in order),
                   difference_pct=max(g[0] for g in tied), spread_pct=max(g[1] for g in tied), broken_by=broken_by)
