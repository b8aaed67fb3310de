"""pipeline/bundle/files/bench.py, the script a bundle ships: run from the bundle alone it reproduces the report,
its checks fail wherever validate's would (NaN/inf logits, other flips, a broken reference), its JSON is strict,
and with --engines it runs TensorRT engines (here the stand-ins of tests/fixtures/trt_standins.py)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.trt_standins import fake_engine_file
from tests.helpers import load_module


def test_bench_script_reproduces_the_report_without_the_repo(bundle, quick_run, tmp_path):
    # run from a copy outside the repo, with the repo off sys.path; numpy + onnxruntime are all it imports
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-I", str(bundle / "bench.py"), "--seconds", "0.1", "--iterations", "10",
                           "--rounds", "3", "--batches", "1,8", "--json", str(out)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    for name in ("onnx-fp32", "onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu", "onnx-fp16"):
        assert rows[name]["accuracy"] == reported[name]["accuracy"], name
        assert rows[name]["agreement"] == reported[name]["agreement"], name
    assert "| onnx-fp32 |" in proc.stdout and "equals report" in proc.stdout
    # timed with the pipeline's rounds: every model together, medians over 3 rounds, the spread, the contention
    assert "all models together in 3 rounds" in proc.stdout
    for r in rows.values():
        for st in r["latency"].values():
            assert st["rounds"] == 3 and len(st["round_p50_ms"]) == 3 and st["spread_pct"] >= 0 and st["p50_ms"] > 0
    contention = json.loads(out.read_text())["contention"]
    assert contention["cores"] >= 1 and isinstance(contention["untrusted"], list)
    assert ("WARNING: the timings are not to be trusted" in proc.stdout) == bool(contention["untrusted"])
    assert not list(bundle.rglob("__pycache__"))  # nothing the bundle's MANIFEST.json does not list


# ---------------------------------------------------------------- bench.py checks what validate checks
@pytest.fixture(scope="module")
def bench_mod(bundle):
    return load_module(bundle / "bench.py", "bundle_bench")


@pytest.fixture(scope="module")
def reference(bundle):
    test = np.load(bundle / "data" / "mnist-test.npz")
    return np.load(bundle / "data" / "reference.npz")["logits"], test["labels"]


def _swap_two_predictions(ref, labels):
    """Flip one right and one wrong prediction: accuracy unchanged, two flips (the 'equals report: yes' trap)."""
    logits, pred = ref.copy(), ref.argmax(1)
    right, wrong = np.flatnonzero(pred == labels)[0], np.flatnonzero(pred != labels)[0]
    logits[right, (labels[right] + 1) % 10] = logits[right].max() + 1
    logits[wrong, labels[wrong]] = logits[wrong].max() + 1
    return logits


def _poison(value, row=9):
    """``value`` written where row ``row``'s largest logit is: NaN and +inf keep numpy's argmax there."""
    def make(r, y):
        r = r.copy()
        r[row, r[row].argmax()] = value
        return r
    return make


def _one_more_error(r, y):
    r, right = r.copy(), int(np.flatnonzero(r.argmax(1) == y)[0])
    r[right, (y[right] + 1) % 10] = r[right].max() + 1
    return r


BENCH_CASES = {  # name: (make logits from the reference, atol, the failed checks expected, in order)
    # an image with a NaN/inf logit counts as wrong and flipped (as in validate): the accuracy and flips move too
    "NaN logit": (_poison(float("nan")), None, ["1 logits are NaN or infinite", "accuracy",
                                                 "flipped test images differ from the report: 1 newly flipped (9)"]),
    "+inf logit": (_poison(float("inf")), None, ["1 logits are NaN or infinite", "accuracy", "flipped"]),
    "NaN logit, fp32 atol": (_poison(float("nan"), 5), 1e-4, ["1 logits are NaN", "accuracy", "flipped",
                                                              "agreement 0.9999", "max |logit diff| NaN/inf"]),
    "-inf logit, fp32 atol": (lambda r, y: _set(r, (9, r[9].argmin()), float("-inf")), 1e-4,
                              ["1 logits are NaN", "accuracy", "flipped", "agreement 0.9999",
                               "max |logit diff| NaN/inf"]),
    "NaN everywhere": (lambda r, y: r * float("nan"), 1e-4, ["100000 logits", "accuracy", "flipped", "agreement",
                                                              "max |logit diff|"]),
    "same accuracy, other flips": (_swap_two_predictions, None, ["flipped test images differ from the report: 2 newly"]),
    "same accuracy, other flips, fp32 atol": (_swap_two_predictions, 1e-4, ["flipped", "agreement 0.9998", "max |logit"]),
    "argmax kept, diff 1e-3 > atol": (lambda r, y: r + 1e-3, 1e-4, ["(needs <= 0.0001)"]),
    "one more error": (_one_more_error, None, ["accuracy", "flipped test images differ from the report: 1 newly"]),
}


def _set(a, idx, value):
    a = a.copy()
    a[idx] = value
    return a


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_bench_checks_fail_like_validate(case, bench_mod, reference):
    ref, labels = reference
    make, atol, expected = BENCH_CASES[case]
    info = {"accuracy": float((ref.argmax(1) == labels).mean()), "flips": [], "atol": atol}
    assert bench_mod.check_model(ref, bench_mod.compare(ref, ref, labels), info) == []  # the reference equals itself
    logits = make(ref, labels).astype("float32")
    failed = bench_mod.check_model(logits, bench_mod.compare(logits, ref, labels), info)
    assert len(failed) == len(expected) and all(e in f for e, f in zip(expected, failed)), failed


def test_bench_checks_the_reference_itself(bench_mod, reference, quick_run):
    ref, labels = reference
    torch_acc = next(v["accuracy"] for v in quick_run["report"]["variants"] if v["name"] == "torch-fp32")
    assert bench_mod.check_reference(ref, labels, torch_acc) == []
    assert "NaN or infinite" in bench_mod.check_reference(_set(ref, (0, 0), float("nan")), labels, torch_acc)[0]
    assert "differs from the report's torch-fp32" in bench_mod.check_reference(ref, labels, torch_acc - 0.0001)[0]
    wrong = _swap_two_predictions(ref, labels)
    wrong[wrong.argmax(1) == labels] *= -1  # argmax changes on most right predictions
    assert bench_mod.check_reference(wrong, labels, torch_acc)


@given(st.recursive(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=3) | st.none(),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids, max_size=4),
                    max_leaves=20))
@settings(max_examples=80, deadline=None)
def test_bench_json_is_strict(bench_mod, value):
    import math

    text = json.dumps(bench_mod.strict_json(value), allow_nan=False)  # raises on any NaN/inf left

    def same(a, b):
        if isinstance(a, float):
            return b is None if not math.isfinite(a) else a == b
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b
    assert same(value, json.loads(text))


def _one_model_copy(bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    for p in (copy / "models").glob("*.onnx"):
        if p.name != "model-fp32.onnx":
            p.unlink()
    return copy


def _nan_reference(copy):
    ref = np.load(copy / "data" / "reference.npz")["logits"].copy()
    ref[17, 4] = np.nan
    np.savez_compressed(copy / "data" / "reference.npz", logits=ref)


def _other_flips(copy):
    m = json.loads((copy / "MANIFEST.json").read_text())
    m["models"]["model-fp32"]["flips"] = [7]
    (copy / "MANIFEST.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, expected", [
    (_nan_reference, ["REFERENCE BROKEN: data/reference.npz: 1 logits are NaN or infinite",
                      "onnx-fp32 (onnxruntime-cpu) does not equal the report: ", "max |logit diff| nan (needs <= "]),
    (_other_flips, ["onnx-fp32 (onnxruntime-cpu) does not equal the report: flipped test images differ from the "
                    "report: 0 newly flipped, 1 no longer flipped (7)"]),
])
def test_bench_script_fails_and_says_why(bundle, tmp_path, damage, expected):
    copy = _one_model_copy(bundle, tmp_path)
    damage(copy)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-I", str(copy / "bench.py"), "--seconds", "0.05", "--iterations", "5",
                           "--batches", "1", "--json", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    for line in expected:
        assert line in proc.stdout, proc.stdout
    assert "| NO |" in proc.stdout

    def refuse(c):
        raise AssertionError(f"non-strict JSON constant {c}")
    result = json.loads(out.read_text(), parse_constant=refuse)
    if damage is _nan_reference:
        assert result["rows"][0]["max_abs_diff"] is None and result["reference_failed_checks"]


# ---------------------------------------------------------------- bench.py --engines without a sidecar
def test_bench_runs_trtexec_engines_without_a_sidecar_and_says_what_it_could_not_check(
        bundle, quick_run, tmp_path, fake_polygraphy, capsys):
    """Bug 4 (sidecar), 1 and 2 in the bundle's bench.py: engines built by trtexec have no sidecar; bench.py
    runs them with the manifest's metadata, batches within the profile, copies Polygraphy's reused outputs,
    and lists what it could not check. Accuracy equals the report's for the same ONNX."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    (folder / "engines").mkdir()
    for stem, m in manifest["models"].items():
        if m["tensorrt"]:
            level = "ORT_ENABLE_BASIC" if m["ort_optimization"] == "basic" else "ORT_ENABLE_ALL"
            fake_engine_file(folder / "engines" / f"{stem}.engine", folder / "models" / f"{stem}.onnx", ort_level=level)
    bench = load_module(folder / "bench.py", "bundle_bench")
    out = tmp_path / "r.json"
    assert bench.main(["--engines", "--batches", "1,8,512", "--iterations", "3", "--seconds", "0.01",
                       "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    assert set(rows) == {m["variant"] for m in manifest["models"].values() if m["tensorrt"]}
    for name, r in rows.items():
        assert r["accuracy"] == reported[name]["accuracy"] and r["agreement"] == reported[name]["agreement"], name
        assert "source ONNX (SHA-256)" in r["unchecked"] and "per-layer precisions" in r["unchecked"]
        assert r["latency"]["512"] is None and r["latency"]["8"]["p50_ms"] > 0 and r["batch_range"] == [1, 256]
        assert "H2D" in r["latency_includes"]
    assert all(max(runner.calls) <= 256 for runner in fake_polygraphy)
    text = capsys.readouterr().out
    assert "no sidecar (trtexec writes none), so not checked" in text and "batch 512 not timed" in text
    # a sidecar from another ONNX file: still run, but reported and the exit code says so
    info = manifest["models"]["model-fp16"]
    (folder / "engines" / "model-fp16.engine.json").write_text(json.dumps(
        {"onnx_sha256": "0" * 64, "tensorrt": "10.3.0.30", "metadata": info["metadata"]}))
    assert bench.main(["--engines", "--batches", "1", "--iterations", "2", "--seconds", "0.01"]) == 1
    text = capsys.readouterr().out
    assert "onnx-fp16: WARNING: built from another ONNX file" in text and "engines FAILED: onnx-fp16" in text
