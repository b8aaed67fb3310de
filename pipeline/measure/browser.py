"""Measuring ONNX files in headless Chromium with onnxruntime-web's wasm build: what a web page really gets.

The validate stage's ``web-wasm-*`` rows (:mod:`pipeline.variants`) come from here. A throwaway folder is laid
out as the web bundle is, by the same function (:func:`pipeline.bundle.js.lay_out_web`: classifier.js,
preprocess.mjs, preprocessing.json, onnxruntime-web's files under ``ort/``, the models), plus a measuring page
(``browser_files/bench.html``, whose measuring code ``measure.mjs`` the phone page of ``pipeline demo --lan``
runs too) and the test images as raw bytes (:func:`page_files`). It is served on
127.0.0.1 by :mod:`pipeline.bundle.serve` (the server of ``pipeline demo`` too); Chromium opens the page, which runs every
test image and times every batch size through ``classifier.js`` and posts the raw logits and timings back. Python
then judges them like any other row (:func:`pipeline.measure.compare.compare`, :func:`runtime.bench.summarize`), so a
browser figure means exactly what a Python figure means.

The port is open to every local process, so the POST is not trusted: it must carry this run's secret token
(:mod:`pipeline.bundle.serve` answers 403 without it), which only the page knows. Chromium is not given the page's URL on
its command line (``/proc/PID/cmdline`` is readable by every local user): it opens a file in the private (0700) temp
folder that forwards to ``bench.html#TOKEN``; the fragment is never sent in a request. A posted result is checked for
shape and size before use (:func:`check_result`): a malformed one is a 400 and a one-paragraph reason, never a crash.

No DevTools client or Node package is needed: the page reports by an HTTP POST to the server that served it, and
Chromium is started with the flags that keep it off the network (it must never reach beyond 127.0.0.1).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.bundle import serve
from pipeline.errors import PipelineError

PAGE_FILES = Path(__file__).parent / "browser_files"
#: executables tried in order (Debian's package is ``chromium``)
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: headless, and nothing that reaches the network: background networking, component updates and sync would
#: otherwise flood a closed network (and leak on an open one)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio")
#: images per classifier run while collecting test-set logits (the model takes any batch)
CHUNK = 32


def find() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def version(executable: str) -> str:
    """``Chromium 1xx.0.x.y``: the first two words the executable says (empty when it does not answer)."""
    try:
        r = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30)
        return " ".join(r.stdout.split()[:2])  # Debian's adds "built on Debian GNU/Linux 12 (bookworm)"
    except (OSError, subprocess.TimeoutExpired):
        return ""


@dataclass(frozen=True)
class Measured:
    """One model measured in the browser: its test-set logits and, per batch size, each round's timings (ms)."""

    logits: np.ndarray  # (N, classes) float32
    times_ms: dict[int, list[list[float]]]  # batch -> [[ms per call] per round], rounds in the order they ran


#: cross-origin isolation: performance.now() then ticks in 5 us steps instead of 100 us
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
#: the longest error text a page may post (it is quoted in one paragraph)
ERROR_CHARS = 2000


def _finite(v) -> bool:
    """A JSON number (not a bool) that is finite as a float."""
    try:
        return type(v) in (int, float) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _timings_ok(v, depth: int = 0) -> bool:
    """A non-empty list of finite, non-negative milliseconds (nested lists allowed: rounds of timed runs)."""
    if not isinstance(v, list) or not v or depth > 3:
        return False
    return all(_timings_ok(t, depth + 1) if isinstance(t, list) else _finite(t) and t >= 0 for t in v)


