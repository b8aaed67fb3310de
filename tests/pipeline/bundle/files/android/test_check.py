"""pipeline/bundle/files/android/check.py, the android bundle's check: run from the unpacked bundle in a bare venv with
one runtime (tests/pipeline/bundle/conftest.py) it reruns the golden vectors and equals the report, skips the runtime
that is not there saying how to install it, and fails, saying why, when a file, the contract or the reference is off."""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from tests.helpers import quick_bundle


@pytest.fixture(scope="module")
def device_bundle(quick_run, data_root, tmp_path_factory):
    """The android bundle, unpacked from its tarball elsewhere, as a build machine or a phone's host receives it."""
    out = tmp_path_factory.mktemp("android-bundles")
    folder = quick_bundle(quick_run, data_root, out, "android")
    device = tmp_path_factory.mktemp("android-device")
    with tarfile.open(folder.with_name(folder.name + ".tar.gz")) as tar:
        tar.extractall(device, filter="data")
    return device / folder.name


def _check(python, bundle, *args):
    return subprocess.run([str(python), "-I", "check.py", "--json", "r.json", *args], cwd=bundle, capture_output=True,
                          text=True, timeout=600)


def _rows(bundle):
    out = json.loads((bundle / "r.json").read_text())
    (bundle / "r.json").unlink()  # not in the bundle's MANIFEST.json
    return {r["file"]: r for r in out["rows"]}, out["skipped"]


def _expect_golden_flips(quick_run, variant, n=64):
    row = next(v for v in quick_run["report"]["variants"] if v["name"] == variant)
    return [i for i in row["flips"] if i < n]


def test_check_with_litert_alone_equals_the_report(device_bundle, litert_python, quick_run):
    proc = _check(litert_python, device_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows, skipped = _rows(device_bundle)
    assert set(rows) == {"model-fp32.tflite", "model-int8.tflite"}
    assert rows["model-fp32.tflite"]["agreement"] == 1.0 and rows["model-fp32.tflite"]["max_abs_diff"] <= 1e-4
    assert rows["model-int8.tflite"]["flips"] == _expect_golden_flips(quick_run, "litert-int8")
    reported = next(v for v in quick_run["report"]["variants"] if v["name"] == "litert-int8")["max_abs_diff"]
    assert rows["model-int8.tflite"]["max_abs_diff"] <= reported  # dequantized: logits, not int8 codes
    assert rows["model-int8.tflite"]["precision"] == "int8" and not rows["model-int8.tflite"]["failed_checks"]
    # ExecuTorch is not in this venv: skipped with the install command, never a traceback
    assert set(skipped) == {"model-fp32.pte", "model-int8.pte"}
    assert "pip install executorch torch numpy" in skipped["model-fp32.pte"] and "Traceback" not in proc.stdout
    assert not list(device_bundle.rglob("__pycache__"))


def test_check_with_executorch_alone_equals_the_report(device_bundle, executorch_python, quick_run):
    proc = _check(executorch_python, device_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows, skipped = _rows(device_bundle)
    assert set(rows) == {"model-fp32.pte", "model-int8.pte"}
    assert rows["model-fp32.pte"]["agreement"] == 1.0 and rows["model-fp32.pte"]["max_abs_diff"] <= 1e-4
    assert rows["model-int8.pte"]["flips"] == _expect_golden_flips(quick_run, "executorch-int8")
    assert set(skipped) == {"model-fp32.tflite", "model-int8.tflite"}
    assert "pip install ai-edge-litert numpy" in skipped["model-int8.tflite"]


def test_check_without_any_runtime_checks_nothing_and_says_so(device_bundle, numpy_python):
    proc = _check(numpy_python, device_bundle)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "nothing was checked" in proc.stdout and proc.stdout.count("SKIPPED") == 4
    _rows(device_bundle)


# ---------------------------------------------------------------- check.py fails where the report would not hold
def _edit_npz(rel, **change):
    def damage(b):
        data = dict(np.load(b / rel))
        for key, fn in change.items():
            data[key] = fn(data[key].copy())
        np.savez(b / rel, **data)
    return damage


def _swap_first_logits(logits):
    """Image 0 gets another class in the reference: an FP32 file now disagrees with it."""
    top = logits[0].argmax()
    logits[0, (top + 1) % 10] = logits[0, top] + 1
    return logits


def _nan(logits):
    logits[3, 4] = np.nan
    return logits


def _edit_json(rel, fn):
    def damage(b):
        data = json.loads((b / rel).read_text())
        fn(data)
        (b / rel).write_text(json.dumps(data))
    return damage


def _claim_a_flip(manifest):
    manifest["models"]["model-int8.tflite"]["flips"] = [5] + manifest["models"]["model-int8.tflite"]["flips"]


def _tiny_int8_diff(manifest):
    manifest["models"]["model-int8.tflite"]["max_abs_diff"] = 1e-6


def _other_mean(side):
    side["normalization_mean"] = "[0.2]"


def _truncate(rel):
    def damage(b):
        (b / rel).write_bytes((b / rel).read_bytes()[:1000])
    return damage


DAMAGE = {
    "the reference gives image 0 another class": (_edit_npz("data/golden.npz", logits=_swap_first_logits),
                                                  "model-fp32.tflite (litert-fp32) does not equal the report: 1 golden "
                                                  "images get another class"),
    "NaN in the reference": (_edit_npz("data/golden.npz", logits=_nan), "REFERENCE BROKEN"),
    "the report's flips of the INT8 file": (_edit_json("MANIFEST.json", _claim_a_flip),
                                            "model-int8.tflite (litert-int8) does not equal the report: flipped golden "
                                            "images"),
    "another mean in a sidecar": (_edit_json("models/model-fp32.tflite.json", _other_mean),
                                  "the contract in models/model-fp32.tflite.json gives inputs"),
    "the INT8 file's reported max diff": (_edit_json("MANIFEST.json", _tiny_int8_diff),
                                           "model-int8.tflite (litert-int8) does not equal the report: max |logit diff|"),
    "a truncated .tflite": (_truncate("models/model-int8.tflite"), "model-int8.tflite (litert-int8) does not equal the "
                                                                   "report: litert could not run it"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_check_fails_and_says_why(case, device_bundle, litert_python, tmp_path):
    damage, expected = DAMAGE[case]
    copy = tmp_path / device_bundle.name
    shutil.copytree(device_bundle, copy)
    damage(copy)
    proc = _check(litert_python, copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert expected in proc.stdout and "FAILED" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_check_refuses_a_json_path_that_is_not_a_regular_file(device_bundle, numpy_python, tmp_path):
    (tmp_path / "link.json").symlink_to("/dev/null")
    proc = subprocess.run([str(numpy_python), "-I", "check.py", "--json", str(tmp_path / "link.json")],
                          cwd=device_bundle, capture_output=True, text=True)
    assert proc.returncode == 1 and "is not a regular file" in proc.stderr and "Traceback" not in proc.stderr
