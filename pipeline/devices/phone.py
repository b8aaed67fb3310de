"""``pipeline demo --lan``: the web bundle served to a phone on the local network, and its own measurement of the
model brought home into the run.

The phone opens a URL (printed, and drawn as a QR code in the terminal) whose first path component is a random
token (:func:`secrets.token_urlsafe`): every request without it is 403, before its path is looked at (a path that
could never be served, ``..`` in any encoding, is 404 first). Under the token the server serves the verified web
bundle read-only (:mod:`pipeline.bundle.serve`: regular files inside the folder only, no links, no hidden files, no
listings, deadlines and a thread cap) plus five files of its own kept in memory: the "measure this device" page
(``browser_files/phone.html`` and ``phone.js``), ``measure.mjs`` (the very code the validate stage's headless
Chromium runs, :mod:`pipeline.measure.browser`), its settings (``phone.json``) and the 10,000 MNIST test images as raw
bytes.

The page runs every test image through the bundle's ``classifier.js``, times batch 1 in rounds, and posts the
logits and timings back (``POST result``, with the token in the ``X-Pipeline-Token`` header too). The post is
untrusted input: its size is capped before it is read, its shape checked by :func:`pipeline.browser.check_result`,
and, stricter than the build host's own browser, every logit must be a finite number and every timing a sane one
(:func:`check_post`). It is then judged exactly like the report's ``web-wasm-*`` rows: the same
:func:`pipeline.validate.compare` against the run's PyTorch reference logits, the same
:func:`runtime.bench.combine_rounds`, and recorded with :func:`pipeline.store.devices.record` as a device named
from its user agent ("Chrome 131 on Android"), with "equals report" true when accuracy, agreement and the flipped
images are the report's for that row.

Why HTTP on the LAN and not HTTPS: a phone trusts no certificate this host could make without the user installing
it. The token keeps other devices on the network out, the Host check keeps DNS-rebinding pages out, and nothing
posted is trusted. The page is then not a secure context, so its browser may coarsen ``performance.now()`` (to
100 us in Chromium, 1 ms in some others): the batch-1 figures of a fast phone are that coarse (docs/devices.md).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path

import numpy as np

from pipeline.bundle import serve
from ..errors import PipelineError

log = logging.getLogger(__name__)

PAGE_FILES = Path(__file__).resolve().parents[1] / "measure" / "browser_files"
#: the page's own files, served from memory beside the bundle's (the bundle has none of these names)
PAGES = {"phone.html": "phone.html", "phone.js": "phone.js", "measure.mjs": "measure.mjs"}
#: measure.mjs's settings on a phone: batch 1 only (what an app classifying one drawing waits for), 5 rounds of
#: bursts of at most 200 calls or 0.3 s per model, after 10 untimed calls; logits collected 32 images per call
SPEC = {"batches": [1], "warmup": 10, "rounds": 5, "iterations": 200, "max_ms": 300.0, "chunk": 32}
#: one batch-1 call slower than this (ms) is not a measurement of the model
MAX_CALL_MS = 60_000.0
#: the longest user agent recorded (real ones are under 300 characters)
UA_CHARS = 512
#: a phone on Wi-Fi posts about 5 MB of logits: more time to send a request than a page on this host needs
LIMITS = serve.Limits(read_s=120.0, total_s=240.0, connections=16)
#: an address no packet is sent to: connecting a UDP socket to it only asks the kernel which local address routes
#: to the network (TEST-NET-1, RFC 5737)
PROBE = ("192.0.2.1", 9)
#: a path component that still holds a %XX after the one decoding: encoded twice (``%252e``), never a bundle name
ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
#: (pattern, browser) in order: Edge, Opera and Samsung Internet say "Chrome" too; Chrome says "Safari" too
BROWSERS = ((r"Edg(?:A|iOS)?/(\d+)", "Edge"), (r"OPR/(\d+)", "Opera"), (r"SamsungBrowser/(\d+)", "Samsung Internet"),
            (r"(?:Firefox|FxiOS)/(\d+)", "Firefox"), (r"HeadlessChrome/(\d+)", "HeadlessChrome"),
            (r"(?:Chrome|CriOS)/(\d+)", "Chrome"), (r"Version/(\d+)[\d.]*(?: Mobile/\S+)? Safari/", "Safari"))
SYSTEMS = ((r"Android", "Android"), (r"iPhone|iPad|iPod", "iOS"), (r"CrOS", "ChromeOS"), (r"Windows", "Windows"),
           (r"Macintosh|Mac OS X", "macOS"), (r"Linux", "Linux"))


def device_name(user_agent: str) -> tuple[str, str]:
    """``("Chrome 131 on Android", "Android")``: the browser, its major version and the system a user agent names
    (``"a browser on an unknown system"`` parts when it names none we know)."""
    browser = next((f"{name} {m.group(1)}" for pat, name in BROWSERS if (m := re.search(pat, user_agent))),
                   "Unknown browser")
    system = next((name for pat, name in SYSTEMS if re.search(pat, user_agent)), "unknown system")
    return f"{browser} on {system}", system


def lan_address(bind: str | None) -> str:
    """The IPv4 address to serve on: ``bind`` when given (checked), else the address this host reaches its local
    network from (no packet is sent to find it)."""
    if bind is not None:
        try:
            addr = ipaddress.IPv4Address(bind)
        except ValueError:
            raise PipelineError(f"--bind {bind!r} is not an IPv4 address (like 192.168.1.20); give this host's "
                                "address on the network the phone is on (`ip -4 addr` lists them).") from None
        if addr.is_unspecified or addr.is_multicast:
            raise PipelineError(f"--bind {bind} is not one address the phone can reach (every request must name the "
                                "address it was sent to, which stops DNS rebinding); give this host's address on the "
                                "phone's network (`ip -4 addr` lists them).")
        return str(addr)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(PROBE)
            addr = s.getsockname()[0]
    except OSError as e:
        raise PipelineError(f"This host has no route to a local network ({e.strerror or e}), so there is no address "
                            "a phone could reach; connect it to the phone's network, or give the address with "
                            "--bind ADDR.") from None
    return addr


def qr_text(url: str) -> str | None:
    """``url`` as a QR code drawn with block characters (segno: pure Python, no dependencies), or None when segno
    is not installed."""
    try:
        import segno
    except ImportError:
        return None
    import io

    out = io.StringIO()
    segno.make(url, error="m").terminal(out=out, compact=True)
    return out.getvalue()


@dataclass(frozen=True)
class Reference:
    """The run's reference on the test set: the images the page classifies and what PyTorch made of them."""

    pixels: np.ndarray  # (N, 28, 28) uint8, MNIST's own bytes
    labels: np.ndarray  # (N,) int
    logits: np.ndarray  # (N, classes) float32, the checkpoint in PyTorch


