"""`pipeline bundle --target web` and `pipeline demo`: the bundle's files, its page and classifier.js run for real in
headless Chromium (one browser launch for the module, tests/js/browser.mjs), and the demo server."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.bundle import demo, ort_web
from pipeline.bundle.js import NODE_FILES, WEB_FILES
from tests.helpers import invoke, quick_bundle
from tests.kill_resume import default_sigint
from tests.js.env import JS_DIR, require_chromium

REPO = Path(__file__).resolve().parents[3]
BUNDLED = {"MANIFEST.json", "README.md", "report.json", "index.html", "app.js", "classifier.js", "preprocess.mjs",
           "preprocessing.json", "models/model-fp32.onnx", "models/model-int8-cpu.onnx", "golden/golden.json"} | {
    f"ort/{f}" for f in ort_web.FILES}
#: MNIST test images the model classifies inside the browser (classifyPixels), compared with the Python runtime's
TEST_IMAGES = 300
#: MNIST test indices traced on the drawing pad: a 7, a 2, a 1 and a 0 (the first of each in the test set)
DRAWN = (0, 1, 2, 3)


def _mnist(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.dataset import ensure_raw, read_test_set

    return read_test_set(ensure_raw(data_root))


def _softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def web_bundle(quick_run, data_root, tmp_path_factory) -> Path:
    return quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("web-bundles"), "web")


@pytest.fixture(scope="module")
def browser(web_bundle, data_root, tmp_path_factory) -> dict:
    """The page and classifier.js in headless Chromium, served by pipeline.bundle.demo's server on a free port."""
    chromium = require_chromium()
    images, labels = _mnist(data_root)
    golden = json.loads((web_bundle / "golden" / "golden.json").read_text())
    tmp = tmp_path_factory.mktemp("browser")
    spec = {
        "chromium": chromium, "profile": str(tmp / "profile"), "screenshot": str(tmp / "drawn-7.png"),
        "model": "model-fp32",  # the golden set's model (the page's own default is the browser recommendation)
        "images": [{"file": g["file"]} for g in golden["images"]],
        "pixels": [g["pixels"] for g in golden["images"]] + images[:TEST_IMAGES].reshape(TEST_IMAGES, -1).tolist(),
        "digits": [{"label": str(labels[i]), "pixels": images[i].ravel().tolist()} for i in DRAWN],
        "upload": str(web_bundle / "golden" / golden["images"][0]["file"]),
    }
    server = demo.serve(web_bundle, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec["url"] = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        (tmp / "spec.json").write_text(json.dumps(spec))
        r = subprocess.run(["node", str(JS_DIR / "browser.mjs"), str(tmp / "spec.json")], capture_output=True,
                           text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr[-3000:]
    return {"result": json.loads(r.stdout), "golden": golden, "images": images, "labels": labels,
            "screenshot": Path(spec["screenshot"])}


def test_web_bundle_contents(web_bundle, quick_run):
    names = {str(p.relative_to(web_bundle)) for p in web_bundle.rglob("*") if p.is_file()}
    golden = json.loads((web_bundle / "golden" / "golden.json").read_text())
    assert names == BUNDLED | {f"golden/{g['file']}" for g in golden["images"]}  # no test set, no Python files
    manifest = json.loads((web_bundle / "MANIFEST.json").read_text())
    assert manifest["target"] == "web" and set(manifest["files"]) == names - {"MANIFEST.json"}
    # the very preprocessing module of the Node bundle, and the pinned onnxruntime-web's own files
    assert (web_bundle / "preprocess.mjs").read_bytes() == NODE_FILES["preprocess.mjs"].read_bytes()
    assert all((web_bundle / n).read_bytes() == src.read_bytes() for n, src in WEB_FILES.items())
    with tarfile.open(ort_web.tarball(), "r:gz") as tar:
        for name in ort_web.FILES:
            assert (web_bundle / "ort" / name).read_bytes() == tar.extractfile(f"package/dist/{name}").read(), name
    # nothing is loaded from outside the bundle: no absolute URL in the page or the modules
    for name in ("index.html", "app.js", "classifier.js"):
        assert not re.search(r"https?://", (web_bundle / name).read_text()), name
    models = json.loads((web_bundle / "preprocessing.json").read_text())["models"]
    rows = {v["name"]: v for v in quick_run["report"]["variants"]}
    for key, variant in (("model-fp32", "onnx-fp32"), ("model-int8-cpu", "onnx-int8-cpu")):
        assert models[key]["accuracy"] == rows[variant]["accuracy"] and models[key]["file"] == f"models/{key}.onnx"
    # classifier.js loads the first model by default: the report's browser recommendation
    assert f"models/{quick_run['report']['recommended']['browser']['file']}" == next(iter(models.values()))["file"]
    assert len(golden["images"]) == 64
    readme = (web_bundle / "README.md").read_text()
    assert "createClassifier" in readme and "classify(" in readme and ort_web.VERSION in readme
    for path in (web_bundle, web_bundle.with_name(web_bundle.name + ".tar.gz")):
        r = invoke("verify", path)
        assert r.exit_code == 0, r.output


def test_classifier_js_on_the_golden_set_matches_python(browser):
    """classify(<img>) in the page: the browser's decoding + preprocess.mjs + onnxruntime-web give Python's pixels
    (within 1 grey level), labels and softmax (within 1e-4) on all 64 golden files, light paper and alpha included."""
    got, golden = browser["result"]["golden"], browser["golden"]["images"]
    assert [g["file"] for g in got] == [g["file"] for g in golden]
    for g, ref in zip(got, golden):
        assert g["label"] == ref["label"], ref["file"]
        assert np.abs(np.array(g["pixels"]) - np.array(ref["pixels"])).max() <= 1, ref["file"]
        assert np.abs(np.array(g["probabilities"]) - _softmax(ref["logits"])).max() <= 1e-4, ref["file"]


def test_model_in_the_browser_matches_the_python_runtime(browser, web_bundle):
    """classifyPixels on Python's golden pixels and on 300 MNIST test images: the same labels as runtime.Classifier
    and probabilities within 1e-4 (onnxruntime-web's wasm kernels against Python's onnxruntime)."""
    from runtime import Classifier

    golden = browser["golden"]["images"]
    pixels = np.concatenate([np.array([g["pixels"] for g in golden], np.uint8).reshape(-1, 28, 28),
                             browser["images"][:TEST_IMAGES]])
    with Classifier(web_bundle / "models" / "model-fp32.onnx") as clf:
        ref = clf.predict(pixels)
    got = browser["result"]["testSet"]
    assert len(got) == len(pixels) == 64 + TEST_IMAGES
    assert [g["label"] for g in got] == list(ref.labels)
    probs = np.array([g["probabilities"] for g in got])
    assert np.abs(probs - np.array([_softmax(row) for row in ref.logits])).max() <= 1e-4


def test_digits_drawn_with_mouse_and_touch_show_their_labels(browser):
    """Real input events tracing MNIST test digits at 10x on the 280x280 pad (mouse for each, touch for the first);
    the page shows the digit's label first in its top 3. The screenshot of the drawn 7 is kept for the docs."""
    drawn = browser["result"]["drawn"]
    expected = [str(browser["labels"][i]) for i in DRAWN]
    assert [(d["input"], d["label"]) for d in drawn] == [("mouse", e) for e in expected] + [("touch", expected[0])]
    assert [d["shown"] for d in drawn] == [d["label"] for d in drawn]
    for d in drawn:
        assert len(d["top3"]) == 3 and d["top3"][0].startswith(f"{d['label']}: ")
        assert d["ink"] > 1000  # the strokes were drawn on the pad (a touch the page ignored would leave it white)
    assert browser["screenshot"].stat().st_size > 10_000
    if os.environ.get("PIPELINE_DOCS_SCREENSHOT"):  # how docs/web-demo.png is made: copy the test's screenshot
        Path(os.environ["PIPELINE_DOCS_SCREENSHOT"]).write_bytes(browser["screenshot"].read_bytes())


def test_page_measures_latency_offline_and_handles_bad_input(browser):
    res = browser["result"]
    assert res["blocked"] == [] and res["console"] == []  # nothing outside 127.0.0.1 was asked for; no JS errors
    lat = res["latency"]
    assert lat["backend"] == "wasm" and lat["runs"] == 300 and 0 < lat["p50_ms"] <= lat["p99_ms"] < 1000
    assert re.search(r"p50 \d+\.\d{3} ms, p99 \d+\.\d{3} ms", res["latencyText"])
    assert res["webgpuText"].startswith(("WebGPU absent", "WebGPU present"))
    assert res["emptyCanvas"] == "draw a digit first"
    assert "notes.txt is not an image" in res["uploadText"]
    assert res["uploadLabel"] == browser["golden"]["images"][0]["label"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_builds_the_bundle_serves_it_and_stops_on_ctrl_c(quick_copy, data_root, tmp_path):
    """No web bundle yet: `pipeline demo` builds it, serves it with the MIME types browsers require, and Ctrl-C
    (SIGINT) stops it with exit 0 and no traceback."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", "demo", "--port", str(port),
                             "--artifacts", str(quick_copy), "--data-root", str(data_root)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # Ctrl-C as a terminal sends it, even when pytest runs in the background
    try:
        line, seen = "", []
        while "serving:" not in line:  # the CLI's messages go to stderr
            line = proc.stderr.readline()
            seen.append(line)
            assert line or proc.poll() is None, "".join(seen)
        url = f"http://127.0.0.1:{port}/"
        assert url in line
        types = {"": "text/html", "index.html": "text/html", "classifier.js": "text/javascript",
                 "preprocess.mjs": "text/javascript", "ort/ort.wasm.min.mjs": "text/javascript",
                 "ort/ort-wasm-simd-threaded.wasm": "application/wasm", "preprocessing.json": "application/json"}
        for path, ctype in types.items():
            with urllib.request.urlopen(url + path, timeout=30) as r:
                assert r.status == 200 and r.headers["Content-Type"].split(";")[0] == ctype, path
        assert (quick_copy / "bundles" / "edgenet-web-bundle" / "index.html").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # say what was still running, and leave nothing behind
            ps = subprocess.run(["ps", "-o", "pid,ppid,stat,args", "--ppid", str(proc.pid), "-p", str(proc.pid)],
                                capture_output=True, text=True).stdout
            proc.kill()
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"no exit 30 s after SIGINT; processes:\n{ps}\nstdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err


def test_demo_on_a_busy_port_is_one_paragraph_and_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = invoke("demo", "--port", port, "--artifacts", tmp_path)
    assert r.exit_code == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in r.output and "--port" in r.output
    assert not (tmp_path / "bundles").exists()  # refused before building anything


def test_web_bundle_without_npm_or_cache_says_what_is_missing(quick_run, data_root, tmp_path, monkeypatch):
    """An empty cache and no npm: one paragraph naming the package, the version and --ort-web; a tarball that is not
    the pinned release is refused by its sha512; nothing is written either way."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no npm on the PATH
    r = invoke("bundle", "--target", "web", "--artifacts", quick_run["artifacts"], "--out", tmp_path / "out",
               "--data-root", data_root)
    assert r.exit_code == 2
    assert f"{ort_web.PACKAGE} {ort_web.VERSION}" in r.output and "npm is not installed" in r.output
    assert "--ort-web" in r.output and "Traceback" not in r.output
    fake = tmp_path / "onnxruntime-web-1.30.0.tgz"
    with tarfile.open(fake, "w:gz") as tar:
        tar.add(NODE_FILES["preprocess.mjs"], arcname="package/dist/ort.wasm.min.mjs")
    r = invoke("bundle", "--target", "web", "--artifacts", quick_run["artifacts"], "--out", tmp_path / "out",
               "--data-root", data_root, "--ort-web", fake)
    assert r.exit_code == 2 and "sha512" in r.output
    assert not (tmp_path / "out" / "edgenet-web-bundle").exists()
