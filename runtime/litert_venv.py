"""A private virtual environment for LiteRT, created on demand under the user cache and reused afterwards.

Why a separate environment: litert-torch (the PyTorch -> ``.tflite`` converter) pulls in JAX and pins
typing-extensions below 4.13, which would downgrade pydantic in the project's own environment and break
``pip check``. So neither litert-torch nor ai-edge-litert (its interpreter, which it pins) is installed there:
:func:`ensure_venv` makes ``<cache>/edge-export-pipeline/litert-venv`` with ``python -m venv``, installs
:data:`PACKAGES` plus the project's torch release (a converter input saved by this torch must load there), and
writes :data:`MARKER` last, so a venv whose install was killed half-way is never mistaken for a ready one.
The converter (:mod:`exporters.litert`) and the runner (:mod:`runtime.litert`) run their work in it as a
subprocess. Standard library only: this module is imported by both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import BackendUnavailable

#: the pinned releases the probe of issue 24 verified (ai-edge-litert is litert-torch's own pin)
PACKAGES = ("ai-edge-litert==2.3.*", "litert-torch==0.10.*")
MARKER = "edge-export-pipeline.json"
INSTALL_HINT = ("the LiteRT environment is created on first use under $XDG_CACHE_HOME (or ~/.cache)/"
                "edge-export-pipeline/litert-venv; to make it now run `python -m runtime.litert_venv`")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-export-pipeline/litert-venv`` (``~/.cache`` when XDG_CACHE_HOME is unset);
    ``$EDGE_LITERT_VENV`` overrides it (a venv made elsewhere, e.g. by CI)."""
    if os.environ.get("EDGE_LITERT_VENV"):
        return Path(os.environ["EDGE_LITERT_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edge-export-pipeline" / "litert-venv"


def venv_python(venv: Path) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted(torch_version: str | None) -> dict:
    return {"packages": list(PACKAGES), "torch": torch_version, "python": list(sys.version_info[:2])}


def ready(venv: Path | None = None, torch_version: str | None = None) -> Path | None:
    """The venv's python when the venv at ``venv`` was completed with these pins (``torch_version`` None =
    any torch), else None. Reads the marker only: cheap enough to call before every conversion."""
    venv = Path(venv or default_dir())
    try:
        marker = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("packages") != list(PACKAGES):
        return None
    if torch_version is not None and marker.get("torch") != torch_version:
        return None
    python = venv_python(venv)
    return python if python.is_file() else None


def ensure_venv(venv: Path | None = None, torch_version: str | None = None, timeout: float = 3600,
                log=None) -> Path:
    """The python of a ready LiteRT venv, creating it first when needed (minutes: about 1.2 GB, mostly JAX).

    ``torch_version`` pins the torch installed there (pass ``torch.__version__`` without its local
    ``+cpu`` part when the converter reads files this process saved); None installs what pip resolves.
    The venv is built in a temp folder beside the target and renamed into place when complete, so two
    processes racing or a killed install leave no half-made venv at ``venv``. Raises
    :class:`BackendUnavailable` with pip's last lines when the install fails (no network, no wheel).
    """
    venv = Path(venv or default_dir())
    found = ready(venv, torch_version)
    if found:
        return found
    venv.parent.mkdir(parents=True, exist_ok=True)
    work = venv.parent / f".{venv.name}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    say = log or (lambda msg: None)
    started = time.monotonic()
    try:
        say(f"creating the LiteRT venv at {venv} (one time; minutes)")
        _run([sys.executable, "-m", "venv", str(work)], timeout, "python -m venv")
        torch_pin = f"torch=={torch_version}" if torch_version else "torch"
        _run([str(venv_python(work)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              *PACKAGES, torch_pin, "numpy"], timeout, "pip install " + " ".join([*PACKAGES, torch_pin]))
        _run([str(venv_python(work)), "-c", "import ai_edge_litert.interpreter, litert_torch"], 600,
             "importing ai_edge_litert and litert_torch")
        (work / MARKER).write_text(json.dumps({**_wanted(torch_version), "created_s": round(time.monotonic() - started)}))
        if venv.exists():  # an incomplete or outdated venv (no or another marker)
            shutil.rmtree(venv)
        os.replace(work, venv)  # only `python -m ...` is used there, so the scripts' old shebangs do not matter
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = ready(venv, torch_version)
    if not found:
        raise BackendUnavailable(f"LiteRT: the venv at {venv} was created but is not usable; delete it and retry.")
    return found


def _run(cmd: list[str], timeout: float, what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"LiteRT: {what} took over {timeout:.0f} s and was stopped; "
                                 f"{INSTALL_HINT}.") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:600]
        raise BackendUnavailable(f"LiteRT: {what} failed (exit {done.returncode}): {tail}. {INSTALL_HINT}.")


if __name__ == "__main__":  # python -m runtime.litert_venv [torch_version]
    print(ensure_venv(torch_version=sys.argv[1] if len(sys.argv) > 1 else None, log=print))
