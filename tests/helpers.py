"""Plain helpers that several test files use, imported by name (``from tests.helpers import invoke``).

Fixtures live in ``tests/conftest.py``, which pytest hands to every test folder; everything a test calls
itself lives here, so a reader can follow the import instead of guessing where a name comes from.
"""
from __future__ import annotations

from pathlib import Path

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


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, to prove nothing was lost or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
