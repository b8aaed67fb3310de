"""runtime/bench.py and `pipeline bench` on any ONNX classifier: the timing statistics and loop, and what bench
refuses before timing anything. (The MACs count bench prints: tests/pipeline/measure/test_efficiency.py.)"""
import contextlib
import json
import math
import signal

import onnx
import pytest

from pipeline.models import build, macs_per_image
from runtime.bench import measure, summarize
from runtime.errors import RuntimeInputError
from tests.fixtures import onnx_graphs
from tests.helpers import invoke


def test_bench_sweeps_batches_and_writes_json(quick_run, tmp_path):
    out = tmp_path / "b.json"
    r = invoke("bench", quick_run["dir"] / "export" / "model-fp32.onnx", "--batch", "1,8", "--iterations", "20",
               "--duration", "0.2", "--warmup-seconds", "0", "--json", out)
    assert r.exit_code == 0, r.output
    assert "Timing method" in r.output and "MACs per image" in r.output
    data = json.loads(out.read_text())
    (one,) = data["models"]
    assert [row["batch"] for row in one["results"]] == [1, 8]
    assert all(row["p50_ms"] > 0 and row["throughput_per_s"] > 0 and row["rounds"] == 7 and row["spread_pct"] >= 0
               for row in one["results"])
    assert one["macs_per_image"] == macs_per_image(build("edgenet")) and data["verdict"] is None
    assert {"load_1min", "cores", "steal_pct", "others_cpu_pct", "untrusted"} <= set(data["contention"])


def _without_image_shape(quick_run, path, name: str):
    """The quick run's FP32 model with its per-image input dimensions made symbolic (``name``), saved at ``path``."""
    m = onnx.load(str(quick_run["dir"] / "export" / "model-fp32.onnx"))
    for d in m.graph.input[0].type.tensor_type.shape.dim[1:]:
        d.Clear()
        d.dim_param = name
    onnx.save(m, str(path))
    return path


def test_bench_asks_for_shape_when_the_model_does_not_say(quick_run, tmp_path):
    path = _without_image_shape(quick_run, tmp_path / "anon.onnx", "unknown")
    r = invoke("bench", path, "--batch", "1", "--iterations", "5", "--duration", "0.1")
    assert r.exit_code == 2 and "--shape" in r.output
    r = invoke("bench", path, "--batch", "1", "--iterations", "5", "--duration", "0.1", "--warmup-seconds", "0",
               "--shape", "1,28,28")
    assert r.exit_code == 0, r.output


def test_bench_bad_arguments(tmp_path):
    r = invoke("bench", tmp_path / "missing.onnx")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("bench", tmp_path / "missing.onnx", "--batch", "0,x")
    assert r.exit_code == 2 and "--batch must be" in r.output


# ---------------------------------------------------------------------------- what bench refuses, before timing


