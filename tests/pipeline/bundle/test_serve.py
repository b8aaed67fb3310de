"""pipeline.bundle.serve, the one local server (of `pipeline demo` and of the validate stage's measuring page), attacked
from a second local process: the server runs in a child process (tests/fixtures/serve_child.py, or the real
`pipeline demo`), and this test process sends raw bytes. Every answer is a 4xx (or the real page), the server never
prints a traceback, and it serves the real page after each attack."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.store.paths import RunDir
from tests.helpers import invoke
from tests.servers import (HIDDEN, INDEX, ODD, REPO, SECRET, TRAVERSALS, ServeChild, get, make_site,
                           make_web_bundle, post, request, serves_the_real_page)

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServeChild(make_site(tmp_path_factory.mktemp("serve"))) as child:
        yield child
        out, err = child.stop()
    assert "Traceback" not in err and err.strip() == "", err[-3000:]


def _refused(status, head, body, allowed=(400, 404)):
    assert status in allowed, (status, head)
    assert SECRET not in body and b"root:" not in body


def test_serves_the_page_with_its_type(server):
    status, head, body = get(server.port, "/index.html")
    assert status == 200 and body == INDEX and b"Content-Type: text/html" in head and b"nosniff" in head
    assert get(server.port, "/app.js")[1].count(b"text/javascript") == 1
    status, head, body = get(server.port, "/", method="HEAD")
    assert status == 200 and body == b"" and f"Content-Length: {len(INDEX)}".encode() in head
    assert get(server.port, "/", host=f"localhost:{server.port}")[0] == 200


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_in_any_encoding_is_refused(server, target):
    _refused(*get(server.port, target))
    assert serves_the_real_page(server.port)


@pytest.mark.parametrize("target", HIDDEN)
def test_symlinks_hidden_files_temp_leftovers_folders_and_fifos_are_404(server, target):
    _refused(*get(server.port, target), allowed=(404,))
    assert serves_the_real_page(server.port)


@pytest.mark.parametrize("target", ODD)
def test_nul_and_control_bytes_in_the_url_are_refused(server, target):
    status, head, body = get(server.port, target)
    _refused(status, head, body)
    assert b"Set-Cookie" not in head
    assert serves_the_real_page(server.port)


@pytest.mark.parametrize("raw", [b"GET /ind\x00ex.html HTTP/1.0\r\nHost: H\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00",
                                 b"GET\r\n\r\n", b"GET / HTTP/1.0 extra\r\nHost: H\r\n\r\n", b"\xff\xfe / HTTP/1.0\r\n\r\n",
                                 b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n",
                                 b"GET / HTTP/1.0\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
                                 b"GET / HTTP/1.0\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", b"\r\n\r\n",
                                 b"GET / HTTP/1.0\r\nHost: H\r\nnocolon\r\n\r\n"],
                         ids=["raw NUL", "TLS hello", "no target", "four words", "binary method", "70 kB URL",
                              "200 headers", "70 kB header", "empty lines", "header without colon"])
def test_odd_bytes_in_the_request_are_4xx(server, raw):
    status, head, body = request(server.port, raw.replace(b"Host: H", f"Host: 127.0.0.1:{server.port}".encode()))
    assert status is None or 400 <= status < 500, head  # None: the server closed an empty request
    assert INDEX not in body
    assert serves_the_real_page(server.port)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1.nip.io:{port}",
                                  "", "127.0.0.1:{port}\x00x", "localhost.:{port}", None, "twice"])
def test_a_host_that_is_not_the_bound_address_is_400(server, host):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 still sends its own Host."""
    if host is None:
        r = request(server.port, b"GET / HTTP/1.0\r\n\r\n")
    elif host == "twice":
        r = get(server.port, "/", extra=f"Host: 127.0.0.1:{server.port}\r\n")
    else:
        r = get(server.port, "/", host=host.format(port=server.port))
    _refused(*r, allowed=(400,))
    assert serves_the_real_page(server.port)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "BREW", "get", "PROPFIND"])
def test_other_methods_are_405(server, method):
    _refused(*get(server.port, "/index.html", method=method), allowed=(405,))
    assert serves_the_real_page(server.port)


def test_a_post_needs_the_token_and_a_bounded_body(server):
    assert post(server.port, "/result", b"{}", None)[0] == 403
    assert post(server.port, "/result", b"{}", "guess")[0] == 403
    # one character off (the token may itself end in "A": then "B")
    assert post(server.port, "/result", b"{}", server.token[:-1] + ("B" if server.token.endswith("A") else "A"))[0] == 403
    assert post(server.port, "/other", b"{}", server.token)[0] == 404
    assert post(server.port, "/result", b"{}", server.token, length="")[0] == 411  # no Content-Length
    assert post(server.port, "/result", b"{}", server.token, length="-1")[0] == 411
    assert post(server.port, "/result", b"{}", server.token, length="1e3")[0] == 411
    assert post(server.port, "/result", b"", server.token, length="", extra="Transfer-Encoding: chunked\r\n")[0] == 411
    assert post(server.port, "/result", b"x" * 10, server.token, length=str(10 ** 12))[0] == 413
    assert post(server.port, "/result", b"x" * 2000, server.token)[0] == 413
    assert post(server.port, "/result", b'{"ok": 1}', server.token)[0] == 204  # the one that is accepted
    assert serves_the_real_page(server.port)


