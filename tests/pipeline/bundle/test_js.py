"""The JS runtimes refuse what the Python runtime refuses: classify.mjs run for real in Node (onnxruntime-node, small
ONNX models built with onnx.helper, no training), and classifier.js run for real in headless Chromium (with a stub
in place of onnxruntime-web, which an offline machine has no copy of, returning the scores each case names)."""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from pipeline.bundle import js as bundle_js
from pipeline.bundle.js import NODE_FILES, WEB_FILES
from tests.fixtures import onnx_models as om
from tests.js.env import JS_DIR, link_node_modules, require_chromium, require_node

#: preprocessing.json entries that Python's Classifier refuses, and what both runtimes must say
BROKEN = {
    "std-zero": ({"std": [0]}, "std must be positive"),
    "std-negative": ({"std": [-0.3]}, "std must be positive"),
    "std-empty": ({"std": []}, "std must be a non-empty list"),
    "std-string": ({"std": "0.3"}, "std must be a non-empty list"),
    "std-number": ({"std": 0.3}, "std must be a non-empty list"),
    "std-null-item": ({"std": [None]}, "std must be a non-empty list"),
    "std-two-values": ({"std": [0.3, 0.3]}, "std has 2 values but the model takes 1"),
    "mean-string": ({"mean": "abc"}, "mean must be a non-empty list"),
    "mean-empty": ({"mean": []}, "mean must be a non-empty list"),
    "mean-object": ({"mean": {"0": 0.1}}, "mean must be a non-empty list"),
    "mean-bool": ({"mean": [True]}, "mean must be a non-empty list"),
    "scale-zero": ({"pixel_scale": 0}, "pixel_scale must be a positive number"),
    "scale-string": ({"pixel_scale": "1/255"}, "pixel_scale must be a positive number"),
    "classes-string": ({"classes": "0123456789"}, "classes must be a non-empty list"),
    "classes-empty": ({"classes": []}, "classes must be a non-empty list"),
    "kind-unknown": ({"output_kind": "probs"}, "output_kind must be one of"),
}


def _entry(file: str, **over) -> dict:
    entry = {"file": file, "variant": "onnx-fp32", "accuracy": 0.5, "input_name": "x", "output_name": "y",
             "input_shape": [1, 28, 28], "layout": "NCHW", "pixel_scale": 1 / 255, "mean": [0.1307], "std": [0.3081],
             "classes": om.CLASSES, "output_kind": "logits"}
    entry.update(over)
    return entry


@pytest.fixture(scope="module")
def node_bundle(tmp_path_factory) -> Path:
    """A Node bundle's command files around small models: logits, NaN, probabilities, 12 outputs for 10 labels."""
    require_node()
    root = tmp_path_factory.mktemp("js-refusals")
    folder = root / "bundle"
    for name, src in NODE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / name)
    link_node_modules(root)
    om.linear(folder / "models" / "logits.onnx")
    om.linear(folder / "models" / "nan.onnx", nan=True)
    om.linear(folder / "models" / "wide.onnx", outputs=12)
    om.linear(folder / "models" / "probs.onnx", head="softmax", output_kind="probabilities")
    om.digit_png(folder / "digit.png")
    models = {"logits": _entry("models/logits.onnx"), "nan": _entry("models/nan.onnx"),
              "short-labels": _entry("models/wide.onnx"),
              "probabilities": _entry("models/probs.onnx", output_kind="probabilities")}
    models.update({k: _entry("models/logits.onnx", **over) for k, (over, _) in BROKEN.items()})
    (folder / "preprocessing.json").write_text(json.dumps({"models": models}))
    (folder / "golden").mkdir()
    return folder


