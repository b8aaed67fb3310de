"""Hostile-sweep cases for issue 21's classes 1, 2 and 5 (tests/hostile_sweep.py extends its cases with these):

* the local servers (:mod:`pipeline.bundle.serve`, as `pipeline demo` and the measuring page run it): traversal in every
  encoding, symlinks, hidden and temp files, listings, fifos, NUL and control bytes, odd Host headers, methods,
  malformed request lines, slow and idle clients, and every kind of bad POST to the measuring page's ``/result``;
* `pipeline demo` on a bundle that fails `pipeline verify`;
* output files that are not ours to replace (`bench --json` to a fifo, a device, a symlink, a folder, a socket);
* SIGTERM / SIGHUP / SIGKILL during `pipeline bundle`.

A server case raises :class:`PipelineError` naming the status when the server refused (the sweep's ``refuse``),
returns when it served what it must not (counted as a silent wrong result), and raises ``RuntimeError`` (counted as
a traceback) when the server logged a failure, stopped serving the real page, or kept a result it should not have.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.hostile_sweep import Case, Env
from tests.servers import HIDDEN, ODD, SECRET, TRAVERSALS, make_site, make_web_bundle, request, serves_the_real_page

SITE = "srv"


class _Failures(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _serving(env: Env, routes=None, limits=None):
    from pipeline.bundle.serve import Limits, Server

    server = Server(env.ws / SITE / "site", 0, routes=routes, limits=limits or Limits(read_s=1.0, idle_s=1.0,
                                                                                    connections=8))
    server.open_folder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _judge(server, failures, status, body, refused=range(400, 500)):
    """Raise for a refusal (PipelineError), a broken server (RuntimeError); return for a wrong success."""
    from pipeline.errors import PipelineError

    if failures.records:
        raise RuntimeError(f"Traceback-like server failure: {failures.records}")
    if not serves_the_real_page(server.server_address[1]):
        raise RuntimeError("the server stopped serving the real page")
    if SECRET in body:
        return  # served what it must not: a silent wrong result
    if status is None or status in refused:
        raise PipelineError(f"the server refused with {status}")
    # anything else (a 200 of something, a 5xx) is wrong
    if status >= 500:
        raise RuntimeError(f"the server answered {status}")


def _http(raw_of, routes_of=None, refused=range(400, 500), check=None):
    """A case action: serve the case's site, send ``raw_of(port, token)``, judge the answer."""
    def action(env: Env):
        failures = _Failures()
        log = logging.getLogger("pipeline.bundle.serve")
        log.addHandler(failures)
        state = routes_of() if routes_of else None
        server = _serving(env, routes=state[0] if state else None)
        try:
            port = server.server_address[1]
            status, _, body = raw_of(port, server.token)
            if check and state:
                check(state[1])  # e.g. the measuring inbox kept nothing
            _judge(server, failures, status, body, refused)
        finally:
            log.removeHandler(failures)
            server.shutdown()
            server.server_close()
    return action


def _get(target, host="127.0.0.1:{port}", method="GET", extra=""):
    return lambda port, token: request(port, f"{method} {target} HTTP/1.0\r\nHost: {host.format(port=port)}\r\n{extra}"
                                             "\r\n".encode("latin-1"))


def _raw(data: bytes):
    return lambda port, token: request(port, data.replace(b"{port}", str(port).encode()))


def _measuring():
    from pipeline.measure.browser import Inbox

    inbox = Inbox({"model-fp32": 10}, 3, (1, 8), 20)
    return {"/result": inbox.route()}, inbox


def _post(body: bytes, token="{token}", length=None, extra=""):
    def send(port, real):
        head = f"POST /result HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        if token is not None:
            head += f"X-Pipeline-Token: {token.format(token=real)}\r\n"
        if length != "":
            head += f"Content-Length: {len(body) if length is None else length}\r\n"
        return request(port, (head + extra + "\r\n").encode("latin-1") + body)
    return send


def _kept_nothing(inbox):
    if inbox.data is not None:
        raise RuntimeError("the measuring inbox kept a result it should have refused")


def _slow(port, token):
    """Half a request line, then silence: the server must close it (its deadline here is 1 s; we wait 60)."""
    return request(port, b"GET /index.html HT", timeout=60, shut=False)


def _idle_flood(port, token):
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(300)]
    try:
        first = socks[-1].recv(12)  # past the cap of 8: answered at once
    finally:
        for s in socks:
            s.close()
    for _ in range(100):
        if serves_the_real_page(port):
            break
        time.sleep(0.1)
    return (503 if first.startswith(b"HTTP/1.0 503") else None), b"", b""


