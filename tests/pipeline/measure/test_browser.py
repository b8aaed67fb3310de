"""pipeline.measure.browser and the report's browser rows: the web-wasm-* variants measured in headless Chromium on all
10,000 test images through the web bundle's classifier.js, and judged like every other row."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.measure import browser
from pipeline.bundle import js as bundle_js
from pipeline.errors import PipelineError
from tests.js.env import require_chromium


def _rows(report: dict) -> dict:
    return {r["name"]: r for r in report["variants"]}


def test_quick_run_measures_the_browser_rows_like_any_other(quick_run):
    require_chromium()
    rep = quick_run["report"]
    rows = _rows(rep)
    fp32, int8, ref = rows["web-wasm-fp32"], rows["web-wasm-int8"], rows["torch-fp32"]
    # exact parity across languages: onnxruntime-web's wasm kernels on the JS-normalized test images
    assert fp32["agreement"] == 1.0 and 0 < fp32["max_abs_diff"] <= 1e-4
    assert fp32["accuracy"] == rows["onnx-fp32"]["accuracy"] == ref["accuracy"]
    # the int8 row is the CPU INT8 file in the browser, judged against the reference like the Python row
    assert int8["path"] == rows["onnx-int8-cpu"]["path"] and int8["budget_pp"] == rows["onnx-int8-cpu"]["budget_pp"]
    assert int8["accuracy_delta"] == pytest.approx(100 * (int8["accuracy"] - ref["accuracy"]), abs=1e-3)
    for r in (fp32, int8):
        assert r["backend"] == "onnxruntime-web" and r["provider"] == "wasm"
        assert "Chromium" in r["measured_in"] and "onnxruntime-web 1.30.0" in r["measured_in"]
        assert "WebGPU" in r["measured_in"]
        assert set(r["latency"]) == {"1", "256"}  # the quick budget's first and last batch sizes
        one = r["latency"]["1"]  # the quick budget: 3 rounds of at least 3 runs
        assert one["rounds"] == 3 and len(one["round_p50_ms"]) == 3 and one["iterations"] >= 9
        assert 0 < one["p50_ms"] <= one["p99_ms"] and one["spread_pct"] >= 0
    rec = rep["recommended"]["browser"]
    assert rec["measured"] is True and rec["variant"] in ("web-wasm-fp32", "web-wasm-int8")
    assert rec["verdict"]["winner"] == rec["variant"]  # the same tie rule as the Python rows
    ses = next(s for s in rep["timing"]["sessions"] if s["where"] == "browser")
    assert ses["variants"] == ["web-wasm-fp32", "web-wasm-int8"] and ses["others_cpu_pct"] is None
    md = (quick_run["dir"] / "report.md").read_text()
    assert "wasm²" in md and "² Measured in headless Chromium" in md
    assert (quick_run["dir"] / "report" / "pareto-browser.png").is_file()


def _model(quick_run, tmp_path, garbage: bool = False, key: str = "model-fp32") -> dict:
    from exporters.onnx import read_metadata

    path = quick_run["dir"] / "export" / "model-fp32.onnx"
    entry = bundle_js.preprocessing(read_metadata(path), f"models/{key}.onnx", "onnx-fp32", None)
    if garbage:
        path = tmp_path / "model-fp32.onnx"
        path.write_bytes(b"this is not an ONNX file")
    return {key: {"path": path, "entry": entry}}


def test_measure_returns_logits_and_timings_for_the_images_given(quick_run, data_root, tmp_path):
    require_chromium()
    from pipeline.dataset import ensure_raw, read_test_set

    raw = ensure_raw(data_root)
    pixels = read_test_set(raw)[0][:40]
    models = {**_model(quick_run, tmp_path), **_model(quick_run, tmp_path, key="copy")}
    got = browser.measure(browser.find(), models, pixels, batches=(1, 3), warmup=1, rounds=4, iterations=5,
                          max_seconds=5.0)
    m = got["models"]["model-fp32"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(quick_run["dir"] / "export" / "model-fp32.onnx"))
    entry = _model(quick_run, tmp_path)["model-fp32"]["entry"]
    x = ((pixels.astype(np.float32) * np.float32(entry["pixel_scale"]) - np.float32(entry["mean"][0]))
         / np.float32(entry["std"][0])).reshape(-1, 1, 28, 28)
    ref = sess.run(None, {"input": x})[0]
    assert m.logits.shape == (40, 10) and np.abs(m.logits - ref).max() <= 1e-4
    # both models timed in the same 4 rounds: per round and batch size, one burst of 5 runs each
    for key in ("model-fp32", "copy"):
        times = got["models"][key].times_ms
        assert sorted(times) == [1, 3] and all(len(rounds) == 4 and all(len(r) == 5 for r in rounds)
                                               for rounds in times.values())
    assert np.array_equal(got["models"]["copy"].logits, m.logits)
    assert "HeadlessChrome" in got["user_agent"] and got["cross_origin_isolated"] is True
    assert got["contention"]["cores"] >= 1 and got["contention"]["others_cpu_pct"] is None  # Chromium is not "us"


@pytest.mark.parametrize("posted", [None, [], [[1.0], [2.0]], [[1.0], [], [2.0]], [[1.0], [float("nan")], [2.0]],
                                    [[1.0], [-1.0], [2.0]], [[1.0], ["2"], [2.0]], [[1.0], [True], [2.0]], "x"])
def test_timings_the_page_posts_are_checked_before_use(posted):
    with pytest.raises(PipelineError, match="not 3 rounds of finite, non-negative milliseconds"):
        browser._rounds(posted, 3, "m at batch 1")
    assert browser._rounds([[1.0, 2], [3.5], [0]], 3, "m") == [[1.0, 2.0], [3.5], [0.0]]


def test_a_model_the_page_cannot_load_is_one_paragraph(quick_run, tmp_path):
    require_chromium()
    with pytest.raises(PipelineError) as e:
        browser.measure(browser.find(), _model(quick_run, tmp_path, garbage=True), np.zeros((2, 28, 28), np.uint8),
                        batches=(1,), warmup=0, rounds=3, iterations=1, max_seconds=0.01, timeout=120)
    assert "The measuring page in Chromium failed" in str(e.value) and "\n" not in str(e.value)


def test_a_browser_that_exits_at_once_is_one_paragraph(quick_run, tmp_path):
    """An executable that is not a working browser (here /bin/false): a clear error, no hang."""
    with pytest.raises(PipelineError) as e:
        browser.measure("/bin/false", _model(quick_run, tmp_path), np.zeros((2, 28, 28), np.uint8), batches=(1,),
                        warmup=0, rounds=3, iterations=1, max_seconds=0.01, timeout=60)
    assert "exited with code 1 before the measuring page reported" in str(e.value) and "\n" not in str(e.value)


def test_fake_timings_posted_by_another_local_process_are_refused(quick_run, data_root, tmp_path):
    """A local process that finds the measuring server's port and keeps posting well-formed fake results (every run
    0.001 ms) is answered 403 every time: it lacks the run's token. The figures are the page's own: its logits match
    onnxruntime's, and its timings are not the fake ones."""
    import json
    import os
    import subprocess
    import sys

    import onnxruntime as ort

    from pipeline.dataset import ensure_raw, read_test_set
    from tests.servers import REPO

    require_chromium()
    raw = ensure_raw(data_root)
    pixels = read_test_set(raw)[0][:40]
    stop, seen = tmp_path / "stop", tmp_path / "seen.json"
    attacker = subprocess.Popen([sys.executable, "-m", "tests.fixtures.fake_timings", str(os.getpid()), "40", "10",
                                 "1,3", str(stop), str(seen)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        got = browser.measure(browser.find(), _model(quick_run, tmp_path), pixels, batches=(1, 3), warmup=1,
                              rounds=2, iterations=12, max_seconds=0.05)
    finally:
        stop.write_text("")
        attacker.wait(timeout=60)
    statuses = json.loads(seen.read_text())
    assert statuses and set(statuses) == {403}, statuses  # it found the port, and was refused every time
    m = got["models"]["model-fp32"]
    entry = _model(quick_run, tmp_path)["model-fp32"]["entry"]
    x = ((pixels.astype(np.float32) * np.float32(entry["pixel_scale"]) - np.float32(entry["mean"][0]))
         / np.float32(entry["std"][0])).reshape(-1, 1, 28, 28)
    ref = ort.InferenceSession(str(quick_run["dir"] / "export" / "model-fp32.onnx")).run(None, {"input": x})[0]
    assert np.abs(m.logits - ref).max() <= 1e-4  # the page's logits, not the attacker's zeros
    assert "attacker" not in got["user_agent"]
    assert any(t != 0.001 for rounds in m.times_ms.values() for r in rounds for t in r)


def test_a_malformed_result_is_a_400_and_one_paragraph_never_a_crash():
    """What a page posts is checked for shape and size before use (browser.Inbox): `{}`, wrong-length logits, a
    string logit, NaN literals, deep nesting, not JSON. Each is refused; the first well-formed post would be kept."""
    bad = [b"{}", b"[]", b"null", b'{"results": {}}', b'{"error": 5}',
           b'{"results": {"m": {"logits": [0, 0, 0], "times": {"1": [1.0]}}}}',
           b'{"results": {"m": {"logits": [0, 0, "x", 0], "times": {"1": [1.0]}}}}',
           b'{"results": {"m": {"logits": [0, 0, NaN, 0], "times": {"1": [1.0]}}}}',
           b'{"results": {"m": {"logits": [0, 0, 0, 0], "times": {"1": [-1.0]}}}}',
           b'{"results": {"m": {"logits": [0, 0, 0, 0], "times": {"2": [1.0]}}}}',
           b'{"results": {"m": {"logits": [0, 0, 0, 0], "times": {"1": []}}}}',
           b'{"results": {"m": {"logits": [0, 0, 1' + b"0" * 400 + b', 0], "times": {"1": [1]}}}}',
           b"[" * 100000, b"\xff\xfe not json", b'{"results": {"m": {"logits": [true, 0, 0, 0], "times": {"1": [1]}}}}']
    for body in bad:
        inbox = browser.Inbox({"m": 2}, 2, (1,), 10)
        status, why = inbox.accept(body)
        assert status == 400 and inbox.problem and "\n" not in inbox.problem and inbox.data is None, body[:80]
    inbox = browser.Inbox({"m": 2}, 2, (1,), 10)
    good = b'{"results": {"m": {"logits": [0, 0.5, null, 1], "times": {"1": [0.2, 0.3]}}}, "userAgent": "x"}'
    assert inbox.accept(good) == (204, "") and inbox.data["userAgent"] == "x"
    assert inbox.accept(good)[0] == 409  # only the first is kept