def check_result(data, models: dict[str, int], images: int, batches) -> str | None:
    """Why a posted measurement is malformed (None when its shape is right).

    ``models``: key -> number of classes. The page posts ``{"error": text}`` or ``{"results": {key: {"logits": [N x
    classes numbers or null], "times": {batch: [ms, ...]}}}, "userAgent", "webgpu", "crossOriginIsolated"}``."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if "error" in data:
        return None if isinstance(data["error"], str) else "its error is not text"
    results = data.get("results")
    if not isinstance(results, dict) or set(results) != set(models):
        return f"results must name exactly the models {sorted(models)}"
    want = {str(b) for b in batches}
    for key, r in results.items():
        if not isinstance(r, dict) or not isinstance(r.get("logits"), list) or not isinstance(r.get("times"), dict):
            return f"{key}: logits must be a list and times an object"
        if len(r["logits"]) != images * models[key]:
            return f"{key}: {len(r['logits'])} logits, expected {images} images x {models[key]} classes"
        if not all(v is None or _finite(v) for v in r["logits"]):
            return f"{key}: a logit is neither a finite number nor null"
        if set(r["times"]) != want or not all(_timings_ok(t) for t in r["times"].values()):
            return f"{key}: times must hold finite non-negative milliseconds for exactly the batch sizes {sorted(want)}"
    if not isinstance(data.get("userAgent", ""), str):
        return "userAgent is not text"
    return None


class Inbox:
    """The one result the measuring page posts (``POST /result``), checked before it is kept.

    Only a POST with the run's token reaches :meth:`accept` (:mod:`pipeline.bundle.serve`). The first well-formed post ends
    the wait; a malformed one (our page misbehaving) is answered 400 and ends it with the reason; any later post is
    answered 409 and changes nothing."""

    def __init__(self, models: dict[str, int], images: int, batches, iterations: int) -> None:
        self.models, self.images, self.batches = models, images, tuple(batches)
        self.done = threading.Event()
        self.data: dict | None = None
        self.problem: str | None = None
        self._lock = threading.Lock()
        # every number as at most 32 characters, plus 1 MiB for the rest (timings in rounds included)
        self.max_bytes = (1 << 20) + 32 * images * sum(models.values()) + \
            64 * max(1, iterations) * len(self.batches) * len(models) * 16

    def route(self) -> serve.Route:
        return serve.Route(self.accept, self.max_bytes)

    def accept(self, body: bytes) -> tuple[int, str]:
        with self._lock:
            if self.done.is_set():
                return 409, "a result was already received"
            try:
                data = json.loads(body, parse_constant=_no_constant)
            except (ValueError, RecursionError) as e:  # UnicodeDecodeError included; RecursionError: [[[[...
                problem = f"not JSON ({type(e).__name__})"
            else:
                problem = check_result(data, self.models, self.images, self.batches)
            if problem:
                self.problem = f"the page posted a malformed result ({problem})"
            else:
                self.data = data
            self.done.set()
            return (400, problem) if problem else (204, "")


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def page_files(models: dict[str, dict], pixels: np.ndarray, spec: dict) -> dict[str, Path | bytes | str]:
    """The measuring page and its inputs, as extras of the web site (:func:`pipeline.bundle.js.lay_out_web`):
    ``bench.html``, ``bench.js`` and ``measure.mjs``, ``bench.json`` (``spec``: batch sizes, rounds..., and the models' keys in the
    order they are measured) and the test images as raw bytes (``test-images.u8``, N x 28 x 28)."""
    return {**{f: PAGE_FILES / f for f in ("bench.html", "bench.js", "measure.mjs")},
            "bench.json": json.dumps({**spec, "models": list(models)}),
            "test-images.u8": np.ascontiguousarray(pixels, np.uint8).tobytes()}


def _stage(folder: Path, models: dict[str, dict], pixels: np.ndarray, spec: dict) -> None:
    """Lay out the measuring folder: the web site the web bundle is (onnxruntime-web, classifier.js, the models),
    plus the measuring page and the images.

    ``models``: key -> ``{"path": ONNX file, "entry": preprocessing.json entry}``."""
    from pipeline.bundle.js import lay_out_web

    lay_out_web(folder, models, page_files(models, pixels, spec))


def measure(executable: str, models: dict[str, dict], pixels: np.ndarray, *, batches: tuple[int, ...],
            warmup: int, rounds: int, iterations: int, max_seconds: float, timeout: float = 600) -> dict:
    """Run ``models`` in headless Chromium on ``pixels`` (N x 28 x 28 uint8, MNIST's white-on-black bytes).

    The page times the models together in ``rounds`` rounds, as :func:`runtime.bench.interleave` does in Python:
    each round a burst of at most ``iterations`` runs or ``max_seconds`` per model and batch size, the models' order
    rotated each round. Returns ``{"models": {key: Measured}, "user_agent", "webgpu", "cross_origin_isolated",
    "contention"}`` (:class:`runtime.bench.Contention` over the browser's whole session). Raises
    :class:`PipelineError` when the browser cannot start, the page reports an error, or nothing comes back
    within ``timeout`` seconds (Chromium is killed either way)."""
    from runtime.bench import Contention

    spec = {"batches": list(batches), "warmup": warmup, "rounds": rounds, "iterations": iterations,
            "max_ms": 1000 * max_seconds, "chunk": CHUNK}
    watch = Contention(own=False)  # the page runs in Chromium's renderer, which this process does not wait for
    with tempfile.TemporaryDirectory(prefix="pipeline-browser.") as tmp:
        site, profile = Path(tmp) / "site", Path(tmp) / "profile"
        site.mkdir()
        _stage(site, models, pixels, spec)
        inbox = Inbox({k: len(m["entry"]["classes"]) for k, m in models.items()}, len(pixels), batches, iterations)
        server = serve.Server(site, 0, routes={"/result": inbox.route()}, extra_headers=ISOLATION)
        server.open_folder()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        # the token reaches the page through a private file, never the command line (see the module's docstring)
        launch = Path(tmp) / "launch.html"
        launch.write_text(f'<!doctype html><script>location.replace({json.dumps(server.url + "bench.html#" + server.token)})'
                          "</script>\n")
        try:
            watch.__enter__()
            proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", launch.as_uri()],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            server.shutdown()
            server.server_close()
            raise PipelineError(f"Chromium ({executable}) could not be started: {e}.") from None
        try:
            while not inbox.done.wait(0.2):
                if proc.poll() is not None:
                    err = (proc.stderr.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                    raise PipelineError(f"Chromium ({executable}) exited with code {proc.returncode} before the "
                                        f"measuring page reported ({err}).")
                timeout -= 0.2
                if timeout <= 0:
                    raise PipelineError(f"The measuring page in Chromium ({executable}) reported nothing in time; "
                                        "the browser may be unable to run onnxruntime-web's wasm build.")
        finally:
            watch.__exit__(None, None, None)
            proc.kill()
            proc.wait()
            proc.stderr.close()
            server.shutdown()
            server.server_close()
    if inbox.problem:
        raise PipelineError(f"The measuring page in Chromium failed: {inbox.problem}.")
    if "error" in inbox.data:
        error = " ".join(inbox.data["error"].split())[:ERROR_CHARS]
        raise PipelineError(f"The measuring page in Chromium failed: {error}.")
    inbox = inbox.data
    out = {}
    for key, r in inbox["results"].items():
        # JSON has no NaN or infinity: the page's JSON.stringify wrote null for them, and they come back as NaN, so
        # compare() counts those images as non-finite (as it does for any other runtime)
        logits = np.array([np.nan if v is None else v for v in r["logits"]], np.float64)
        logits = logits.astype(np.float32).reshape(len(pixels), -1)
        out[key] = Measured(logits, {int(b): _rounds(per_round, rounds, f"{key} at batch {b}")
                                     for b, per_round in r["times"].items()})
    return {"models": out, "user_agent": inbox.get("userAgent", ""), "webgpu": bool(inbox.get("webgpu")),
            "cross_origin_isolated": bool(inbox.get("crossOriginIsolated")), "contention": watch.signals()}


def _rounds(per_round, rounds: int, what: str) -> list[list[float]]:
    """The page's per-round timings of one model and batch size, checked: ``rounds`` non-empty lists of finite,
    non-negative milliseconds (the page is untrusted input)."""
    ok = isinstance(per_round, list) and len(per_round) == rounds and all(
        isinstance(r, list) and r and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                          and np.isfinite(t) and t >= 0 for t in r) for r in per_round)
    if not ok:
        raise PipelineError(f"The measuring page in Chromium posted timings for {what} that are not {rounds} rounds "
                            "of finite, non-negative milliseconds.")
    return [[float(t) for t in r] for r in per_round]
