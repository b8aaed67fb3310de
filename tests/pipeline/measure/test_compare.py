"""pipeline/measure/compare.py: comparing logits, parity and budgets (NaN/inf never passes), and collecting logits and
latency from any runner within its batch profile. The validate stage itself: tests/pipeline/stages/test_validate.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ParityError
from pipeline.measure.compare import check_parity, compare, over_budget
from pipeline.variants import BY_NAME
from tests.fixtures.trt_standins import fake_engine_file


def test_compare_counts_agreement_flips_and_delta():
    ref = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    out = ref.copy()
    out[3] = np.eye(10)[5]  # one flipped prediction
    labels = np.array([0, 1, 2, 3])
    f = compare(out, ref, labels)
    assert f["agreement"] == 0.75 and f["flips"] == [3] and f["accuracy"] == 0.75
    assert f["accuracy_delta"] == pytest.approx(-25.0) and f["max_abs_diff"] == 1.0


def test_parity_failure_lists_every_broken_variant():
    from dataclasses import replace

    variants = {**BY_NAME, "onnx-fp32-b": replace(BY_NAME["onnx-fp32"], name="onnx-fp32-b")}
    rows = [{"name": "torch-fp32", "agreement": 1.0, "max_abs_diff": 0.0},
            {"name": "onnx-fp32", "agreement": 0.999, "max_abs_diff": 1e-5},  # only the agreement breaks
            {"name": "onnx-fp32-b", "agreement": 1.0, "max_abs_diff": 3e-4}]  # only the max diff breaks
    with pytest.raises(ParityError) as e:
        check_parity(rows, variants)
    msg = str(e.value)
    assert e.value.exit_code == 3
    assert "onnx-fp32: agreement 0.9990" in msg and "onnx-fp32-b: agreement 1.0000" in msg and "3.00e-04" in msg


def test_parity_passes_within_tolerance():
    check_parity([{"name": "onnx-fp32", "agreement": 1.0, "max_abs_diff": 5e-5}], BY_NAME)


# ------------------------------------------------------------------ NaN/inf never passes a comparison

NONFINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("where", ["logits", "reference"])
@pytest.mark.parametrize("rows", [[2], [0, 3], [0, 1, 2, 3]])
def test_compare_counts_nonfinite_images_as_wrong_and_has_no_max_diff(bad, where, rows):
    ref = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    out = ref.copy()
    (out if where == "logits" else ref)[rows, 0] = bad
    f = compare(out, ref, np.array([0, 1, 2, 3]))
    assert f["max_abs_diff"] is None  # not a number: null in report.json
    assert f["nonfinite"] == (len(rows) if where == "logits" else 0)
    assert f["flips"] == rows and f["agreement"] == 1 - len(rows) / 4
    if where == "logits":
        assert f["accuracy"] == 1 - len(rows) / 4  # never argmax'ed into a lucky class 0


def test_all_nan_logits_no_longer_pass_as_agreement_one():
    """The issue's case: NaN logits against a NaN-free reference scored agreement 1.0 and 9.80 %."""
    ref = np.eye(10, dtype=np.float32)[[0, 0, 0]]
    f = compare(np.full_like(ref, np.nan), ref, np.array([0, 0, 0]))
    assert f["agreement"] == 0.0 and f["accuracy"] == 0.0 and f["nonfinite"] == 3


@pytest.mark.parametrize("name", [v.name for v in BY_NAME.values()] + ["not-in-the-table"])
def test_check_parity_fails_every_variant_with_nonfinite_logits(name):
    rows = [{"name": name, "agreement": 0.99, "max_abs_diff": None, "nonfinite": 7}]
    with pytest.raises(ParityError) as e:
        check_parity(rows, BY_NAME)
    assert f"{name}: 7 test images give NaN or infinite logits" in str(e.value) and e.value.exit_code == 3


@pytest.mark.parametrize("diff", [float("nan"), float("inf"), None])
def test_fp32_parity_fails_when_max_diff_is_not_a_number(diff):
    rows = [{"name": "onnx-fp32", "agreement": 1.0, "max_abs_diff": diff}]
    with pytest.raises(ParityError) as e:
        check_parity(rows, BY_NAME)
    assert "onnx-fp32: agreement 1.0000 (needs 1.0), max |logit diff| NaN/inf" in str(e.value)


@pytest.mark.parametrize("agreement", [float("nan"), 0.9999])
def test_fp32_parity_fails_when_agreement_is_nan_or_short(agreement):
    with pytest.raises(ParityError):
        check_parity([{"name": "onnx-fp32", "agreement": agreement, "max_abs_diff": 0.0}], BY_NAME)


