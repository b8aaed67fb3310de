"""The embedding promise, proven: a fresh virtualenv with only numpy, onnxruntime and Pillow."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lean_python(tmp_path_factory):
    """A fresh virtualenv holding only numpy, onnxruntime and Pillow (and their own needs)."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "numpy", "onnxruntime>=1.22,<1.32", "pillow"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"could not install numpy/onnxruntime/Pillow from the package index: {pip.stderr[-300:]}")
    return py


@pytest.mark.slow
def test_runtime_classifies_in_a_venv_without_torch(lean_python, quick_run, data_root, tmp_path):
    py = lean_python
    model = quick_run["dir"] / "export" / "model-fp32.onnx"
    raw = data_root / "MNIST" / "raw"
    script = f"""
import importlib.util, json, numpy as np
assert importlib.util.find_spec("torch") is None, "torch must not be installed here"
from runtime import Classifier
x = np.frombuffer(open(r"{raw / 't10k-images-idx3-ubyte'}", "rb").read(), np.uint8, offset=16).reshape(-1, 28, 28)
y = np.frombuffer(open(r"{raw / 't10k-labels-idx1-ubyte'}", "rb").read(), np.uint8, offset=8)
with Classifier(r"{model}") as clf:
    pred = clf.predict(x)
print(json.dumps({{"accuracy": float((pred.indices == y).mean()), "n": int(len(y))}}))
"""
    # only the runtime package is put on the path: copying it proves it needs nothing else from the repo
    site = tmp_path / "app"
    site.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "runtime"), str(site)], check=True)
    out = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=site)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    reported = next(v["accuracy"] for v in quick_run["report"]["variants"] if v["name"] == "onnx-fp32")
    assert got == {"accuracy": reported, "n": 10000}


@pytest.mark.slow
def test_bundle_bench_reproduces_the_report_in_a_venv_without_torch(lean_python, quick_run, data_root, tmp_path):
    import shutil
    import tarfile

    from tests.helpers import invoke

    r = invoke("bundle", "--target", "cpu", "--artifacts", quick_run["artifacts"], "--out", tmp_path / "out",
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    # unpack the tarball elsewhere, as a device would receive it
    with tarfile.open(tmp_path / "out" / "edgenet-cpu-bundle.tar.gz") as tar:
        tar.extractall(tmp_path / "device", filter="data")
    bundle = tmp_path / "device" / "edgenet-cpu-bundle"
    assert not (bundle / "build_engines.py").exists()  # cpu target: no TensorRT scripts
    out = subprocess.run([str(lean_python), "bench.py", "--seconds", "0.1", "--iterations", "10",
                          "--json", "r.json"], capture_output=True, text=True, cwd=bundle)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "p50 @1 (ms)" in out.stdout
    rows = {row["variant"]: row for row in json.loads((bundle / "r.json").read_text())["rows"]}
    reported = {v["name"]: v["accuracy"] for v in quick_run["report"]["variants"]}
    for name in ("onnx-fp32", "onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"):
        assert rows[name]["accuracy"] == reported[name] and rows[name]["matches_report"], name
    shutil.rmtree(tmp_path / "device")