def test_a_half_sent_request_or_body_is_cut_off(server):
    """Slowloris: half a request line, then nothing; and a POST whose body never comes. The server closes both
    (its deadline in the child is 1 s; this client would wait 60 s)."""
    for data in (b"GET /index.html HT", f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{server.port}\r\nX-A: b".encode(),
                 f"POST /result HTTP/1.0\r\nHost: 127.0.0.1:{server.port}\r\nX-Pipeline-Token: {server.token}\r\n"
                 "Content-Length: 100\r\n\r\n{".encode()):
        status, _, body = request(server.port, data, timeout=60, shut=False)  # returns once the server closes
        assert status in (None, 400, 408) and body in (b"",) or status == 400
    assert serves_the_real_page(server.port)


def test_a_client_trickling_one_byte_at_a_time_is_cut_off(server):
    """A per-read socket timeout would let this client hold a thread for ever (each byte comes well within it); the
    request deadline (1 s in the child) closes the connection while the client is still sending (for 10 s)."""
    import select

    closed = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        for _ in range(200):
            try:
                s.sendall(b"X")
                if select.select([s], [], [], 0)[0]:
                    s.recv(100)  # b"" (closed) or an error page: either way the server ended it
                    closed = True
            except OSError:  # reset
                closed = True
            if closed:
                break
            time.sleep(0.05)
    assert closed
    assert serves_the_real_page(server.port)


def test_300_idle_connections_do_not_hold_300_threads(server):
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        threads = server.threads()
        assert threads <= 8 + 4, threads  # the cap (8 in the child) plus the main, serving and watchdog threads
        statuses = set()
        for s in socks[-50:]:  # the ones past the cap were answered at once
            s.settimeout(30)
            statuses.add(s.recv(64)[:12])
        assert b"HTTP/1.0 503" in statuses
    finally:
        for s in socks:
            s.close()
    for _ in range(100):  # the held ones are cut off by the deadline, then the page is served again
        if serves_the_real_page(server.port):
            break
        time.sleep(0.2)
    assert serves_the_real_page(server.port)


# ------------------------------------------------------------------------------------------ pipeline demo
def _demo(artifacts, model="edgenet"):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--port", "0", "--model", model,
                             "--artifacts", str(artifacts)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port_of(proc) -> int:
    seen = []
    while True:
        line = proc.stderr.readline()
        seen.append(line)
        assert line, "".join(seen)
        if "serving:" in line:
            return int(line.split("http://127.0.0.1:")[1].split("/")[0])


@pytest.mark.parametrize("model", ["edgenet", "tests.fixtures.user_models:TinyNet"])
def test_demo_serves_a_verified_bundle_to_its_own_host_only(tmp_path, model):
    """The bundle folder is named by one function (RunDir.bundle), so a pkg.mod:Class model is served from the
    folder its bundle was built in; after serving starts, a symlink or hidden file dropped in is still not served."""
    folder = make_web_bundle(RunDir.for_model(tmp_path, model).bundle(tmp_path / "bundles", "web"))
    proc = _demo(tmp_path, model)
    try:
        port = _port_of(proc)
        assert serves_the_real_page(port)
        os.symlink("/etc/passwd", folder / "passwd.html")
        (folder / ".env").write_text("SECRET=1")
        for target in ("/passwd.html", "/.env", "/%2e%2e/%2e%2e/etc/passwd", "/index.html%00"):
            _refused(*get(port, target))
        _refused(*get(port, "/", host="evil.example"), allowed=(400,))
        _refused(*post(port, "/", b"{}", None), allowed=(403,))
        assert serves_the_real_page(port)
    finally:
        proc.send_signal(signal.SIGTERM)  # handled like Ctrl-C: "stopped.", exit 0
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped." in out + err and "Traceback" not in out + err, err


@pytest.mark.parametrize("damage", ["altered", "extra file", "symlink", "no manifest"])
def test_demo_refuses_a_bundle_that_fails_verify(tmp_path, damage):
    folder = make_web_bundle(RunDir.for_model(tmp_path, "edgenet").bundle(tmp_path / "bundles", "web"))
    if damage == "altered":
        (folder / "index.html").write_text("<script>steal()</script>")
    elif damage == "extra file":
        (folder / "evil.js").write_text("steal()")
    elif damage == "symlink":
        os.symlink("/etc/passwd", folder / "passwd.txt")
    else:
        (folder / "MANIFEST.json").unlink()
    r = invoke("demo", "--port", "0", "--artifacts", tmp_path)
    assert r.exit_code == 2 and "is not an intact web bundle, so it is not served" in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 3 and "Traceback" not in r.output  # one paragraph (wrapped)
