"""`pipeline bundle --target node`: the bundle's files, its Node command run for real, and `pipeline verify` on it."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.bundle.js import NODE_FILES
from tests.helpers import invoke, quick_bundle
from tests.js.env import JS_DIR, link_node_modules, require_node

BUNDLED = {"MANIFEST.json", "README.md", "report.json", "package.json", "classify.mjs", "decode.mjs", "preprocess.mjs",
           "preprocessing.json", "models/model-fp32.onnx", "data/t10k-images-idx3-ubyte", "data/t10k-labels-idx1-ubyte",
           "golden/golden.json"}


@pytest.fixture(scope="module")
def node_bundle(quick_run, data_root, tmp_path_factory) -> Path:
    return quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("node-bundles"), "node")


def _node(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the bundle's command the way its README says, with the pinned packages beside (never inside) the bundle."""
    node = require_node()
    if not (bundle.parent / "node_modules").exists():
        link_node_modules(bundle.parent)
    return subprocess.run([node, "classify.mjs", *args], cwd=bundle, capture_output=True, text=True, timeout=600)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def test_node_bundle_contents(node_bundle, quick_run):
    from exporters.onnx import read_metadata
    from runtime.preprocess import load_image

    names = {str(p.relative_to(node_bundle)) for p in node_bundle.rglob("*") if p.is_file()}
    golden = json.loads((node_bundle / "golden" / "golden.json").read_text())
    assert names == BUNDLED | {f"golden/{g['file']}" for g in golden["images"]}  # no bench.py, no numpy files
    manifest = json.loads((node_bundle / "MANIFEST.json").read_text())
    assert manifest["target"] == "node" and set(manifest["files"]) == names - {"MANIFEST.json"}
    # the very module the repository holds (browsers get the same bytes), and the packages the tests install
    assert (node_bundle / "preprocess.mjs").read_bytes() == NODE_FILES["preprocess.mjs"].read_bytes()
    deps = json.loads((node_bundle / "package.json").read_text())["dependencies"]
    assert deps.items() <= json.loads((JS_DIR / "package.json").read_text())["dependencies"].items()  # + the test-only
    assert all(v[0].isdigit() for v in deps.values()), deps  # exact versions, no ranges
    lock = json.loads((JS_DIR / "package-lock.json").read_text())["packages"]
    assert all(lock[f"node_modules/{k}"]["version"] == v for k, v in deps.items())
    # preprocessing.json is the ONNX metadata, and the accuracy the report gives that variant
    params = json.loads((node_bundle / "preprocessing.json").read_text())["models"]["model-fp32"]
    meta = read_metadata(quick_run["dir"] / "export" / "model-fp32.onnx")
    assert params["mean"] == json.loads(meta["normalization_mean"]) and params["std"] == json.loads(meta["normalization_std"])
    assert params["classes"] == json.loads(meta["classes"]) and params["input_name"] == meta["input_name"]
    row = {v["name"]: v for v in quick_run["report"]["variants"]}["onnx-fp32"]
    assert params["accuracy"] == row["accuracy"] and params["variant"] == "onnx-fp32"
    # the golden set: 64 files of every kind, and what the Python runtime makes of each file as it is in the bundle
    assert len(golden["images"]) == 64
    assert {g["kind"] for g in golden["images"]} == {"mnist", "light", "offcentre", "large", "rgb", "alpha", "jpeg"}
    for g in golden["images"][::7]:
        assert load_image(node_bundle / "golden" / g["file"]).ravel().tolist() == g["pixels"], g["file"]
    readme = (node_bundle / "README.md").read_text()
    assert "npm install --ignore-scripts" in readme and "--golden" in readme and "--test-set" in readme