FAST = ("--iterations", "3", "--duration", "0.05", "--warmup", "1", "--warmup-seconds", "0")


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging for ever, as `--warmup-seconds inf` used to) when the block takes too long."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("args, message", [
    (["--warmup-seconds", "inf"], "--warmup-seconds must be a finite number of seconds from 0 to 3600, got inf"),
    (["--warmup-seconds", "nan"], "--warmup-seconds must be a finite number of seconds from 0 to 3600, got nan"),
    (["--warmup-seconds", "-1"], "--warmup-seconds must be a finite number"),
    (["--warmup-seconds", "1e300"], "--warmup-seconds must be a finite number"),
    (["--duration", "inf"], "--duration must be a finite number of seconds above 0 and at most 3600, got inf"),
    (["--duration", "nan"], "--duration must be a finite number"),
    (["--duration", "-inf"], "--duration must be a finite number"),
    (["--duration", "0"], "--duration must be a finite number"),
    (["--warmup", "-1"], "--warmup must be 0..10,000 calls, got -1"),
    (["--warmup", str(10**12)], "--warmup must be 0..10,000 calls"),
    (["--iterations", "0"], "--iterations must be at least 1, got 0"),
    (["--threads", "-1"], "threads must be an integer from 0 (onnxruntime's default) to 1024, got -1"),
    (["--threads", str(10**6)], "threads must be an integer from 0"),
    (["--batch", str(10**9)], "batch size 1000000000 of [1, 28, 28] inputs needs"),
    (["--batch", f"1,{10**18}"], "over 25% of this machine's"),
    (["--shape", "0,28,28"], "--shape must be comma-separated positive integers, got '0,28,28'"),
    (["--shape", "1,28"], "takes input ['batch', 1, 28, 28], which a batch of per-image shape [1, 28] does not fit"),
    (["--shape", "3,28,28"], "which a batch of per-image shape [3, 28, 28] does not fit"),
    (["--batch", "1,0"], "--batch must be comma-separated positive integers"),
])
def test_absurd_numbers_are_refused_before_anything_is_timed(quick_run, args, message):
    model = quick_run["dir"] / "export" / "model-fp32.onnx"
    with deadline(30):
        r = invoke("bench", model, *FAST, *args)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and out.startswith("error: ") and message in out, r.output
    assert "Timing method" not in out and "Traceback" not in out


@pytest.mark.parametrize("kw", [dict(warmup_seconds=math.inf), dict(warmup_seconds=math.nan),
                                dict(max_seconds=math.inf), dict(max_seconds=-1.0), dict(warmup=-5)])
def test_measure_refuses_settings_that_would_hang(kw):
    calls = []
    with deadline(10), pytest.raises(RuntimeInputError, match="must be"):
        measure(lambda: calls.append(1), 1, **kw)
    assert calls == []  # refused before the first call


def test_check_timing_lists_every_problem_at_once():
    from runtime.bench import check_timing

    with pytest.raises(RuntimeInputError) as e:
        check_timing(warmup=-1, warmup_seconds=math.nan, iterations=0, max_seconds=math.inf)
    assert str(e.value).count("must") == 4


@pytest.mark.parametrize("kind", list(onnx_graphs.NOT_CLASSIFIERS))
def test_bench_times_what_it_can_feed_and_refuses_the_rest(kind, tmp_path):
    build, _, timeable = onnx_graphs.NOT_CLASSIFIERS[kind]
    path = onnx_graphs.save(build(), tmp_path / f"{kind}.onnx")
    r = invoke("bench", path, "--batch", "1,2", *FAST)
    out = " ".join(r.output.split())
    assert "Traceback" not in out
    if timeable:  # a uint8 input, a rank-2 input, odd outputs: still one input bench can fill
        assert r.exit_code == 0 and "Timing method" in out, r.output
    else:
        assert r.exit_code == 2 and out.startswith(f"error: {path} ") and "Timing method" not in out, r.output
        assert ("inputs (" in out) if "inputs" in kind else ("bench feeds random float, uint8 or int8 tensors" in out)


def test_bench_refuses_batch_sizes_a_fixed_batch_model_cannot_take(quick_run, tmp_path):
    one = onnx_graphs.with_fixed_batch(quick_run["dir"] / "export" / "model-fp32.onnx", tmp_path / "b1.onnx", 1)
    r = invoke("bench", one, "--batch", "1,8", *FAST)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "has a fixed batch size of 1 (input [1, 1, 28, 28]), so batch size(s) 8 cannot be run" \
        in out and "Timing method" not in out, r.output
    r = invoke("bench", one, "--batch", "1", *FAST)
    assert r.exit_code == 0 and "Timing method" in r.output, r.output


def test_huge_shape_for_a_model_with_free_dimensions_is_refused_before_allocating(quick_run, tmp_path):
    path = _without_image_shape(quick_run, tmp_path / "free.onnx", "free")
    r = invoke("bench", path, "--shape", "1,100000,100000", "--batch", "1", *FAST)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "batch size 1 of [1, 100000, 100000] inputs needs 111.8 GiB for its random input" \
        in out and "Timing method" not in out, r.output


