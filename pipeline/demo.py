"""``pipeline demo``: the web bundle served on 127.0.0.1 by the standard library's http.server.

Only what a static server must get right for the page is added: the MIME types browsers insist on for ES modules
(``.mjs``/``.js``: text/javascript) and for streaming WebAssembly compilation (``.wasm``: application/wasm), which
``mimetypes`` does not always know, and a quiet log (one line per request would bury the URL).
"""
from __future__ import annotations

import errno
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .errors import PipelineError

HOST = "127.0.0.1"
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".html": "text/html"}


class Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A browser that drops a connection mid-response (a reload, a closed tab) is normal for a page server; the
        base class would print a traceback for it. Anything else is still reported."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve(folder: Path, port: int) -> ThreadingHTTPServer:
    """A server bound to ``HOST:port`` for ``folder`` (not yet serving: call ``serve_forever``). The folder is read
    per request, so it may be built after the port is taken."""
    folder = Path(folder).resolve()
    handler = functools.partial(Handler, directory=str(folder))
    try:
        return Server((HOST, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PipelineError(f"Port {port} on {HOST} is already in use (another `pipeline demo` or web server?); "
                                "stop that one or choose another with `--port N` (`--port 0` picks a free one).") from None
        raise PipelineError(f"Cannot listen on {HOST}:{port} ({e.strerror or e}); choose another `--port`.") from None
