"""The embedding promise, proven: a fresh virtualenv with only numpy, onnxruntime and Pillow."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runtime_classifies_in_a_venv_without_torch(quick_run, data_root, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          "numpy", "onnxruntime>=1.22,<1.32", "pillow"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.skip(f"could not install numpy/onnxruntime/Pillow from the package index: {pip.stderr[-300:]}")
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