def _fake_result(n=3, classes=10, logits=None, times=None):
    import json

    return json.dumps({"results": {"model-fp32": {
        "logits": [0.5] * (n * classes) if logits is None else logits,
        "times": {"1": [0.2], "8": [0.4]} if times is None else times}}}).encode()


# ------------------------------------------------------------------------------------------ output paths, signals
def _out_setup(kind):
    from tests.helpers import make_path_of_kind

    return lambda env: make_path_of_kind(env.ws / "out.json", kind)


def _bundle_signal(sig):
    def action(env: Env):
        from pipeline.bundle.build import make_bundle
        from pipeline.errors import PipelineError
        from pipeline.store.paths import RunDir

        out = env.ws / "out"
        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "bundle", "--target", "cpu", "--artifacts",
                                 str(env.art), "--out", str(out), "--data-root", str(env.data)], cwd=repo,
                                env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        def temps():
            return [p.name for p in out.iterdir() if p.name.endswith(".tmp")] if out.exists() else []

        # mid-build: a file is already inside the staging folder (the harness also sees leftover files)
        while not any(f.is_file() for t in temps() for f in (out / t).rglob("*")):
            if proc.poll() is not None:
                raise RuntimeError(f"the build ended before its temp folder was seen: {proc.communicate()}")
            time.sleep(0.005)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=100)
        if "Traceback" in stdout + stderr:
            raise RuntimeError(stderr[-1500:])
        if sig == signal.SIGKILL:  # the next build sweeps what the killed one left
            make_bundle(RunDir.for_model(env.art, "edgenet"), "cpu", out, env.data)
        if temps():
            raise RuntimeError(f"temp folders left in --out: {temps()}")  # counted by the sweep as a failure
        if sig == signal.SIGKILL:
            return
        if proc.returncode == 0:
            return  # a signal that did not stop the build would be wrong
        raise PipelineError(f"exit {proc.returncode}: {stderr.strip()}")
    return action