def reference(run, raw: Path, report: dict) -> Reference:
    """PyTorch's logits on the MNIST test set in ``raw``, from the run's checkpoint (as the jetson bundle's
    ``reference.npz`` is made), refused unless they reproduce the report's reference accuracy exactly."""
    from pipeline.dataset import read_test_set
    from pipeline.store import checkpoint

    from ..variants import REFERENCE

    images, labels = read_test_set(raw)
    labels = labels.astype(np.int64)
    logits = checkpoint.reference_logits(checkpoint.load(run.checkpoint), images)
    want = next((r["accuracy"] for r in report.get("variants", []) if r.get("name") == REFERENCE), None)
    acc = float((logits.argmax(1) == labels).mean())
    if not np.isfinite(logits).all() or acc != want:
        raise PipelineError(f"The checkpoint's logits on the test set give accuracy {acc!r}, but the report says "
                            f"{REFERENCE} reached {want!r}, so a device's figures could not be judged like the report's; "
                            "rerun `pipeline run all --force`.")
    return Reference(images, labels, logits.astype(np.float32))


def browser_variant(entry: dict) -> str:
    """The report row a bundle model is measured as in a browser: ``web-wasm-fp32`` for ``models/model-fp32.onnx``."""
    from .. import variants

    file = Path(entry["file"]).name
    return next((v.name for v in variants.VARIANTS if v.backend == variants.BROWSER and v.file == file),
                f"web-{entry.get('variant', Path(file).stem)}")


