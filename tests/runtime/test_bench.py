"""runtime/bench.py and `pipeline bench` on any ONNX classifier: the timing statistics and loop, and what bench
refuses before timing anything. (The MACs count bench prints: tests/pipeline/test_efficiency.py.)"""
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
    assert [row["batch"] for row in data["results"]] == [1, 8]
    assert all(row["p50_ms"] > 0 and row["throughput_per_s"] > 0 for row in data["results"])
    assert data["macs_per_image"] == macs_per_image(build("edgenet"))


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