def _node(folder: Path, *args: str, preprocessing: dict | None = None) -> subprocess.CompletedProcess:
    if preprocessing is not None:
        (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return subprocess.run([require_node(), "classify.mjs", *args], cwd=folder, capture_output=True, text=True,
                          timeout=300)


def _one_line_error(r: subprocess.CompletedProcess, match: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout  # no label was printed
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert not re.search(r"^\s+at ", r.stderr, re.M), r.stderr  # no JS stack


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_node_refuses_each_broken_contract(node_bundle, case):
    cfg = json.loads((node_bundle / "preprocessing.json").read_text())
    only = {"models": {case: cfg["models"][case]}}  # the first model is the default
    try:
        _one_line_error(_node(node_bundle, "digit.png", preprocessing=only), BROKEN[case][1])
    finally:
        (node_bundle / "preprocessing.json").write_text(json.dumps(cfg))


def test_node_refuses_nan_scores_and_a_short_label_list(node_bundle):
    _one_line_error(_node(node_bundle, "digit.png", "--model", "nan"), "NaN or infinite scores")
    _one_line_error(_node(node_bundle, "digit.png", "--model", "short-labels"), "there are 10 classes")
    ok = _node(node_bundle, "digit.png", "--model", "logits")
    assert ok.returncode == 0 and ok.stdout.count("\n") == 1, ok.stderr


def test_node_reads_output_kind(node_bundle):
    from runtime import Classifier
    from runtime.preprocess import load_image

    r = _node(node_bundle, "digit.png", "--model", "probabilities")
    assert r.returncode == 0, r.stderr
    with Classifier(node_bundle / "models" / "logits.onnx") as clf:  # the same scores, softmaxed once
        want = clf.predict(load_image(node_bundle / "digit.png"))
    file, label, p = r.stdout.rstrip("\n").split("\t")
    assert label == want.labels[0] and abs(float(p) - float(want.confidence[0])) <= 1e-4, (r.stdout, want.confidence)


def test_a_file_name_cannot_forge_a_row(node_bundle):
    name = "a\tb\nforged\t9\t1.0000\\.png"
    shutil.copy(node_bundle / "digit.png", node_bundle / name)
    r = _node(node_bundle, name, "digit.png", "--model", "logits")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert len(rows) == 2 and all(len(row.split("\t")) == 3 for row in rows), r.stdout
    assert rows[0].split("\t")[0] == "a\\tb\\nforged\\t9\\t1.0000\\\\.png"


def test_a_closed_stdout_ends_quietly(node_bundle):
    files = ["digit.png"] * 50
    p = subprocess.Popen([require_node(), "classify.mjs", *files, "--model", "logits"], cwd=node_bundle,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()  # `| head -0`: closed before the first line is written
    err = p.stderr.read()
    p.wait(timeout=300)
    assert p.returncode == 0 and err == "", (p.returncode, err)


def _golden(folder: Path, images: list, **extra) -> None:
    (folder / "golden" / "golden.json").write_text(json.dumps({"images": images, **extra}))


@pytest.mark.parametrize("model", ["logits", "nan"])
def test_golden_with_no_images_fails(node_bundle, model):
    for images in ([], None):
        _golden(node_bundle, images)
        r = _node(node_bundle, "--golden", "--json", "--model", model)
        assert r.returncode == 1 and "holds no images" in r.stderr, (r.stdout, r.stderr)
        assert json.loads(r.stdout)["golden"]["problems"]


def test_golden_tolerances_do_not_come_from_the_checked_file(node_bundle):
    from runtime import Classifier
    from runtime.preprocess import load_image

    shutil.copy(node_bundle / "digit.png", node_bundle / "golden" / "digit.png")
    pixels = load_image(node_bundle / "digit.png")
    with Classifier(node_bundle / "models" / "logits.onnx") as clf:
        pred = clf.predict(pixels)
    entry = {"file": "digit.png", "label": pred.labels[0], "pixels": pixels.ravel().tolist(),
             "logits": [float(v) for v in pred.logits[0]]}
    _golden(node_bundle, [entry], pixel_tolerance=1, logits_atol=1e-4)
    r = _node(node_bundle, "--golden", "--json", "--model", "logits")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["golden"]["logits_atol"] == bundle_js.LOGITS_ATOL
    # a changed logit with the file's own tolerances loosened: still a failure
    bad = {**entry, "logits": [v + 0.5 for v in entry["logits"]]}
    _golden(node_bundle, [bad], pixel_tolerance=255, logits_atol=1e9)
    r = _node(node_bundle, "--golden", "--json", "--model", "logits")
    assert r.returncode == 1 and "logits differ" in r.stderr, r.stderr
    # the fixed table is Python's
    src = NODE_FILES["classify.mjs"].read_text()
    assert f"const PIXEL_TOLERANCE = {bundle_js.PIXEL_TOLERANCE};" in src and "const LOGITS_ATOL = 1e-4;" in src
    assert bundle_js.LOGITS_ATOL == 1e-4
    _golden(node_bundle, [{**entry, "logits": [None] * 10}])  # NaN written as null by a broken writer
    r = _node(node_bundle, "--golden", "--model", "logits")
    assert r.returncode == 1 and "malformed golden entry" in r.stderr, r.stderr


# ---------------------------------------------------------------- Chromium: classifier.js
STUB_ORT = """
// Test stub of onnxruntime-web's API (the real one needs a download): a "model" file is JSON {dims, data}
export const env = { wasm: {} };
export class Tensor { constructor(type, data, dims) { this.type = type; this.data = data; this.dims = dims; } }
export const InferenceSession = { async create(url) {
  const spec = await (await fetch(url)).json();
  return { async run() { return { y: { dims: spec.dims, data: Float32Array.from(spec.data, (v) => v ?? NaN) } }; },
           release() {} };
} };
"""

DRIVER = """
import { chromium } from "playwright-core";
const [url, executablePath, casesJson] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
const out = {};
try {
  const page = await browser.newPage();
  await page.goto(url);
  for (const key of JSON.parse(casesJson)) {
    out[key] = await page.evaluate(async (model) => {
      try {
        const { createClassifier } = await import("./classifier.js");
        const clf = await createClassifier({ model });
        const r = await clf.classifyPixels(new Uint8Array(784));
        return { label: r.label, probabilities: r.probabilities };
      } catch (e) { return { error: e.name, message: e.message, isError: e instanceof Error }; }
    }, key);
  }
} finally { await browser.close(); }
process.stdout.write(JSON.stringify(out));
"""


def _scores(values, n=1):
    return {"dims": [n, len(values)], "data": values}


@pytest.fixture(scope="module")
def chromium_results(tmp_path_factory) -> dict:
    chromium = require_chromium()
    folder = tmp_path_factory.mktemp("web-refusals")
    for name in ("classifier.js", "preprocess.mjs"):
        shutil.copy(WEB_FILES[name], folder / name)
    (folder / "ort").mkdir()
    (folder / "ort" / "ort.wasm.min.mjs").write_text(STUB_ORT)
    (folder / "index.html").write_text("<!doctype html><title>t</title>")
    logits = [0.5, 3.0, 0.1, 0, 0, 0, 0, 0, 0, 0]
    probs = [0.01, 0.96, 0.01, 0.01, 0.01, 0, 0, 0, 0, 0]
    files = {"logits": _scores(logits), "nan": _scores([None] + logits[1:]), "wide": _scores(logits + [1, 2]),
             "probs": _scores(probs), "logprobs": _scores([__import__("math").log(p) if p else -1e4 for p in probs])}
    (folder / "models").mkdir()
    for k, v in files.items():
        (folder / "models" / f"{k}.json").write_text(json.dumps(v))
    models = {"logits": _entry("models/logits.json"), "nan": _entry("models/nan.json"),
              "short-labels": _entry("models/wide.json"),
              "probabilities": _entry("models/probs.json", output_kind="probabilities"),
              "log-probabilities": _entry("models/logprobs.json", output_kind="log_probabilities"),
              "mislabelled": _entry("models/logits.json", output_kind="probabilities")}
    models.update({k: _entry("models/logits.json", **over) for k, (over, _) in BROKEN.items()})
    (folder / "preprocessing.json").write_text(json.dumps({"models": models}))
    (folder / "driver.mjs").write_text(DRIVER)
    link_node_modules(folder)

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".js": "text/javascript"}

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = subprocess.run(["node", str(folder / "driver.mjs"), f"http://127.0.0.1:{server.server_address[1]}/index.html",
                            chromium, json.dumps(list(models))], capture_output=True, text=True, timeout=300,
                           cwd=JS_DIR)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_browser_refuses_each_broken_contract(chromium_results, case):
    got = chromium_results[case]
    assert got.get("isError") and got["error"] == "ModelError" and BROKEN[case][1] in got["message"], got


@pytest.mark.parametrize("case,match", [("nan", "NaN or infinite scores"), ("short-labels", "there are 10 classes"),
                                        ("mislabelled", "says its output holds probabilities")])
def test_browser_refuses_what_predict_refuses(chromium_results, case, match):
    got = chromium_results[case]
    assert got.get("isError") and got["error"] == "ModelError" and match in got["message"], got


def test_browser_reads_output_kind(chromium_results):
    assert chromium_results["logits"]["label"] == "1"
    for case in ("probabilities", "log-probabilities"):
        got = chromium_results[case]
        assert got["label"] == "1" and abs(got["probabilities"][1] - 0.96) < 1e-6, got  # not softmax(0.96...) = 0.22
