"""Atomic file writes (a temp file beside the target, fsync, then ``os.replace``) and scratch files.

A killed process never leaves a half-written file that looks complete. This is the one implementation:
it lives here, not in ``pipeline.store.paths``, because exporters import nothing from the pipeline (they are
library functions that take paths and arrays), and :func:`pipeline.store.paths.atomic_path` wraps it to turn a
refused write (full disk, read-only folder) into a one-paragraph ``PipelineError``. Here such a write
raises the plain ``OSError``. (``exporters/tensorrt.py`` keeps its own small copy: it is also shipped
alone, as a bundle's ``build_engines.py``.)
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temp file is named ``.<name>.<random>.tmp`` (the pattern a pipeline run sweeps after a kill) and is
    removed whatever happens; the final file gets the permissions of a normal write (mkstemp makes 0600).
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def scratch_path(beside: Path) -> Iterator[Path]:
    """A temp path beside ``beside`` (named like :func:`atomic_path`'s, so a killed run's copy is swept),
    removed when the block ends whatever happens: for intermediate files that are never kept."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
