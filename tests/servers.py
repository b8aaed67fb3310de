"""Shared by the server tests (tests/pipeline/bundle/test_serve.py) and their hostile-sweep cases (tests/hostile_servers.py):
a hostile site folder, a real server in a child process, and a raw-socket client that sends exactly the bytes given."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INDEX = b"<!doctype html><title>the real page</title>\n"
SECRET = b"root:x:0:0:outside-the-folder secret\n"
#: request targets that reach outside the folder in some encoding, things in it never served, odd bytes in the URL
TRAVERSALS = ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
              "/..%2f..%2f..%2fetc/passwd", "/models/..%2f..%2f..%2f..%2fetc/passwd", "/%252e%252e/%252e%252e/etc/passwd",
              "/.%2e/.%2e/etc/passwd", "//etc/passwd", "/..\\..\\etc\\passwd", "/%5c..%5c..%5cetc%5cpasswd",
              "/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", "/models/../../outside/secret.txt", "/../outside/secret.txt",
              "http://127.0.0.1/etc/passwd", "*"]
HIDDEN = ["/out.txt", "/linkdir/secret.txt", "/inside.html", "/models/passwd.onnx", "/.secret", "/.git/config",
          "/.index.html.x1y2z3.tmp", "/notes.tmp", "/index.html~", "/.edgenet-web-bundle.ab12cd.tmp/index.html",
          "/models/", "/models", "/pipe", "/nothing.html"]
ODD = ["/index.html%00", "/ind%00ex.html", "/%ff%fe", "/index.html%0d%0aSet-Cookie:%20x=1", "/%01", "/a%7f"]


def make_site(root: Path) -> Path:
    """``root/site``: the real page plus everything a server must not serve, and ``root/outside/secret.txt``."""
    site, outside = root / "site", root / "outside"
    for d in (site / "models", site / ".git", site / ".edgenet-web-bundle.ab12cd.tmp", outside):
        d.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (site / "index.html").write_bytes(INDEX)
    (site / "app.js").write_text("export const x = 1;\n")
    (site / "models" / "m.onnx").write_bytes(b"\x08\x01onnx")
    for name in (".secret", ".index.html.x1y2z3.tmp", "notes.tmp", "index.html~", ".git/config",
                 ".edgenet-web-bundle.ab12cd.tmp/index.html"):
        (site / name).write_bytes(SECRET)
    os.symlink(outside / "secret.txt", site / "out.txt")
    os.symlink(outside, site / "linkdir")
    os.symlink("index.html", site / "inside.html")
    os.symlink("/etc/passwd", site / "models" / "passwd.onnx")
    os.mkfifo(site / "pipe")
    return site


def make_web_bundle(folder: Path) -> Path:
    """The smallest folder `pipeline verify` passes: index.html and a MANIFEST.json recording its hash."""
    from pipeline.bundle.build import FORMAT

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_bytes(INDEX)
    (folder / "MANIFEST.json").write_text(json.dumps(
        {"format": FORMAT, "files": {"index.html": hashlib.sha256(INDEX).hexdigest()}}))
    return folder


def request(port: int, data: bytes, timeout: float = 30, shut: bool = True) -> tuple[int | None, bytes, bytes]:
    """Send ``data`` as is; return (status or None when no status line came, header bytes, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None
    return status, head, body


def get(port: int, target: str, host: str | None = None, method: str = "GET", extra: str = "") -> tuple:
    host = f"127.0.0.1:{port}" if host is None else host
    return request(port, f"{method} {target} HTTP/1.0\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1"))


def post(port: int, target: str, body: bytes, token: str | None, extra: str = "", length: str | None = None):
    head = f"POST {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    if token is not None:
        head += f"X-Pipeline-Token: {token}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n" if length != "" else ""
    return request(port, (head + extra + "\r\n").encode("latin-1") + body)


def serves_the_real_page(port: int) -> bool:
    status, _, body = get(port, "/")
    return status == 200 and body == INDEX


class ServeChild:
    """tests/fixtures/serve_child.py on ``site`` in a child process (``with``: started, then stopped)."""

    def __init__(self, site: Path) -> None:
        self.site = site

    def __enter__(self) -> "ServeChild":
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fixtures.serve_child", str(self.site)], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {self.proc.stderr.read()[-2000:]}")
        self.port, self.token = int(line[0]), line[1]
        return self

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def stop(self) -> tuple[str, str]:
        """Stop the server; return its (stdout, stderr) after the first line."""
        if not hasattr(self, "_out"):
            try:
                self._out = self.proc.communicate(input="", timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self._out = self.proc.communicate()
        return self._out

    def __exit__(self, *exc) -> None:
        self.stop()
