"""Plain helpers that several test files use, imported by name (``from tests.helpers import invoke``).

Fixtures live in ``tests/conftest.py``, which pytest hands to every test folder; everything a test calls
itself lives here, so a reader can follow the import instead of guessing where a name comes from.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from pipeline.cli import app

#: the repository root: the folder a subprocess must start in to import ``pipeline``, ``exporters`` and ``runtime``
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    """Run the CLI in-process. An exception that escapes a command (which a user would see as a traceback) fails
    the calling test at once: CliRunner keeps it in ``result.exception`` and never prints it, so a check for
    "Traceback" in the output alone could never fail."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError("the command raised (a user would see a traceback):\n"
                             + "".join(traceback.format_exception(result.exception)))
    return result


class Child:
    """``pipeline ARGS`` in a child process (the leader of its own process group), its merged output read line
    by line on a thread: for tests that signal, kill or time a real run. SIGINT has its default handler in it,
    as a terminal's Ctrl-C would find (a suite started in the background passes it on ignored, and Python then
    installs no KeyboardInterrupt handler). ``env`` adds variables; ``preexec_fn`` runs in the child before it
    starts (limits, signal dispositions)."""

    def __init__(self, *args, env: dict | None = None, preexec_fn=None):
        import os
        import subprocess
        import sys
        import threading

        from tests.kill_resume import default_sigint

        def setup():
            default_sigint()
            if preexec_fn:
                preexec_fn()

        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT,
                                     env={**os.environ, "COLUMNS": "200", **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=setup)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, cond, timeout: float = 240) -> None:
        """Until ``cond()`` holds; the test fails if the child exits first or ``timeout`` seconds pass."""
        import time

        end = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} before the kill point:\n{self.output}"
            assert time.monotonic() < end, f"kill point not reached in {timeout} s:\n{self.output}"
            time.sleep(0.02)

    def finish(self, timeout: float = 420) -> int:
        """The exit code; a child still running after ``timeout`` s is a hang: its whole group is killed and the
        test fails with its output."""
        import os
        import signal
        import subprocess

        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leave nothing running
            raise AssertionError(f"no exit within {timeout} s (a hang):\n{self.output}") from None
        self.reader.join(10)
        return rc


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing was lost or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_paragraph(r, code: int = 2) -> str:
    """Assert that the command ended with exit ``code`` and one ``error:`` paragraph, no traceback; return the
    output with its line breaks (rich wraps at the terminal width) folded into single spaces, to search in."""
    assert r.exit_code == code, r.output
    out = " ".join(r.output.split())
    assert out.count("error:") == 1 and "Traceback" not in out, r.output
    return out


def mnist_test_images(data_root: Path, n: int):
    """The first ``n`` MNIST test images, (n, 28, 28) uint8, and their labels, read from the raw IDX files."""
    from pipeline.dataset import read_test_set

    x, y = read_test_set(data_root / "MNIST" / "raw")
    return x[:n], y[:n]


def load_module(path: Path, name: str):
    """Import the script at ``path`` as module ``name`` (a bundle's bench.py or build_engines.py, which are
    files in a folder, not modules of the repository)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def quick_bundle(quick_run: dict, data_root: Path, out: Path, target: str) -> Path:
    """`pipeline bundle --target TARGET` of the session's quick run into ``out``; the bundle folder."""
    r = invoke("bundle", "--target", target, "--artifacts", quick_run["artifacts"], "--out", out,
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    return out / f"edgenet-{target}-bundle"


#: what a symlink of each kind points at, given the folder it stands in
SYMLINK_TARGETS = {
    "symlink to stdout": lambda d: "/proc/self/fd/1",
    "symlink to /dev/null": lambda d: "/dev/null",
    "symlink to a regular file": lambda d: d / "real.json",
    "dangling symlink": lambda d: d / "nowhere.json",
    "symlink to a folder": lambda d: d,
}


def make_path_of_kind(path: Path, kind: str) -> None:
    """Put at ``path`` something of ``kind``: a ``fifo``, ``folder``, ``socket``, ``existing regular file``, a
    ``new file`` (nothing), or one of :data:`SYMLINK_TARGETS` (a regular ``real.json`` beside it exists either way):
    the things an output option may find where it is told to write."""
    import os
    import socket

    (path.parent / "real.json").write_text("{}")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    elif kind == "existing regular file":
        path.write_text("{}")
    elif kind in SYMLINK_TARGETS:
        os.symlink(SYMLINK_TARGETS[kind](path.parent), path)
    elif kind != "new file":
        raise ValueError(f"no such kind: {kind}")