@pytest.mark.parametrize("delta", [float("nan"), float("-inf"), -0.5])
def test_over_budget_counts_nonfinite_deltas(delta):
    assert over_budget([{"name": "onnx-fp16", "accuracy_delta": delta, "budget_pp": 0.02}])
    assert not over_budget([{"name": "onnx-fp16", "accuracy_delta": 0.0, "budget_pp": 0.02}])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), noise=st.sampled_from([0.0, 1e-6, 5e-5]),
       poison=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 9), st.sampled_from(NONFINITE)), max_size=3))
def test_fp32_parity_passes_exactly_when_every_logit_is_finite_and_close(seed, noise, poison):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(64, 10)).astype(np.float32) * 5
    ref[np.arange(64), rng.integers(0, 10, 64)] += 20  # a clear winner per row, so tiny noise never flips it
    out = ref + rng.uniform(-noise, noise, ref.shape).astype(np.float32)
    for i, j, bad in poison:
        out[i, j] = bad
    row = {"name": "onnx-fp32", **compare(out, ref, ref.argmax(1))}
    if poison:
        with pytest.raises(ParityError):
            check_parity([row], BY_NAME)
        assert row["nonfinite"] == len({i for i, _, _ in poison}) and row["max_abs_diff"] is None
    else:
        check_parity([row], BY_NAME)
        assert row["nonfinite"] == 0 and row["max_abs_diff"] <= 1e-4


# ------------------------------------------------------------------ logits and latency, within the runner's profile
class ReusingRunner:
    """A minimal runner whose backend reuses one output buffer (as Polygraphy's TrtRunner does) and
    refuses batches outside its profile; logits are a fixed linear map of the real images."""

    def __new__(cls, lo, hi):
        from runtime.base import BaseRunner

        class _Runner(BaseRunner):
            name = "reusing"
            batch_range = (lo, hi)
            weights = np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32)

            def activate_impl(self):
                self.buffer, self.batches = np.empty((hi, 10), np.float32), []

            def infer_impl(self, feed):
                x = feed["input"]
                if not lo <= len(x) <= hi:
                    raise RuntimeError(f"batch {len(x)} outside the profile {lo}..{hi}")
                self.batches.append(len(x))
                view = self.buffer[: len(x)]
                view[...] = x.reshape(len(x), -1) @ self.weights
                return {"logits": view}

        return _Runner()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 700), lo=st.integers(1, 64), span=st.integers(0, 300), static=st.booleans())
def test_collected_logits_stay_correct_for_any_profile(n, lo, span, static, data_root):
    """Bugs 1 and 2 for every runner: any profile (dynamic or static, as DLA builds need), any image count;
    the runner's buffer is reused, yet every collected logit equals the direct computation."""
    from pipeline.measure.compare import run_logits

    raw = data_root / "MNIST" / "raw"
    images = (np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16, count=n * 784)
              .reshape(n, 1, 28, 28) / 255.0).astype(np.float32)
    hi = lo if static else lo + span
    with ReusingRunner(lo, hi) as runner:
        logits = run_logits(runner, images)
        assert all(lo <= b <= hi for b in runner.batches)
    np.testing.assert_allclose(logits, images.reshape(n, -1) @ runner.weights, rtol=1e-5, atol=1e-5)


def test_latency_is_labelled_with_what_it_includes_and_stays_in_the_profile(fake_polygraphy, quick_run, tmp_path):
    """Bug 3: no "copies excluded" figure (Polygraphy's own time spans the copies too); every figure says
    what one call spans; a batch outside the engine profile is refused, not fed to set_input_shape."""
    from pipeline.config import ValidateConfig
    from pipeline.errors import PipelineError
    from pipeline.measure.compare import latency
    from runtime.tensorrt import TensorRTRunner

    engine = fake_engine_file(tmp_path / "m.engine", quick_run["dir"] / "export" / "model-fp32.onnx")
    images = np.zeros((300, 1, 28, 28), np.float32)
    cfg = ValidateConfig(batches=(1, 256), warmup=1, rounds=3, iterations=3, max_seconds=0.01)
    with TensorRTRunner(engine) as runner:
        by_name, session = latency({"trt-fp32": runner}, images, cfg)
        lat = by_name["trt-fp32"]
        assert set(lat) == {"1", "256"} and session["variants"] == ["trt-fp32"]
        for stats in lat.values():
            assert "copies_excluded" not in stats
            assert "H2D" in stats["includes"] and "D2H" in stats["includes"] and "GPU compute" in stats["includes"]
        assert not hasattr(runner, "device_time_ms")
        with pytest.raises(PipelineError, match="accepts batches 1 to 256"):
            latency({"trt-fp32": runner}, images, ValidateConfig(batches=(1, 257), warmup=0, iterations=1,
                                                                 max_seconds=0.01))
