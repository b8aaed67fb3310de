"""Where the JS tests find Node, the Node packages (onnxruntime-node, pngjs, jpeg-js, playwright-core) and Chromium.

The packages are pinned in ``tests/js/package.json`` + ``package-lock.json`` (the same versions as the Node bundle's
package.json, which a test checks) and installed by ``.ci/run`` when ``tests/js/node_modules`` is missing. A test
that needs them skips, naming the command, when node or a package is absent.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent
NODE_MODULES = JS_DIR / "node_modules"
INSTALL = "npm ci --ignore-scripts --prefix tests/js"
PACKAGES = tuple(json.loads((JS_DIR / "package.json").read_text())["dependencies"])


def require_node() -> str:
    """The node executable, or skip the calling test with the reason and the fix."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Node 18 or newer; Debian: apt-get install nodejs npm), so the JS tests "
                    f"cannot run; then run `{INSTALL}`.")
    missing = [p for p in PACKAGES if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        pytest.skip(f"the Node packages {', '.join(missing)} are not installed: run `{INSTALL}` (.ci/run does).")
    return node


def link_node_modules(folder: Path) -> None:
    """Make ``folder`` (or anything under it) resolve the pinned packages, without copying 300 MB: Node looks for
    ``node_modules`` in each parent folder of an importing file."""
    (Path(folder) / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)


#: Debian's chromium package (.ci/run installs it when missing); the browser tests drive it with playwright-core
CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> str:
    """The Chromium executable (and node with the packages), or skip the calling test with the reason and the fix."""
    require_node()
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing, so the browser tests cannot run: apt-get install chromium (.ci/run does).")
    return str(CHROMIUM)
