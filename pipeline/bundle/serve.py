"""The one local HTTP server of the project: static files from one folder, plus the POST routes its owner adds.

Both servers use it: ``pipeline demo`` (the web bundle, :mod:`pipeline.bundle.demo`) and the validate stage's measuring
page (:mod:`pipeline.measure.browser`, which adds ``POST /result``). A port on 127.0.0.1 is open to every local process and,
through DNS rebinding, to every web page the user's browser visits, so the server trusts nothing it is sent:

* **only regular files that resolve inside the folder**: each path component is opened with ``O_NOFOLLOW``
  relative to the folder's descriptor (``openat``), so a symlink anywhere in the path, ``..``, an encoded ``..``
  and a race that swaps a folder for a link all end in 404; fifos, devices and sockets are never opened;
* **no hidden files, no leftovers, no listings**: a component starting with ``.`` (``.git``, the ``.<name>.<random>.tmp``
  of an unfinished write) or ending in ``.tmp`` or ``~`` is 404, and so is a folder (``/`` serves ``index.html``);
* **a per-run secret** (:func:`secrets.token_urlsafe`) in the ``X-Pipeline-Token`` header for every POST (403
  without); a custom header also keeps other web pages out: a browser sends it cross-origin only after a CORS
  preflight (``OPTIONS``), which is answered 405;
* **the Host header must name the bound address** (``127.0.0.1:PORT`` or ``localhost:PORT``), which stops DNS
  rebinding: a page of ``evil.example`` that rebinds its name to 127.0.0.1 still sends ``Host: evil.example``;
* **bounded time and size**: each connection has a deadline to deliver its request (:attr:`Limits.read_s`) and
  another to be answered (:attr:`Limits.total_s`), enforced by one watchdog thread that shuts the socket down (a
  per-operation socket timeout alone lets a client that sends one byte a second hold a thread for ever); at most
  :attr:`Limits.connections` handler threads exist at once, the next connection gets 503 from the accepting thread;
  a POST body needs a ``Content-Length`` within the route's cap (411/413 otherwise; no chunked bodies);
* **no request ends the run**: a malformed request is a 4xx; a bug in a handler is logged in one line (its traceback
  at debug level) and the server goes on.

Why the standard library's ``http.server`` and not a framework: the surface is two verbs on a static folder and one
JSON POST; aiohttp or starlette would add a dependency, an event loop and far more parsing to trust, for nothing
this module needs. ``http.server`` is a development server because its *file serving* follows symlinks, lists
folders and never times out: those parts are replaced here (only request-line and header parsing are reused), and
HTTP/1.0 (one request per connection) keeps the connection logic trivial.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import unquote_to_bytes

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Pipeline-Token"
#: MIME types browsers insist on for ES modules and streaming WebAssembly compilation, which ``mimetypes`` does not
#: always know; anything else is served as bytes
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".html": "text/html", ".htm": "text/html", ".css": "text/css",
         ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".txt": "text/plain", ".md": "text/plain", ".u8": "application/octet-stream"}


@dataclass(frozen=True)
class Limits:
    """How long and how much one connection may take (seconds, bytes, count)."""

    read_s: float = 10.0  # from accepting the connection to the end of the request (line, headers, body)
    total_s: float = 120.0  # from accepting the connection to the last byte of the answer (a 12 MB wasm file)
    connections: int = 32  # handler threads alive at once; more connections are answered 503 at once
    idle_s: float = 5.0  # per socket operation, a second line of defence behind the watchdog


@dataclass(frozen=True)
class Route:
    """A POST endpoint: ``accept(body: bytes) -> (status, message)``, called only with a valid token and a body of
    at most ``max_bytes``. The handler runs in a server thread; it must not raise (a raise becomes a 500)."""

    accept: Callable[[bytes], tuple[int, str]]
    max_bytes: int


def _path_of(target: str) -> str:
    """The path of a request target, without its query and fragment (``//x`` stays a path, not a host)."""
    return target.split("?", 1)[0].split("#", 1)[0]


def _safe_parts(target: str) -> list[str] | None:
    """The path components of a request target, or None when any is unsafe.

    Decoded once (``%2e%2e`` is ``..``; ``%252e`` stays ``%2e``, a literal name), as strict UTF-8; no component
    may be empty-but-inner, ``.``/``..``, hidden, a temp leftover, or hold a control character, a backslash or NUL."""
    if not target.startswith("/"):  # absolute-form (``http://host/x``) and ``*`` are not for an origin server
        return None
    try:
        path = unquote_to_bytes(_path_of(target)).decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return None
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts[-1] = "index.html"  # "/" and "/folder/": the index, never a listing
    for p in parts:
        if (not p or p.startswith(".") or p.endswith((".tmp", "~")) or "\\" in p
                or any(ord(c) < 32 or ord(c) == 127 for c in p)):
            return None
    return parts


def open_inside(root_fd: int, parts: list[str]) -> int | None:
    """A read-only descriptor of the regular file ``parts`` below the folder ``root_fd``, or None.

    Every component is opened relative to its parent's descriptor with ``O_NOFOLLOW``: a symlink at any depth fails
    (ELOOP/ENOTDIR), so the file reached is inside the folder however the path was spelled or the tree changed
    meanwhile. The last component is ``lstat``-ed before it is opened (a fifo or device is never opened) and
    ``fstat``-ed after (it may have been swapped in between)."""
    fds, fd = [], root_fd
    try:
        for name in parts[:-1]:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            fds.append(fd)
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            return None
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        if not stat.S_ISREG(os.fstat(f).st_mode):
            os.close(f)
            return None
        return f
    except (OSError, ValueError):  # ENOENT, ELOOP (a link), ENOTDIR, EACCES, ENAMETOOLONG; ValueError: NUL
        return None
    finally:
        for d in fds:
            os.close(d)


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD of safe static files and POST to the server's routes; everything else is a 4xx."""

    server: "Server"
    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive to bound
    server_version = "pipeline"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.limits.idle_s  # StreamRequestHandler applies it to the socket
        super().setup()

    def log_message(self, format, *args):  # noqa: A002 (the base class's name): quiet, the URL must stay visible
        pass

    def end_headers(self):
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in self.server.extra_headers.items():
            self.send_header(k, v)
        super().end_headers()

    def send_error(self, code, message=None, explain=None):
        # the base class would put ``message`` (which may quote the request) in the status line too
        self.close_connection = True
        super().send_error(code, None, message or "")  # the status line's reason is always the fixed phrase

    def parse_request(self) -> bool:
        if not super().parse_request():  # 400 / 414 / 431 / 505 already sent
            return False
        if self.command not in ("GET", "HEAD", "POST"):
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
            return False
        if self.headers.defects:  # a header line without a colon, a continuation line first...
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed header")
            return False
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or hosts[0].lower() not in self.server.hosts:
            self.send_error(HTTPStatus.BAD_REQUEST, "Host must name this server (127.0.0.1:PORT or localhost:PORT)")
            return False
        return True

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True  # the client left, or the watchdog shut a slow one out

    # ---------------------------------------------------------------- GET / HEAD
    def do_GET(self):  # noqa: N802 (http.server's names)
        self._file(body=True)

    def do_HEAD(self):  # noqa: N802
        self._file(body=False)

    def _file(self, body: bool) -> None:
        self.server.answering(self.connection)
        parts = _safe_parts(self.path)
        fd = open_inside(self.server.root_fd, parts) if parts else None
        if fd is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", TYPES.get(os.path.splitext(parts[-1])[1].lower(),
                                                       "application/octet-stream"))
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.flush()
                try:
                    self.connection.sendfile(f, 0, size)
                except (ConnectionError, TimeoutError, OSError):
                    self.close_connection = True

    # ---------------------------------------------------------------- POST
    def do_POST(self):  # noqa: N802
        given = self.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(given.encode("utf-8", "replace"), self.server.token.encode()):
            self.send_error(HTTPStatus.FORBIDDEN, "a POST needs this run's token")
            return
        route = self.server.routes.get(_path_of(self.path))
        if route is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        if "Transfer-Encoding" in self.headers:
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not a chunked body")
            return
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1 or not lengths[0].strip().isdigit():
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "one decimal Content-Length is required")
            return
        n = int(lengths[0])
        if n > route.max_bytes:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {route.max_bytes} bytes")
            return
        body = self.rfile.read(n)
        if len(body) != n:  # the client stopped sending (or the watchdog stopped it)
            self.close_connection = True
            return
        self.server.answering(self.connection)
        status, message = route.accept(body)
        if status >= 300:
            self.send_error(status, message)
            return
        body = message.encode("utf-8")  # a route may answer a short text (the phone page shows its verdict)
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    """A :class:`Handler` server for one folder, with the limits, token and routes of one run.

    Not serving until :meth:`serve_forever`; :meth:`server_close` also stops the watchdog."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, folder: Path, port: int = 0, *, limits: Limits = Limits(), routes: dict[str, Route] | None = None,
                 token: str | None = None, extra_headers: dict[str, str] | None = None, host: str = HOST):
        # ``host``: the IPv4 address to bind, 127.0.0.1 unless a caller serves the local network on purpose
        # (``pipeline demo --lan``, :mod:`pipeline.devices.phone`); requests must then name that address as Host
        self.host = host
        self.folder = Path(folder).resolve()
        self.limits, self.routes = limits, dict(routes or {})
        self.token = token or secrets.token_urlsafe(32)
        self.extra_headers = dict(extra_headers or {})
        self.root_fd: int | None = None
        self._slots = threading.BoundedSemaphore(limits.connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PipelineError(f"Port {port} on {host} is already in use (another `pipeline demo` or web server?); "
                                    "stop that one or choose another with `--port N` (`--port 0` picks a free one).") from None
            raise PipelineError(f"Cannot listen on {host}:{port} ({e.strerror or e}); choose another `--port`.") from None
        bound = self.server_address[1]
        names = {host, "localhost"} if host == HOST else {host}
        self.hosts = frozenset({f"{n}:{bound}" for n in names} | (names if bound == 80 else set()))
        self._watchdog = threading.Thread(target=self._watch, name="serve-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}/"

    def open_folder(self) -> None:
        """Open the folder (once it exists: ``pipeline demo`` binds the port before it builds the bundle)."""
        if self.root_fd is None:
            try:
                self.root_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise PipelineError(f"Cannot serve {self.folder}: {e.strerror or e}.") from None

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.open_folder()
        super().serve_forever(poll_interval)

    # ---------------------------------------------------------------- bounds
    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: answer from this thread, never start another
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.limits.read_s
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (out of threads): give the slot back; the caller closes it
            self._forget(request)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)
            self._slots.release()

    def answering(self, request) -> None:
        """The request was read in full: from now on only the answer's deadline applies."""
        with self._lock:
            if request in self._deadlines:
                self._deadlines[request] = time.monotonic() + self.limits.total_s - self.limits.read_s

    def _forget(self, request) -> None:
        with self._lock:
            self._deadlines.pop(request, None)

    def _watch(self) -> None:
        """Shut down every connection past its deadline (the handler thread then sees EOF or EPIPE and ends)."""
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                late = [s for s, t in self._deadlines.items() if t < now]
                for s in late:
                    self._deadlines[s] = float("inf")  # once
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        """A bug in a handler (a client dropping the connection is not one) is one log line; the server goes on."""
        import sys

        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return
        log.warning("a request to the local server failed (%s: %s); the server goes on", type(e).__name__, e)
        log.debug("request failure", exc_info=True)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None
