import numpy as np
import pytest

from pipeline.errors import ParityError
from pipeline.validate import check_parity, compare
from pipeline.variants import BY_NAME


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

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.validate import over_budget  # noqa: E402
from pipeline.report import shipped_variant  # noqa: E402

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


def test_a_variant_with_nonfinite_logits_is_never_shipped():
    rows = [{"name": "onnx-fp32", "backend": "onnxruntime", "precision": "fp32", "budget_pp": None,
             "accuracy_delta": 0.0, "size_bytes": 400, "nonfinite": 0},
            {"name": "onnx-fp16", "backend": "onnxruntime", "precision": "fp16", "budget_pp": 0.02,
             "accuracy_delta": 0.0, "size_bytes": 200, "nonfinite": 3}]
    assert shipped_variant(rows) == "onnx-fp32"
    rows[1]["nonfinite"] = 0
    assert shipped_variant(rows) == "onnx-fp16"


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


# ------------------------------------------------------------------ the validate stage on a copy of the quick run

def _stage_context(artifacts, data_root, **validate):
    """A Context for the quick run's config, with a small timing budget (and any other ValidateConfig field)."""
    from dataclasses import replace

    from pipeline.config import build_config
    from pipeline.stages import Context

    cfg = build_config(model="edgenet", artifacts=artifacts, data_root=data_root, force=False, quick=True)
    small = dict(batches=(1,), warmup=0, iterations=2, max_seconds=0.01)
    return Context(replace(cfg, validate=replace(cfg.validate, **{**small, **validate})))


@pytest.fixture
def torch_threads():
    """Sets torch's thread count to a value no stage would choose (3), and puts the original back afterwards."""
    import torch

    original = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(original)


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "raises"])
def test_validate_stage_times_with_its_threads_and_gives_the_callers_back(quick_copy, data_root, monkeypatch,
                                                                         torch_threads, fails):
    """threads=1 is in force while the variants run, and the caller's count (3) is back afterwards, also when
    the stage fails half-way (a notebook calling the Python API keeps its own torch settings)."""
    import torch

    from pipeline import efficiency, variants
    from pipeline.stages import validate as vstage
    from pipeline.torch_runner import TorchRunner

    seen, real = [], TorchRunner.infer_impl

    def spy(self, feed):
        seen.append(torch.get_num_threads())
        if fails:
            raise RuntimeError("the model broke")
        return real(self, feed)

    monkeypatch.setattr(TorchRunner, "infer_impl", spy)
    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)  # the CPU probe (seconds) is not under test
    monkeypatch.setattr(variants, "VARIANTS", variants.VARIANTS[:2])  # the reference and onnx-fp32 suffice here
    ctx = _stage_context(quick_copy, data_root, threads=1)
    if fails:
        with pytest.raises(RuntimeError, match="the model broke"):
            vstage.run(ctx)
    else:
        vstage.run(ctx)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == torch_threads


def test_golden_tolerance_is_read_from_the_validate_config(quick_copy, data_root):
    """golden.npz's logits moved by 1e-4: refused under the default tolerance (1e-5), accepted under 1e-3."""
    from pipeline import checkpoint
    from pipeline.errors import PipelineError
    from pipeline.stages import validate as vstage

    run = quick_copy / "edgenet"
    g = dict(np.load(run / "export" / "golden.npz"))
    g["logits"] = g["logits"] + np.float32(1e-4)
    with open(run / "export" / "golden.npz", "wb") as f:
        np.savez(f, **g)
    model = checkpoint.restore(checkpoint.load(run / "train" / "model.pt"))
    with pytest.raises(PipelineError, match="no longer reproduces .* allowed 1e-05"):
        vstage._check_golden(_stage_context(quick_copy, data_root), model)
    vstage._check_golden(_stage_context(quick_copy, data_root, golden_atol=1e-3), model)
