"""The LiteRT converter's virtual environment: layered over the project's environment, created on demand under
the user cache and reused afterwards.

Why a separate environment: litert-torch (the PyTorch -> ``.tflite`` converter) pulls in JAX and pins
typing-extensions below 4.13 (and an older pydantic with it); installed into the project's environment it would
downgrade those and break ``pip check``. The interpreter alone (``ai-edge-litert``, the ``[litert]`` extra) has
no such pin and lives in the project's environment; the converter does not.

Why layered, not standalone: the converter needs torch, the same release that saved the ``torch.export`` program
it reads. A standalone venv installs its own torch (6.6 GB and 15 minutes here, for a CUDA build); instead
:func:`ensure_venv` makes ``<cache>/edge-export-pipeline/litert-venv`` with ``python -m venv`` and drops a
``.pth`` file into its site-packages naming the running interpreter's ``purelib``/``platlib`` (``sysconfig``), so
the venv sees the project's torch, numpy and ai-edge-litert, and pip installs only what is missing or conflicts
(litert-torch, JAX, and its own typing-extensions/pydantic: about 1 GB, under a minute). Paths from a ``.pth``
come after the venv's own site-packages, so the venv's older typing-extensions and pydantic win inside the
venv while the project's environment is never written to (pip says "Not uninstalling ... outside environment").
A constraints file pins torch to the project's release, so pip can never pull a second torch in.

:data:`MARKER` is written last and records the pins, the layered paths and the torch release found there;
:func:`ready` refuses a venv whose layered site-packages is gone or holds another torch than when it was made
(the project's environment was rebuilt), so such a venv is rebuilt rather than failing half-way through a
conversion. The venv is built in a temp folder beside the target and renamed into place when complete, so a
killed install or two racing processes never leave a half-made venv at the target. The converter
(:mod:`exporters.litert`) and the runner's worker (:mod:`runtime.litert`) run in it as subprocesses. Standard
library only: this module is imported by both, and by torch-free bundles.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from .errors import BackendUnavailable

#: the pinned releases the probe of issue 24 verified (ai-edge-litert is litert-torch's own pin)
PACKAGES = ("ai-edge-litert==2.3.*", "litert-torch==0.10.*")
MARKER = "edge-export-pipeline.json"
#: the .pth file that layers the project's site-packages under the venv's own
PTH = "zz-edge-export-pipeline-project.pth"
INSTALL_HINT = ("the LiteRT converter venv is created on first use under $XDG_CACHE_HOME (or ~/.cache)/"
                "edge-export-pipeline/litert-venv ($EDGE_LITERT_VENV overrides); to make it now run "
                "`python -m runtime.litert_venv`")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-export-pipeline/litert-venv`` (``~/.cache`` when XDG_CACHE_HOME is unset);
    ``$EDGE_LITERT_VENV`` overrides it (a venv made elsewhere, e.g. by CI)."""
    if os.environ.get("EDGE_LITERT_VENV"):
        return Path(os.environ["EDGE_LITERT_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edge-export-pipeline" / "litert-venv"


def venv_python(venv: Path) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def layered_paths() -> list[str]:
    """The running interpreter's ``purelib`` and ``platlib`` (one path when they are the same folder)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(str(Path(paths[key]).resolve()) for key in ("purelib", "platlib")))


def torch_in(paths: list[str]) -> str | None:
    """The version of the torch distribution installed in ``paths`` (its dist-info; nothing is imported), or None."""
    for dist in importlib.metadata.distributions(name="torch", path=list(paths)):
        return dist.version
    return None


def _same_torch(found: str | None, wanted: str) -> bool:
    """The same torch release; local labels (``+cu130``) count only when both sides have one, because torch's own
    dist-info may lack the label that ``torch.__version__`` shows (``2.14.1`` for ``2.14.1+cu130`` here)."""
    if found is None:
        return False
    if "+" in found and "+" in wanted:
        return found == wanted
    return found.split("+")[0] == wanted.split("+")[0]


def ready(venv: Path | None = None, torch_version: str | None = None) -> Path | None:
    """The venv's python when the venv at ``venv`` was completed with these pins, its layered site-packages still
    exist and still hold the torch they held then (and that torch is ``torch_version`` when given), else None.
    Reads the marker and one dist-info folder: cheap enough to call before every conversion."""
    venv = Path(venv or default_dir())
    try:
        marker = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("packages") != list(PACKAGES):
        return None
    layered = marker.get("layered")
    if not (isinstance(layered, list) and layered and all(isinstance(p, str) and Path(p).is_dir() for p in layered)):
        return None  # an old standalone venv, or the project's environment it was layered over is gone
    if torch_in(layered) != marker.get("torch"):
        return None  # the project's environment was rebuilt with another torch since
    if torch_version is not None and not _same_torch(marker.get("torch"), torch_version):
        return None
    python = venv_python(venv)
    return python if python.is_file() else None


def ensure_venv(venv: Path | None = None, torch_version: str | None = None, timeout: float = 3600,
                log=None) -> Path:
    """The python of a ready LiteRT converter venv, creating it first when needed (under a minute here, ~1 GB).

    The venv is layered over the running interpreter's site-packages (see the module docstring), whose torch it
    uses; ``torch_version`` (``torch.__version__``, with or without its local ``+...`` part) is checked against
    that torch, and pinned by a constraints file. Raises :class:`BackendUnavailable` with pip's last lines when
    the install fails (no network, no wheel) or the venv's torch is not the wanted one.
    """
    venv = Path(venv or default_dir())
    found = ready(venv, torch_version)
    if found:
        return found
    layered = layered_paths()
    torch_here = torch_in(layered)
    if torch_version is not None and not _same_torch(torch_here, torch_version):
        raise BackendUnavailable(f"LiteRT: this environment's site-packages ({', '.join(layered)}) hold torch "
                                 f"{torch_here or '(none)'}, not the running torch {torch_version}; the converter "
                                 "venv is layered over site-packages, so it cannot be made from here.")
    venv.parent.mkdir(parents=True, exist_ok=True)
    work = venv.parent / f".{venv.name}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    say = log or (lambda msg: None)
    started = time.monotonic()
    try:
        say(f"creating the LiteRT converter venv at {venv}, layered over {', '.join(layered)} (one time; a minute)")
        _run([sys.executable, "-m", "venv", str(work)], timeout, "python -m venv")
        site = _run([str(venv_python(work)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    60, "asking the new venv for its site-packages").strip()
        Path(site, PTH).write_text("".join(p + "\n" for p in layered))
        constraints = work / "constraints.txt"
        constraints.write_text(f"torch=={torch_here}\n" if torch_here else "")
        _run([str(venv_python(work)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              "-c", str(constraints), *PACKAGES, "numpy"], timeout, "pip install " + " ".join(PACKAGES))
        said = _run([str(venv_python(work)), "-c", "import ai_edge_litert.interpreter, litert_torch, torch; "
                                                  "print('torch', torch.__version__)"],
                    600, "importing ai_edge_litert, litert_torch and torch").split()
        got = said[-1] if len(said) >= 2 and said[-2] == "torch" else None
        if torch_here and not _same_torch(got, torch_here):
            raise BackendUnavailable(f"LiteRT: the converter venv imports torch {got}, not the project's {torch_here};"
                                     f" {INSTALL_HINT}.")
        (work / MARKER).write_text(json.dumps({"packages": list(PACKAGES), "layered": layered, "torch": torch_here,
                                               "python": list(sys.version_info[:2]),
                                               "created_s": round(time.monotonic() - started)}))
        if venv.exists():  # an incomplete or outdated venv (no or another marker)
            shutil.rmtree(venv)
        os.replace(work, venv)  # only `python -m ...` is used there, so the scripts' old shebangs do not matter
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = ready(venv, torch_version)
    if not found:
        raise BackendUnavailable(f"LiteRT: the venv at {venv} was created but is not usable; delete it and retry.")
    return found


def _run(cmd: list[str], timeout: float, what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"LiteRT: {what} took over {timeout:.0f} s and was stopped; "
                                 f"{INSTALL_HINT}.") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:600]
        raise BackendUnavailable(f"LiteRT: {what} failed (exit {done.returncode}): {tail}. {INSTALL_HINT}.")
    return done.stdout


def main(argv: list[str]) -> int:
    """``python -m runtime.litert_venv [torch_version]``: make (or find) the venv; one paragraph and exit 1 if not."""
    try:
        print(ensure_venv(torch_version=argv[0] if argv else None, log=print))
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
