"""``pipeline demo``: the web bundle served on 127.0.0.1 by the project's one local server (:mod:`pipeline.bundle.serve`).

The bundle is checked like ``pipeline verify`` checks it before a single file is served: a bundle with an altered,
extra or missing file, or a symlink, is refused in one paragraph (the page would otherwise run whatever the folder
holds). The server itself serves only the bundle's regular files, no hidden or temp files, no listings, and only to
requests whose Host is the bound address (:mod:`pipeline.bundle.serve`).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from .serve import HOST, TYPES, Server  # noqa: F401  (HOST and TYPES: the names this module always exported)


def serve(folder: Path, port: int) -> Server:
    """A server bound to ``HOST:port`` for ``folder`` (not yet serving: call ``serve_forever``). The folder is opened
    when serving starts, so it may be built after the port is taken."""
    return Server(folder, port)


def check_bundle(folder: Path) -> None:
    """Refuse a web bundle that ``pipeline verify`` would fail, naming every problem, in one paragraph."""
    from . import build as bundle

    problems = bundle.verify(folder) if (folder / "MANIFEST.json").is_file() else ["MANIFEST.json is missing"]
    if problems:
        raise PipelineError(f"{folder} is not an intact web bundle, so it is not served: {'; '.join(problems)}. "
                            "Rebuild it with `pipeline bundle --target web` (or remove the folder and rerun "
                            "`pipeline demo`, which builds it).")