def check_post(data, models: dict[str, int], images: int) -> str | None:
    """Why a phone's post cannot be judged (None when it can): :func:`pipeline.browser.check_result`'s shape, and
    stricter than the build host's own browser, since a device's result is recorded as it is: every logit a finite
    number (the page writes NaN as null), exactly ``SPEC["rounds"]`` rounds of batch-1 timings, each call between
    0 and ``MAX_CALL_MS`` ms and no round of all zeros (a clock that never ticked), and a user agent."""
    from pipeline.measure.browser import check_result

    problem = check_result(data, models, images, SPEC["batches"])
    if problem or "error" in data:
        return problem
    for key, r in data["results"].items():
        if any(v is None for v in r["logits"]):
            return f"{key}: a logit is NaN or infinite"
        for b, rounds in r["times"].items():
            if (len(rounds) != SPEC["rounds"] or not all(isinstance(t, list) and t for t in rounds)
                    or not all(type(v) in (int, float) and 0 <= v <= MAX_CALL_MS for t in rounds for v in t)):
                return (f"{key}: the timings at batch {b} must be {SPEC['rounds']} rounds of calls between 0 and "
                        f"{MAX_CALL_MS:g} ms")
            if not all(sum(t) > 0 for t in rounds):
                return f"{key}: a round at batch {b} timed every call as 0 ms (the page's clock did not tick)"
    ua = data.get("userAgent")
    if not isinstance(ua, str) or not ua.strip() or len(ua) > UA_CHARS or not ua.isprintable():
        return f"userAgent must be printable text of 1 to {UA_CHARS} characters"
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class Judge:
    """``POST result``: a phone's measurement, checked, judged like the report's ``web-wasm-*`` rows, recorded.

    Several phones may post, one after another (a lock: each post's judging holds tens of MB of parsed JSON); each is
    recorded under its own device name, a device measured again replaces its earlier recording."""

    def __init__(self, run_dir: Path, bundle_folder: Path, ref: Reference, report: dict, name: str | None = None):
        from pipeline.store.paths import sha256_file

        self.run_dir, self.ref, self.name = Path(run_dir), ref, name
        manifest = json.loads((bundle_folder / "MANIFEST.json").read_text())
        from pipeline.bundle import layout

        # the served models' SHA-256s: a rerun that changes a model marks this recording stale (store.devices.is_stale)
        files = {rel: sha for rel, sha in (manifest.get("files") or {}).items() if rel.startswith(layout.MODELS + "/")}
        self.bundle = {"manifest_sha256": sha256_file(bundle_folder / "MANIFEST.json"), "model": manifest.get("model"),
                       "files": files}
        entries = json.loads((bundle_folder / "preprocessing.json").read_text())["models"]
        self.models = {key: len(e["classes"]) for key, e in entries.items()}
        self.variants = {key: browser_variant(e) for key, e in entries.items()}
        rows = {r["name"]: r for r in report.get("variants", [])}
        # the report's browser row of the file when it was measured (validate --browser), else its Python row
        self.rows = {key: rows.get(self.variants[key]) or rows.get(e.get("variant")) for key, e in entries.items()}
        self.max_bytes = (1 << 20) + 32 * len(ref.pixels) * sum(self.models.values()) + \
            32 * SPEC["iterations"] * SPEC["rounds"] * len(SPEC["batches"]) * len(self.models)
        self._lock = threading.Lock()

    def route(self) -> serve.Route:
        return serve.Route(self.accept, self.max_bytes)

    def accept(self, body: bytes) -> tuple[int, str]:
        try:
            data = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError included
            return self._refuse(f"not JSON ({type(e).__name__})")
        problem = check_post(data, self.models, len(self.ref.pixels))
        if problem:
            return self._refuse(problem)
        if "error" in data:
            text = " ".join(data["error"].split())[:2000]
            log.warning("the phone page could not measure: %s", text)
            return HTTPStatus.UNPROCESSABLE_ENTITY, f"nothing recorded: the page could not measure ({text})"
        with self._lock:
            measurement = self.judge(data)
            from pipeline.store.devices import record

            try:
                path = record(self.run_dir, measurement)
            except PipelineError as e:
                return self._refuse(str(e))
        lines = [f"recorded as {measurement['name']} ({path.name})"] + [
            f"{v}: accuracy {100 * f['accuracy']:.2f} %, agreement {f['agreement']:.4f}, "
            f"p50 {f['latency_ms']['1']['p50']:.3f} ms at batch 1, equals the report: "
            + ("yes" if f["equals_report"] else f"NO (flipped: {f['flipped'][:20]})")
            for v, f in measurement["variants"].items()]
        for line in lines:
            log.info("device: %s", line)
        return HTTPStatus.OK, "\n".join(lines)

    def _refuse(self, why: str) -> tuple[int, str]:
        log.warning("device: a post was refused, nothing recorded: %s", why)
        return HTTPStatus.BAD_REQUEST, f"nothing recorded: {why}"

    def judge(self, data: dict) -> dict:
        """The measurement dict of notes/DEVICES.md for a post that :func:`check_post` passed."""
        from runtime.bench import combine_rounds

        from pipeline.bundle import ort_web
        from pipeline.measure.compare import compare

        ua = data["userAgent"]
        name, system = device_name(ua)
        out = {}
        for key, r in data["results"].items():
            logits = np.asarray(r["logits"], np.float64).astype(np.float32).reshape(len(self.ref.pixels), -1)
            f = compare(logits, self.ref.logits, self.ref.labels)
            lat = {b: combine_rounds(t, int(b)) for b, t in r["times"].items()}
            row = self.rows[key] or {}
            out[self.variants[key]] = {
                "accuracy": f["accuracy"], "agreement": f["agreement"], "flipped": f["flips"],
                "max_abs_logit_diff": f["max_abs_diff"],
                "latency_ms": {b: {"p50": s.p50_ms, "p90": s.p90_ms, "p99": s.p99_ms} for b, s in lat.items()},
                "throughput_ips": {b: s.throughput_per_s for b, s in lat.items()},
                "equals_report": bool(row) and (f["accuracy"], f["agreement"], f["flips"])
                == (row.get("accuracy"), row.get("agreement"), row.get("flips")),
            }
        return {"schema": 1, "name": self.name or name, "source": "browser", "target": "browser",
                "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "bundle": self.bundle,
                "device": {"os": system, "user_agent": ua,
                           "runtimes": {"onnxruntime-web": ort_web.VERSION, "browser": name.split(" on ")[0]}},
                "variants": out}