# ---------------------------------------------------------------------------- statistics and the timing loop
def test_summarize_percentiles_and_throughput():
    s = summarize([1.0] * 98 + [10.0, 20.0], batch=4)
    assert s.p50_ms == 1.0 and s.p99_ms > 10 and s.iterations == 100
    assert s.throughput_per_s == pytest.approx(4 * 100 / (128 / 1000))
    assert s.noisy  # one 20x outlier makes the coefficient of variation large


def test_measure_respects_iteration_bounds():
    calls = []
    s = measure(lambda: calls.append(1), batch=1, warmup=5, iterations=30, max_seconds=10)
    assert s.iterations == 30 and len(calls) == 35
    s = measure(lambda: None, batch=1, warmup=0, iterations=10**9, max_seconds=0.05, min_iterations=3)
    assert 3 <= s.iterations < 10**9


# ---------------------------------------------------------------------------- rounds, spread and contention
def test_spread_is_max_minus_min_over_the_median_of_the_round_p50s_in_percent():
    from runtime.bench import spread_pct

    assert spread_pct([1.0, 2.0, 4.0]) == pytest.approx(150.0)  # (4 - 1) / 2
    assert spread_pct([3.0, 3.0, 3.0]) == 0.0
    assert spread_pct([0.0, 0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        spread_pct([])


def test_rounds_combine_to_medians_that_one_slow_round_does_not_move():
    from runtime.bench import combine_rounds

    rounds = [[1.0, 1.0, 1.2], [1.1, 1.1, 0.9], [10.0] * 5]  # the third round ran under a load burst
    s = combine_rounds(rounds, batch=2)
    assert s.rounds == 3 and s.round_p50_ms == (1.0, 1.1, 10.0) and s.iterations == 11
    assert s.p50_ms == 1.1  # the median of the per-round medians; the pooled calls' median is 1.2
    assert s.throughput_per_s == pytest.approx(2 * 3 / (3.2 / 1000))  # the median round's throughput (1,875/s)
    assert s.spread_pct == pytest.approx(100 * 9.0 / 1.1) and s.noisy
    assert s.p99_ms > 9 and s.min_ms == 0.9  # tails over all calls: what a user sees
    pooled = summarize([t for r in rounds for t in r], 2)
    assert pooled.throughput_per_s < s.throughput_per_s / 2  # pooled, the slow round would have dragged it down
    s = combine_rounds([[2.0], [1.0], [3.0], [100.0], [1.5]], batch=1)
    assert s.p50_ms == 2.0 and s.as_dict()["round_p50_ms"] == (2.0, 1.0, 3.0, 100.0, 1.5)
    with pytest.raises(ValueError):
        combine_rounds([[1.0], []], batch=1)


def test_interleave_rotates_the_order_each_round_and_keeps_every_burst_short():
    from runtime.bench import interleave, rotated

    assert [rotated(["a", "b", "c"], r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                              ["a", "b", "c"]]
    log = []
    calls = {n: {b: (lambda n=n, b=b: log.append((n, b))) for b in (1, 4)} for n in ("a", "b", "c")}
    stats, signals = interleave(calls, rounds=4, burst_calls=5, burst_seconds=10.0, warmup=2)
    assert log[:12] == [(n, b) for n in "abc" for b in (1, 4) for _ in range(2)]  # warm-up, untimed
    timed = log[12:]
    assert len(timed) == 4 * 2 * 3 * 5  # rounds x batches x variants x burst calls
    bursts = [timed[i] for i in range(0, len(timed), 5)]
    assert all(timed[i:i + 5] == [timed[i]] * 5 for i in range(0, len(timed), 5))
    expected = [(n, b) for r in range(4) for b in (1, 4) for n in rotated(["a", "b", "c"], r)]
    assert bursts == expected  # per round, batch by batch, every variant once, in the rotated order
    assert set(stats) == {"a", "b", "c"} and all(st.rounds == 4 and st.iterations == 20 and len(st.round_p50_ms) == 4
                                                 for by in stats.values() for st in by.values())
    assert signals["cores"] >= 1 and signals["seconds"] >= 0


def test_interleave_bounds_a_burst_by_time_and_refuses_what_would_hang():
    from runtime.bench import interleave

    n = []
    stats, _ = interleave({"x": {1: lambda: n.append(1)}}, rounds=3, burst_calls=10**9, burst_seconds=0.02, warmup=0)
    assert 3 * 3 <= stats["x"][1].iterations == len(n) < 10**9  # at least 3 calls per burst, bounded by time
    for kw, says in ((dict(rounds=2), "rounds must be 3 to 1000"), (dict(burst_seconds=math.inf), "burst seconds"),
                     (dict(burst_calls=0), "burst calls must be at least 1"), (dict(warmup_seconds=math.nan), "warmup")):
        called = []
        with deadline(10), pytest.raises(RuntimeInputError, match=says):
            interleave({"x": {1: lambda: called.append(1)}}, **{**dict(rounds=3, burst_calls=1, burst_seconds=0.01,
                                                                       warmup=0), **kw})
        assert called == []


BUSY = "while True: pass"


@contextlib.contextmanager
def busy_loops(n: int | None = None):
    """One CPU-bound process per core (or ``n``) beside the test, killed (by their own ids) afterwards."""
    import os
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n or os.cpu_count() or 1)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_contention_sees_other_processes_and_says_why_not_to_trust():
    import time

    from runtime.bench import Contention, untrusted

    with busy_loops() as procs:
        time.sleep(0.5)  # let them start
        with Contention() as watch:
            time.sleep(1.5)  # this process does nothing: every busy tick is someone else's
        assert all(p.poll() is None for p in procs)
    sig = watch.signals()
    assert sig["others_cpu_pct"] > 50, sig  # one busy loop per core: most of the machine
    assert 0 <= sig["steal_pct"] <= 100 and sig["load_1min"] >= 0
    why = untrusted(sig)
    assert any("other processes used" in w for w in why), why
    # a process that does the work itself is not "others": the busy loop here is this one's
    with Contention(own=False) as blind:
        pass
    assert blind.signals()["others_cpu_pct"] is None


def _matmul_chain(path, layers: int, dim: int = 384):
    """An ONNX model of ``layers`` identical dim x dim MatMul layers (a tanh after each, so values stay finite): the
    work per image is exactly proportional to ``layers``, and at dim 384 a call is far above per-call overhead."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), "w")
    nodes, prev = [], "x"
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [prev, "w"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_2x_work_difference_keeps_its_order_beside_one_busy_loop_per_core(tmp_path):
    """Two files, one doing twice the other's work, benchmarked together while every core also runs a busy loop:
    the order is kept (the rounds put the load on both alike), and the faster file is picked. The faster file is
    made the larger one, so a tie (broken by the smaller file) could not pick it by accident."""
    import os

    fast, slow = _matmul_chain(tmp_path / "fast.onnx", 6), _matmul_chain(tmp_path / "slow.onnx", 12)
    m = onnx.load(str(fast))
    m.doc_string = "x" * (slow.stat().st_size - fast.stat().st_size + 4096)  # padding: fast is now the larger file
    onnx.save(m, str(fast))
    assert fast.stat().st_size > slow.stat().st_size
    out = tmp_path / "b.json"
    with busy_loops():
        r = invoke("bench", fast, slow, "--batch", "16", "--threads", "1", "--rounds", "7", "--iterations", "20",
                   "--duration", "0.15", "--warmup", "3", "--warmup-seconds", "0", "--json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    p50 = {m["label"]: m["results"][0]["p50_ms"] for m in data["models"]}
    assert p50["fast.onnx"] < p50["slow.onnx"], p50
    verdict = data["verdict"]
    assert verdict["fastest"] == "fast.onnx" and verdict["winner"] == "fast.onnx" and verdict["tied"] == [], verdict
    assert verdict["difference_pct"] > verdict["spread_pct"]
    assert "Faster at batch 16: fast.onnx (faster than `slow.onnx` by" in " ".join(r.output.split())
    if os.cpu_count() and os.path.exists("/proc/stat"):
        assert data["contention"]["others_cpu_pct"] > 30  # the busy loops were seen
        assert "not to be trusted" in " ".join(r.output.split())


def test_two_copies_of_one_file_are_a_tie(tmp_path):
    a = _matmul_chain(tmp_path / "m.onnx", 4)
    (tmp_path / "copy").mkdir()
    b = tmp_path / "copy" / "m.onnx"
    b.write_bytes(a.read_bytes())
    out = tmp_path / "b.json"
    r = invoke("bench", a, b, "--batch", "8", "--threads", "1", "--rounds", "7", "--iterations", "20",
               "--duration", "0.05", "--warmup", "3", "--warmup-seconds", "0", "--json", out)
    assert r.exit_code == 0, r.output
    verdict = json.loads(out.read_text())["verdict"]
    assert sorted(verdict["tied"]) == sorted([str(a), str(b)]) and verdict["broken_by"] == "name", verdict
    assert "tie within noise (" in " ".join(r.output.split())


def test_candidates_timed_in_the_same_rounds_are_compared_round_by_round():
    """Figures from a quiet run on this shared AMD VM: every variant slowed by up to 2x from round to round, so each
    one's own spread (over 60 %) swallowed a real 1.5x difference and the medians alone called a tie. Paired by round,
    the ratio barely moves, so the faster one wins; without paired rounds the old rule (and its tie) stands."""
    from runtime.bench import Candidate, paired_gap, pick, spread_pct

    slow = (37.6, 70.2, 72.1, 76.8, 84.3, 87.8, 75.7)
    fast = tuple(round(t / r, 3) for t, r in zip(slow, (1.55, 1.45, 1.50, 1.48, 1.52, 1.49, 1.46)))
    a = Candidate("int8", 1.0, spread_pct(fast), 100, rounds=fast)
    b = Candidate("fp32", 1.0, spread_pct(slow), 400, rounds=slow)
    a, b = (Candidate(c.name, float(sorted(c.rounds)[3]), c.spread_pct, c.size_bytes, rounds=c.rounds) for c in (a, b))
    diff, noise = paired_gap(b, a)
    assert 45 < diff < 55 and noise < 10, (diff, noise)
    v = pick([a, b])
    assert not v.tie and v.winner == "int8" and v.runner_up == "fp32"
    unpaired = pick([Candidate(a.name, a.p50_ms, a.spread_pct, 100), Candidate(b.name, b.p50_ms, b.spread_pct, 400)])
    assert unpaired.tie  # each variant's own spread is wider than the difference
    # rounds that do not pair (another count, too few, a NaN) fall back to the medians and spreads
    for other in (slow[:5], slow[:2], (math.nan,) + slow[1:], (1e308,) + slow[1:]):
        assert paired_gap(Candidate("x", 1.0, rounds=other), Candidate("y", 1.0, rounds=(1e-300,) + fast[1:])) is None
    # two copies of one file, timed in the same drifting rounds: a tie, whatever the drift
    jitter = tuple(t * (1 + 0.03 * ((i % 3) - 1)) for i, t in enumerate(slow))
    v = pick([Candidate("a", sorted(slow)[3], spread_pct(slow), 10, rounds=slow),
              Candidate("b", sorted(jitter)[3], spread_pct(jitter), 10, rounds=jitter)])
    assert v.tie and v.broken_by == "name"