def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append
    site = lambda env: make_site(env.ws / SITE)  # noqa: E731
    for t in TRAVERSALS:
        add(Case("servers: traversal", f"GET {t}", _http(_get(t)), setup=site))
    for t in HIDDEN:
        add(Case("servers: not served", f"GET {t}", _http(_get(t), refused=(404,)), setup=site))
    for t in ODD:
        add(Case("servers: odd URL bytes", f"GET {t!r}", _http(_get(t)), setup=site))
    raws = {"raw NUL in the target": b"GET /ind\x00ex.html HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n",
            "TLS hello": b"\x16\x03\x01\x02\x00\x01\x00", "no target": b"GET\r\n\r\n",
            "four words": b"GET / HTTP/1.0 x\r\nHost: 127.0.0.1:{port}\r\n\r\n", "binary method": b"\xff\xfe / HTTP/1.0\r\n\r\n",
            "70 kB URL": b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",
            "200 headers": b"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
            "70 kB header": b"GET / HTTP/1.0\r\nX-L: " + b"a" * 70000 + b"\r\n\r\n", "HTTP/0.9": b"GET /\r\n\r\n",
            "header without colon": b"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nnocolon\r\n\r\n"}
    for name, data in raws.items():
        add(Case("servers: odd request", name, _http(_raw(data)), setup=site))
    for host in ("evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1.nip.io:{port}", "", "[::1]:{port}",
                 "127.0.0.1:{port}\x00x", "localhost.:{port}", "127.0.0.1:{port}@evil.example"):
        add(Case("servers: Host", f"Host {host!r}", _http(_get("/", host=host), refused=(400,)), setup=site))
    add(Case("servers: Host", "two Host headers", _http(_get("/", extra="Host: evil.example\r\n"), refused=(400,)),
             setup=site))
    add(Case("servers: Host", "no Host header", _http(_raw(b"GET / HTTP/1.0\r\n\r\n"), refused=(400,)), setup=site))
    for m in ("PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "BREW", "get", "PROPFIND"):
        add(Case("servers: method", m, _http(_get("/index.html", method=m), refused=(405,)), setup=site))
    add(Case("servers: slow", "half a request line, then silence", _http(_slow, refused=(None, 400, 408)), setup=site))
    add(Case("servers: slow", "300 idle connections", _http(_idle_flood, refused=(503,)), setup=site))

    # the measuring page's POST /result (the inbox of pipeline.measure.browser, served as measure() serves it)
    posts = {
        "no token": _post(_fake_result(), token=None), "empty token": _post(_fake_result(), token=""),
        "wrong token": _post(_fake_result(), token="x" * 43),
        "token in the query": lambda port, t: request(port, f"POST /result?token={t} HTTP/1.0\r\nHost: 127.0.0.1:"
                                                            f"{port}\r\nContent-Length: 2\r\n\r\n{{}}".encode()),
        "{}": _post(b"{}"), "[]": _post(b"[]"), "null": _post(b"null"), "not JSON": _post(b"{not json"),
        "not UTF-8": _post(b"\xff\xfe\x00"), "NaN literal": _post(_fake_result().replace(b"0.5", b"NaN", 1)),
        "wrong-length logits": _post(_fake_result(logits=[0.5] * 29)),
        "string logit": _post(_fake_result(logits=["x"] + [0.5] * 29)),
        "bool logit": _post(_fake_result(logits=[True] + [0.5] * 29)),
        "negative time": _post(_fake_result(times={"1": [-1], "8": [1]})),
        "wrong batch sizes": _post(_fake_result(times={"1": [1], "64": [1]})),
        "empty timings": _post(_fake_result(times={"1": [], "8": [1]})),
        "unknown model": _post(b'{"results": {"other": {"logits": [], "times": {}}}}'),
        "deep nesting": _post(b"[" * 200000),
        "huge integer": _post(_fake_result().replace(b"0.5", b"1" + b"0" * 400, 1)),
        "error not text": _post(b'{"error": {"x": 1}}'),
        "Content-Length 1 TB": _post(b"{}", length=str(10 ** 12)),
        "Content-Length negative": _post(b"{}", length="-5"),
        "no Content-Length": _post(b"{}", length=""),
        "chunked body": _post(b"2\r\n{}\r\n0\r\n\r\n", length="", extra="Transfer-Encoding: chunked\r\n"),
        "half-sent body": lambda port, t: request(port, f"POST /result HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
                                                        f"X-Pipeline-Token: {t}\r\nContent-Length: 500\r\n\r\n{{".encode(),
                                                  timeout=60, shut=False),
    }
    for name, send in posts.items():
        add(Case("servers: measuring POST", name, _http(send, routes_of=_measuring, check=_kept_nothing,
                                                        refused=(None, 400, 403, 411, 413)), setup=site))
    add(Case("servers: measuring POST", "the real result is kept", _http(
        lambda port, t: (lambda r: (r[0], r[1], r[2]))(_post(_fake_result())(port, t)), routes_of=_measuring,
        refused=()), setup=site, expect="ok"))

    # pipeline demo: a bundle that fails verify is never served
    web = lambda env: env.art / "bundles" / "edgenet-web-bundle"  # noqa: E731
    damage = {
        "altered index.html": lambda env: (make_web_bundle(web(env)), (web(env) / "index.html").write_text("x")),
        "a file not in the manifest": lambda env: (make_web_bundle(web(env)), (web(env) / "x.js").write_text("x")),
        "a symlink to /etc/passwd": lambda env: (make_web_bundle(web(env)), os.symlink("/etc/passwd", web(env) / "p")),
        "no MANIFEST.json": lambda env: (make_web_bundle(web(env)), (web(env) / "MANIFEST.json").unlink()),
        "a fifo": lambda env: (make_web_bundle(web(env)), os.mkfifo(web(env) / "pipe")),
    }
    for name, setup in damage.items():
        add(Case("servers: demo", f"bundle with {name}", ["demo", "--port", "0", "--artifacts", "{art}"], setup=setup))

    # output files that are not ours to replace
    fast = ["--batch", "1", "--duration", "0.05", "--warmup-seconds", "0", "--iterations", "3"]
    for kind in ("fifo", "symlink to stdout", "symlink to /dev/null", "symlink to a regular file", "dangling symlink",
                 "symlink to a folder", "folder", "socket"):
        add(Case("output paths", f"bench --json to a {kind}", ["bench", "{fp32}", *fast, "--json", "{ws}/out.json"],
                 setup=_out_setup(kind)))
    for dev in ("/dev/null", "/dev/stdout", "/proc/self/fd/1", "/dev/zero"):
        add(Case("output paths", f"bench --json {dev}", ["bench", "{fp32}", *fast, "--json", dev]))
    for kind in ("new file", "existing regular file"):
        add(Case("output paths", f"bench --json to a {kind}", ["bench", "{fp32}", *fast, "--json", "{ws}/out.json"],
                 setup=_out_setup(kind), expect="ok"))

    # signals during pipeline bundle
    add(Case("signals", "SIGTERM during bundle", _bundle_signal(signal.SIGTERM)))
    add(Case("signals", "SIGHUP during bundle", _bundle_signal(signal.SIGHUP)))
    add(Case("signals", "SIGKILL during bundle, then a rebuild", _bundle_signal(signal.SIGKILL), expect="ok"))
    return out