def test_node_golden_check_passes_and_fails_on_a_changed_vector(node_bundle, tmp_path):
    r = _node(node_bundle, "--golden", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["golden"]
    assert result["images"] == 64 and result["max_pixel_diff"] <= 1 and not result["problems"]
    assert result["max_logit_diff"] <= 1e-4
    # one expected pixel 2 levels off, and one expected label changed: each must fail the check (exit 1)
    copy = _copy(node_bundle, tmp_path)
    path = copy / "golden" / "golden.json"
    golden = json.loads(path.read_text())
    g0, g1 = golden["images"][0], golden["images"][1]
    k = int(np.argmax(g0["pixels"]))
    g0["pixels"][k] -= 2
    g1["label"] = str((int(g1["label"]) + 1) % 10)
    path.write_text(json.dumps(golden))
    r = _node(copy, "--golden")
    assert r.returncode == 1
    assert f"{g0['file']}: preprocessing differs from Python's by 2 grey levels" in r.stderr
    assert f"{g1['file']}: label" in r.stderr


def test_node_classifies_the_test_set_to_the_reports_accuracy(node_bundle, quick_run, tmp_path):
    r = _node(node_bundle, "--test-set", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["test_set"]
    row = {v["name"]: v for v in quick_run["report"]["variants"]}["onnx-fp32"]
    assert result["images"] == 10_000 and result["accuracy"] == row["accuracy"]
    assert "equals report" in r.stderr
    # a report figure one image away is not "equal"
    copy = _copy(node_bundle, tmp_path)
    cfg = json.loads((copy / "preprocessing.json").read_text())
    cfg["models"]["model-fp32"]["accuracy"] += 1e-4
    (copy / "preprocessing.json").write_text(json.dumps(cfg))
    r = _node(copy, "--test-set")
    assert r.returncode == 1 and "DIFFERS from the report" in r.stderr


def test_node_classifies_files_and_refuses_bad_input(node_bundle, tmp_path):
    golden = json.loads((node_bundle / "golden" / "golden.json").read_text())["images"]
    picks = [g for g in golden if g["kind"] in ("large", "alpha", "jpeg")][:6]
    r = _node(node_bundle, *(f"golden/{g['file']}" for g in picks))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert [ln.split("\t")[:2] for ln in lines] == [[f"golden/{g['file']}", g["label"]] for g in picks]
    assert all(0 < float(ln.split("\t")[2]) <= 1 for ln in lines)
    (tmp_path / "notes.png").write_text("not an image")
    for args, words in (([str(tmp_path / "missing.png")], "does not exist"), ([str(tmp_path / "notes.png")], "not a PNG or JPEG"),
                        (["--frobnicate"], "unknown option")):
        r = _node(node_bundle, *args)
        assert r.returncode in (1, 2) and words in r.stderr and len(r.stderr.strip().split("\n")) == 1, r.stderr


def test_verify_node_bundle_then_one_altered_byte(node_bundle, tmp_path):
    assert invoke("verify", node_bundle).exit_code == 0
    assert invoke("verify", node_bundle.with_name(node_bundle.name + ".tar.gz")).exit_code == 0
    copy = _copy(node_bundle, tmp_path)
    js = copy / "preprocess.mjs"
    blob = bytearray(js.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    js.write_bytes(bytes(blob))
    r = invoke("verify", copy)
    assert r.exit_code == 1 and "altered: preprocess.mjs" in r.output


def test_a_model_without_preprocessing_metadata_is_refused():
    """The JS side has no other source for mean, std and labels, so a bundle without them is never written."""
    from pipeline.bundle.js import preprocessing
    from pipeline.errors import PipelineError

    props = {"input_shape": "[1, 28, 28]", "normalization_mean": "[0.1307]", "normalization_std": "[0.3081]",
             "classes": json.dumps([str(i) for i in range(10)]), "input_name": "input", "output_name": "logits"}
    assert preprocessing(props, "models/m.onnx", "onnx-fp32", 0.99)["std"] == [0.3081]
    del props["normalization_std"]
    with pytest.raises(PipelineError, match="lacks the metadata std"):
        preprocessing(props, "models/m.onnx", "onnx-fp32", 0.99)
    for bad in ('"0.3"', "[0.3, NaN]", "[]", "0.3"):  # what Classifier refuses is never written into a bundle
        with pytest.raises(PipelineError, match="malformed preprocessing metadata"):
            preprocessing({**props, "normalization_std": bad}, "models/m.onnx", "onnx-fp32", 0.99)