class Handler(serve.Handler):
    """:class:`pipeline.serve.Handler` behind the token: ``/TOKEN/...`` is the bundle (or the page's own files);
    anything else is 403, or 404 when its path could never be served (``..`` in any encoding, encoded twice, a
    backslash, a hidden name: :func:`pipeline.serve._safe_parts`), whatever the token."""

    server: "PhoneServer"

    def parse_request(self) -> bool:
        if not super().parse_request():  # method, headers and Host: answered already
            return False
        words = self.requestline.split()
        target = words[1] if len(words) >= 2 else self.path  # as sent: http.server folds a leading "//" into "/"
        parts = serve._safe_parts(target)
        if parts is None or any(ENCODED.search(p) for p in parts):  # "..", in any encoding, or encoded twice
            self.send_error(HTTPStatus.NOT_FOUND)
            return False
        first, slash, rest = serve._path_of(self.path)[1:].partition("/")
        if not secrets.compare_digest(first.encode("utf-8", "replace"), self.server.token.encode()):
            self.send_error(HTTPStatus.FORBIDDEN, "this server answers only URLs with its token")
            return False
        if not slash:  # "/TOKEN": the page's relative links need the folder form
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", f"/{first}/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.path = "/" + (rest or "phone.html")  # the token's root is the "measure this device" page
        return True

    def _file(self, body: bool) -> None:
        page = self.server.pages.get(self.path[1:])
        if page is None:
            super()._file(body)
            return
        self.server.answering(self.connection)
        data, kind = page
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)


class PhoneServer(serve.Server):
    """The web bundle on ``host:port`` behind a token, with the phone page; :meth:`prepare` adds the page, the test
    images and the judging route once the bundle is built and checked (the port is bound first)."""

    def __init__(self, folder: Path, port: int, host: str):
        from pipeline.measure.browser import ISOLATION

        super().__init__(folder, port, host=host, limits=LIMITS, token=secrets.token_urlsafe(16),
                         extra_headers=ISOLATION)
        self.RequestHandlerClass = Handler
        self.pages: dict[str, tuple[bytes, str]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}/{self.token}/"

    def prepare(self, run, raw: Path, name: str | None = None) -> Judge:
        """Read the run's report and reference, and make the page's files and the judging route."""
        from pipeline.store.paths import RunDir

        run = run if isinstance(run, RunDir) else RunDir(Path(run))
        try:
            report = json.loads(run.report_json.read_text())
        except (OSError, ValueError) as e:
            raise PipelineError(f"{run.report_json} cannot be read ({type(e).__name__}), so a device's figures "
                                "cannot be compared with it; rerun `pipeline run all`.") from None
        judge = Judge(run.root, self.folder, reference(run, raw, report), report, name)
        spec = {**SPEC, "models": list(judge.models)}
        pages = {name: ((PAGE_FILES / src).read_bytes(), serve.TYPES[Path(name).suffix]) for name, src in PAGES.items()}
        pages["phone.json"] = (json.dumps(spec).encode(), "application/json")
        pages["test-images.u8"] = (np.ascontiguousarray(judge.ref.pixels).tobytes(), "application/octet-stream")
        clash = [n for n in pages if (self.folder / n).exists()]
        if clash:
            raise PipelineError(f"The web bundle {self.folder} holds {', '.join(clash)}, the names of the phone "
                                "page's own files; rebuild it with `pipeline bundle --target web`.")
        self.pages = pages
        self.routes["/result"] = judge.route()
        return judge
