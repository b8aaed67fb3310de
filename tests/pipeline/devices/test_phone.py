"""`pipeline demo --lan` (pipeline/devices/phone.py): a real demo process bound to 127.0.0.1, headless Chromium
playing the phone (tests/js/phone.mjs: it opens the URL, presses "Measure this device" and the page posts), and raw
requests from this process: no token, traversal, malformed and NaN posts."""
from __future__ import annotations

import html
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.devices import phone
from pipeline.store.paths import sha256_file
from tests.helpers import ROOT, invoke, one_paragraph
from tests.js.env import JS_DIR, require_chromium
from tests.servers import TRAVERSALS, get, post

#: a phone's user agent (Chrome on a Pixel), for posts made by this test rather than a browser
PIXEL = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36"


@pytest.fixture(scope="module")
def lan(quick_run, data_root, tmp_path_factory):
    """`pipeline demo --lan --bind 127.0.0.1 --port 0` on a private copy of the quick run, in a child process;
    stopped (SIGTERM, handled like Ctrl-C) after the module's tests, which must leave it exiting 0."""
    artifacts = tmp_path_factory.mktemp("lan") / "artifacts"
    shutil.copytree(quick_run["artifacts"], artifacts)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--lan", "--bind", "127.0.0.1", "--port", "0",
                             "--artifacts", str(artifacts), "--data-root", str(data_root)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = None
    for line in proc.stdout:
        lines.append(line)
        if "serving:" in line:
            url = line.split(" at ", 1)[1].split()[0]
            break
    assert url, "".join(lines)
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    port, token = int(url.split(":")[2].split("/")[0]), url.rstrip("/").rsplit("/", 1)[1]
    run_dir = artifacts / "edgenet"
    yield {"url": url, "port": port, "token": token, "run": run_dir, "devices": run_dir / "devices",
           "bundle": artifacts / "bundles" / "edgenet-web-bundle", "lines": lines, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0 and "stopped." in out and "Traceback" not in out, out


def _until(cond, timeout: float = 30) -> None:
    """Wait for the demo's output (read on a thread) to satisfy ``cond``."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "not seen in time"
        time.sleep(0.05)


def _recorded(lan) -> dict[str, bytes]:
    folder = lan["devices"]
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_the_url_has_a_token_and_is_drawn_as_a_qr_code(lan):
    assert lan["url"] == f"http://127.0.0.1:{lan['port']}/{lan['token']}/" and len(lan["token"]) >= 22
    qr = phone.qr_text(lan["url"])
    assert qr and set(qr) <= set("█▀▄ \n")  # segno's compact terminal drawing
    _until(lambda: qr in "".join(lan["lines"]))  # the demo printed it below the URL


def test_a_phone_measures_itself_and_the_run_records_it(lan, quick_run, tmp_path):
    """The page runs all 10,000 test images through classifier.js in Chromium, posts, and the run gains the device:
    accuracy, agreement and flipped images equal to the report's web-wasm rows, judged against the same bundle."""
    chromium = require_chromium()
    spec = {"url": lan["url"], "chromium": chromium, "profile": str(tmp_path / "profile"), "timeout_ms": 500_000}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    r = subprocess.run(["node", str(JS_DIR / "phone.mjs"), str(tmp_path / "spec.json")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["pageStatus"] == 200 and got["title"] == "Measure this device"
    assert got["blocked"] == [] and got["console"] == [], got
    assert got["phone"]["ok"] and got["phone"]["status"] == 200, got["phone"]
    browser = got["userAgent"].split("HeadlessChrome/")[1].split(".")[0]
    name = f"HeadlessChrome {browser} on Linux"
    path = lan["devices"] / f"headlesschrome-{browser}-on-linux.json"
    rec = json.loads(path.read_text())
    assert rec["name"] == name and rec["source"] == rec["target"] == "browser" and rec["schema"] == 1
    assert rec["device"]["user_agent"] == got["userAgent"] and rec["device"]["os"] == "Linux"
    shipped = json.loads((lan["bundle"] / "MANIFEST.json").read_text())["files"]
    assert rec["bundle"] == {"manifest_sha256": sha256_file(lan["bundle"] / "MANIFEST.json"), "model": "edgenet",
                             "files": {k: v for k, v in shipped.items() if k.startswith("models/")}}
    rows = {row["name"]: row for row in quick_run["report"]["variants"] if row["name"].startswith("web-wasm-")}
    assert set(rec["variants"]) == set(rows) == {"web-wasm-fp32", "web-wasm-int8"}, quick_run["report"]["skipped"]
    for v, row in rows.items():
        m = rec["variants"][v]
        assert (m["accuracy"], m["agreement"], m["flipped"]) == (row["accuracy"], row["agreement"], row["flips"]), v
        assert m["equals_report"] is True
        lat = m["latency_ms"]["1"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and m["throughput_ips"]["1"] > 0
        assert f"{v}: accuracy {100 * row['accuracy']:.2f} %" in got["verdict"]
    assert f"recorded as {name}" in got["verdict"]
    _until(lambda: any(f"device: recorded as {name}" in line for line in lan["lines"]))


@pytest.mark.parametrize("target", ["/", "/index.html", "/phone.html", "/test-images.u8", "/MANIFEST.json",
                                    "/{wrong}/", "/{wrong}/index.html", "/{short}/index.html", "/x{token}/index.html",
                                    "/{upper}/index.html", "/index.html?t={token}"])
def test_a_request_without_the_token_is_403(lan, target):
    token = lan["token"]
    wrong = "A" * len(token) if token != "A" * len(token) else "B" * len(token)
    t = target.format(token=token, wrong=wrong, short=token[:-1],
                      upper=token.upper() if token.upper() != token else token.lower())
    for method in ("GET", "HEAD"):
        assert get(lan["port"], t, method=method)[0] == 403, (t, method)
    status, _, _ = post(lan["port"], t.split("?")[0] + "result", b"{}", token)  # the header alone is not enough
    assert status == 403, t
    # the same file with the token is served: the 403 is the token's doing
    status, _, body = get(lan["port"], f"/{token}/index.html")
    assert status == 200 and body == (lan["bundle"] / "index.html").read_bytes()


def test_the_token_root_is_the_measure_page_and_only_the_bundle_is_served(lan):
    token, port = lan["token"], lan["port"]
    status, _, body = get(port, f"/{token}/")
    assert status == 200 and b"Measure this device" in body
    status, head, _ = get(port, f"/{token}")
    assert status == 301 and f"Location: /{token}/".encode() in head
    for rel in ("classifier.js", "models/model-fp32.onnx", "preprocessing.json"):
        status, _, body = get(port, f"/{token}/{rel}")
        assert status == 200 and body == (lan["bundle"] / rel).read_bytes(), rel
    status, _, body = get(port, f"/{token}/test-images.u8")
    assert status == 200 and len(body) == 10_000 * 784
    # the run's files beside the bundle, its tarball, the bundle's parent: never
    for rel in ("../edgenet-web-bundle.tar.gz", "../../edgenet/report.json", "..%2f..%2fedgenet%2freport.json"):
        assert get(port, f"/{token}/{rel}")[0] == 404, rel
    # nothing is written through the server: PUT/DELETE are refused, a POST elsewhere than result is 404
    assert get(port, f"/{token}/index.html", method="PUT")[0] == 405
    assert get(port, f"/{token}/index.html", method="DELETE")[0] == 405
    assert post(port, f"/{token}/index.html", b"x", token)[0] == 404


@pytest.mark.parametrize("target", [t for t in TRAVERSALS if t.startswith("/")])
@pytest.mark.parametrize("prefix", ["", "token"])
def test_path_traversal_is_404(lan, target, prefix):
    """`/../../etc/passwd` and its encoded forms (%2e%2e, %2f, double-encoded, backslashes, overlong UTF-8) are 404,
    with or without the token in front: a path that could never be served is refused before the token is read."""
    t = (f"/{lan['token']}" if prefix else "") + target
    status, _, body = get(lan["port"], t)
    assert status == 404 and b"root:" not in body, (t, status)


def _payload(lan) -> dict:
    """A well-formed post from a Pixel: the bundle's models, every test image's logits (one-hot of its true label:
    accuracy 1.0, which is not the report's), 5 rounds of batch-1 timings."""
    models = json.loads((lan["bundle"] / "preprocessing.json").read_text())["models"]
    return {"results": {key: {"logits": _one_hot(), "times": {"1": [[0.5, 0.25, 0.75]] * 5}} for key in models},
            "userAgent": PIXEL, "webgpu": False, "crossOriginIsolated": False}


#: the MNIST test labels, filled by the ``labels`` fixture
_LABELS: list = []


def _one_hot() -> list[float]:
    return np.eye(10, dtype=np.float64)[np.asarray(_LABELS)].ravel().tolist()


@pytest.fixture(scope="module")
def labels(data_root):
    raw = data_root / "MNIST" / "raw"
    _LABELS[:] = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8).tolist()
    return _LABELS


def _mutations(lan) -> dict[str, tuple[bytes, str]]:
    """Malformed posts, each with the words of the reason it must be refused for."""
    good = _payload(lan)
    key = next(iter(good["results"]))

    def changed(f) -> bytes:
        p = json.loads(json.dumps(good))
        f(p)
        return json.dumps(p).encode()

    def times(rounds) -> bytes:
        return changed(lambda p: p["results"][key]["times"].__setitem__("1", rounds))

    nan = json.dumps(good).replace("1.0, 0.0", "NaN, 0.0", 1).encode()
    inf = json.dumps(good).replace("1.0, 0.0", "Infinity, 0.0", 1).encode()
    assert b"NaN" in nan and b"Infinity" in inf
    rounds = "must be 5 rounds of calls between 0 and 60000 ms"
    return {
        "a NaN literal": (nan, "not JSON (ValueError)"),
        "Infinity": (inf, "not JSON (ValueError)"),
        "a null logit (the page's NaN)": (changed(lambda p: p["results"][key]["logits"].__setitem__(7, None)),
                                          f"{key}: a logit is NaN or infinite"),
        "a logit as text": (changed(lambda p: p["results"][key]["logits"].__setitem__(7, "1.0")),
                            "a logit is neither a finite number nor null"),
        "a logit as a bool": (changed(lambda p: p["results"][key]["logits"].__setitem__(7, True)),
                              "a logit is neither a finite number nor null"),
        "a logit too many": (changed(lambda p: p["results"][key]["logits"].append(0.0)), "expected 10000 images x 10"),
        "a logit too few": (changed(lambda p: p["results"][key]["logits"].pop()), "expected 10000 images x 10"),
        "a model missing": (changed(lambda p: p["results"].pop(key)), "results must name exactly the models"),
        "a model more": (changed(lambda p: p["results"].__setitem__("evil", p["results"][key])),
                         "results must name exactly the models"),
        "4 rounds": (times([[0.5]] * 4), rounds),
        "an empty round": (times([[]] + [[0.5]] * 4), "times must hold finite non-negative milliseconds"),
        "a negative time": (times([[-0.5, 1.0]] + [[0.5]] * 4), "times must hold finite non-negative milliseconds"),
        "a call of a day": (times([[86_400_000.0]] + [[0.5]] * 4), rounds),
        "a clock that never ticked": (times([[0.5]] * 2 + [[0, 0, 0]] + [[0.5]] * 2), "the page's clock did not tick"),
        "batch 8 timed instead": (changed(lambda p: p["results"][key].__setitem__("times", {"8": [[0.5]] * 5})),
                                  "for exactly the batch sizes ['1']"),
        "no user agent": (changed(lambda p: p.pop("userAgent")), "userAgent must be printable text"),
        "a user agent with a newline": (changed(lambda p: p.__setitem__("userAgent", "Chrome/1\nEvil")),
                                        "userAgent must be printable text"),
        "a user agent of 10 kB": (changed(lambda p: p.__setitem__("userAgent", "Chrome/1 " + "x" * 10_000)),
                                  "userAgent must be printable text"),
        "not JSON": (b"\x00\xff not json", "not JSON"),
        "a JSON list": (b"[1, 2, 3]", "not a JSON object"),
        "nesting 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "not JSON (RecursionError)"),
    }


def test_a_malformed_or_nan_post_is_refused_and_nothing_recorded(lan, labels):
    """Every malformed post is a 4xx naming why, and the run's recordings are left byte for byte as they were; then
    a well-formed post of the same shape is recorded (so the refusals are the checks' doing), with "equals report"
    false because its logits (one-hot labels: accuracy 1.0) are not the report's."""
    port, token = lan["port"], lan["token"]
    target = f"/{token}/result"
    before = _recorded(lan)
    for what, (body, why) in _mutations(lan).items():
        status, _, answer = post(port, target, body, token)
        text = html.unescape(answer.decode())
        assert status == 400 and "nothing recorded: " in text and why in text, (what, status, text[-300:])
    status, _, answer = post(port, target, json.dumps({"error": "no WebAssembly here"}).encode(), token)
    assert status == 422 and b"no WebAssembly here" in answer
    assert post(port, target, b"{}", None)[0] == 403  # the path's token without the header's
    assert post(port, target, b"{}", "x" * len(token))[0] == 403
    assert post(port, target, b"", token, length="999999999")[0] == 413  # refused before a byte is read
    assert _recorded(lan) == before

    status, _, answer = post(port, target, json.dumps(_payload(lan)).encode(), token)
    assert status == 200 and b"recorded as Chrome 131 on Android" in answer, answer
    rec = json.loads((lan["devices"] / "chrome-131-on-android.json").read_text())
    assert rec["device"]["os"] == "Android" and rec["device"]["user_agent"] == PIXEL
    for v, m in rec["variants"].items():
        assert m["accuracy"] == 1.0 and m["equals_report"] is False, v
        assert m["latency_ms"]["1"]["p50"] == 0.5 and m["throughput_ips"]["1"] == pytest.approx(2000.0)
    assert b"equals the report: NO" in answer
    assert set(_recorded(lan)) == set(before) | {"chrome-131-on-android.json"}
    assert {k: v for k, v in _recorded(lan).items() if k in before} == before

    # the recording names the served models' SHA-256s, which are the run's: current now, stale once a rerun changes one
    from pipeline.store.devices import current_models, is_stale

    models = current_models(lan["run"])
    assert rec["bundle"]["files"] and set(rec["bundle"]["files"]) <= set(models) and not is_stale(rec, models)
    changed = dict(models, **{next(iter(rec["bundle"]["files"])): "0" * 64})
    assert is_stale(rec, changed)


@pytest.mark.parametrize("ua, name", [
    (PIXEL, "Chrome 131 on Android"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
     "Mobile/15E148 Safari/604.1", "Safari 17 on iOS"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 "
     "Mobile/15E148 Safari/604.1", "Chrome 131 on iOS"),
    ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 "
     "Chrome/121.0.0.0 Mobile Safari/537.36", "Samsung Internet 25 on Android"),
    ("Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0", "Firefox 133 on Android"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 "
     "Edg/131.0.2903.86", "Edge 131 on Windows"),
    ("curl/8.5.0", "Unknown browser on unknown system"),
])
def test_the_device_is_named_from_its_user_agent(ua, name):
    assert phone.device_name(ua)[0] == name


@pytest.mark.parametrize("args, says", [
    (["--lan", "--bind", "0.0.0.0"], "is not one address the phone can reach"),
    (["--lan", "--bind", "phone.local"], "is not an IPv4 address"),
    (["--bind", "127.0.0.1"], "add --lan"),
])
def test_a_bind_address_that_cannot_serve_a_phone_is_one_paragraph(tmp_path, args, says):
    out = one_paragraph(invoke("demo", "--port", "0", *args, "--artifacts", tmp_path))
    assert says in out and not (tmp_path / "bundles").exists()


def test_without_segno_the_url_is_printed_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "segno", None)  # import segno -> ImportError
    assert phone.qr_text("http://127.0.0.1:1/t/") is None
