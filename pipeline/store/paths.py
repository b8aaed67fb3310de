"""The one place that knows where every artifact lives, and how it is written.

Every write goes through :func:`atomic_write` (temp file in the same folder,
fsync, ``os.replace``) so a killed run never leaves a half-written file that
looks complete.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from exporters.atomic import atomic_path as _atomic_path
from exporters.atomic import current_umask as _umask  # noqa: F401  (pipeline.bundle.build sets file modes with it)

from pipeline.errors import PipelineError


#: errors of a path itself, not of the disk: one paragraph naming it
PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


def path_error(e: OSError) -> str:
    """One paragraph for an OSError of the path itself (too long, a symlink loop), for the CLI and pipeline.run."""
    from runtime.modelfile import path_problem

    name = e.filename or "a path"
    why = path_problem(name) if e.errno == errno.ENAMETOOLONG and e.filename else None
    if e.errno == errno.ELOOP:
        why = f"{name} leads into a loop of symbolic links"
    return (f"{why or f'{name}: {e.strerror}'}. Nothing was written.")


def walk_tree(root: Path) -> Iterator[tuple[Path, int]]:
    """Every entry under ``root`` with its ``lstat`` mode, depth first, never following a symlink, without
    recursion: ``os.walk`` and ``Path.rglob`` recurse in Python 3.11, so a folder nested 1,100 levels deep raised
    ``RecursionError``. Entries of one folder come sorted by name."""
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        below = []
        for e in entries:
            mode = e.stat(follow_symlinks=False).st_mode
            yield Path(e.path), mode
            if e.is_dir(follow_symlinks=False):
                below.append(Path(e.path))
        stack.extend(reversed(below))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: errno values that mean "the file system refused the write", as opposed to a bug or a missing input
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})
#: ...of which these mean "not writable at all": freeing space would not help
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class WriteAdvice:
    """What a command tells the user to do after a refused write: the output option to change, and what a rerun does."""

    option: str = "--artifacts folder"
    rerun: str = "finished stages are skipped and training resumes from its last complete epoch"


RUN_ADVICE = WriteAdvice()


def _refusal(e: OSError, where="it") -> str:
    """Why the file system refused, in words: read-only and permission errors never read as a full disk."""
    name = errno.errorcode.get(e.errno, "?")
    if e.errno == errno.EROFS:
        return f"{where} is on a read-only file system ({name})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{where} is not writable by this user: permission denied ({name})"
    return f"{e.strerror or e} ({name})"


class DiskError(PipelineError):
    """A write the file system refused. The message's advice depends on the command, so the CLI can
    re-word it with :meth:`advise` (``pipeline report`` has no ``--artifacts`` and resumes no training)."""

    def __init__(self, path, e: OSError, advice: WriteAdvice = RUN_ADVICE) -> None:
        self.path, self.error = path, e
        super().__init__(self._message(advice))

    def advise(self, advice: WriteAdvice) -> str:
        return self._message(advice)

    def _message(self, advice: WriteAdvice) -> str:
        if self.error.errno in READ_ONLY_ERRNOS:
            todo = (f"Choose a writable {advice.option} (or make this one writable) and rerun the same command: "
                    f"{advice.rerun}.")
        else:
            todo = (f"Free some space (or choose another {advice.option}) and rerun the same command: "
                    f"{advice.rerun}.")
        return (f"Could not write {self.path}: {_refusal(self.error)}. Nothing half-written was left behind and "
                f"every file written before is intact. {todo}")


def disk_error(path, e: OSError, advice: WriteAdvice = RUN_ADVICE) -> DiskError:
    """One paragraph for a write the file system refused (full, quota, file-size limit, read-only, permission,
    I/O error); ``advice`` says what the command's user should change."""
    return DiskError(path, e, advice)


@contextlib.contextmanager
def refused_writes(path) -> Iterator[None]:
    """Turn a write the file system refuses inside the block (:data:`DISK_ERRNOS`) into a :class:`DiskError`
    naming ``path``; other errors pass through. For writes done by library code (exporters) that raise the
    plain ``OSError``."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_ERRNOS:
            raise disk_error(path, e) from None
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only on success.

    :func:`exporters.atomic.atomic_path` does the work (one implementation for the pipeline and the
    exporters). The temp file is named ``.<name>.<random>.tmp``; one left by a killed process is removed by
    the next run (see :func:`pipeline.store.manifest.temp_leftovers`). A write the disk refuses becomes a
    :class:`PipelineError` naming ``path``.
    """
    with refused_writes(path), _atomic_path(path) as tmp:
        yield tmp


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path``."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def _nonfinite_at(obj: Any, where: str = "") -> str | None:
    """Where (``['variants'][2]['max_abs_diff']``) the first NaN/inf float in ``obj`` sits, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _nonfinite_at(v, f"{where}[{k!r}]")
        if found:
            return found
    return None


def strict_json(obj: Any) -> str:
    """``obj`` as strict JSON text (RFC 8259): a NaN or infinity raises instead of becoming a bare ``NaN``.

    Why raise rather than write ``null``: a non-finite number reaching a writer means a check upstream was
    missed (a NaN loss, a NaN logit difference), and writing it would publish a wrong result that other
    programs (``json.loads`` in strict parsers, ``jq``, browsers) either reject or misread. Values that are
    legitimately unknown are turned into ``null`` deliberately where they arise, and documented there:
    ``max_abs_diff`` of a variant whose logits are NaN/inf (:func:`pipeline.measure.compare.compare`) and
    ``sqnr_db`` of a layer whose SQNR is infinite or undefined (:func:`exporters.precision.per_layer_sqnr`).
    So this is a bug guard: :class:`ValueError` (not a :class:`PipelineError`), naming where the value sits.
    """
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        where = _nonfinite_at(obj)
        if where is None:
            raise
        raise ValueError(f"refusing to write a NaN or infinite number as JSON at {where}: strict JSON has "
                         "none; the value should have been checked (or made null) where it was computed") from None


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (see :func:`strict_json`); nothing is written when it has NaN/inf."""
    return atomic_write(path, strict_json(obj))


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in or under ``folder``, or None when it can.

    Probes with a real temp file, because permission bits lie both ways: root ignores them,
    and a read-only mount refuses writes whatever they say.
    """
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return _refusal(e, str(existing))
    return None


def _kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    import stat

    for test, what in ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a fifo (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work starts, an output file that is not a new file or an existing regular file, or that
    cannot be written, so that no result is computed only to be lost and nothing that is not ours is destroyed.

    Every option that names an output file calls this (``bench --json``). Writes are atomic (a temp file renamed
    onto the path), and a rename replaces whatever the path is: a symlink (even one to ``/proc/self/fd/1``) would
    become a regular file, and as root ``/dev/null`` would stop being a device. So a symlink, a fifo, a device, a
    socket and a folder are refused, whatever they point to. The parent folder may be a symlink (the user's own
    layout); only the last component is the file we would replace."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # ENAMETOOLONG, ENOTDIR (a path under a file), ELOOP, EACCES
        if e.errno == errno.ENOTDIR:
            mode = None  # worded below, by the parent check
        else:
            raise PipelineError(f"{option} {path} cannot be used: {_refusal(e, 'the path')}. Choose another {option}; "
                                "nothing was run or written.") from None
    kind = None if mode is None else _kind_of(mode)
    if kind is not None:
        target = f" to {os.readlink(path)}" if kind == "a symbolic link" else ""
        hint = (f"; give a file name such as {path / 'results.json'}" if kind == "a folder"
                else ", not a regular file, and writing would replace it with one; give a new file or an existing "
                     "regular file")
        raise PipelineError(f"{option} {path} is not writable: it is {kind}{target}{hint}. Choose another "
                            f"{option}; nothing was run or written.")
    why = _unwritable(path.parent)
    if why:
        raise PipelineError(f"{option} {path} is not writable: {why}. Choose another {option}; nothing was run "
                            "or written.")


def check_output_dir(path: Path, option: str) -> None:
    """Like :func:`check_output_file` for an output folder (created when missing)."""
    path = Path(path)
    why = "it is a file, not a folder" if path.exists() and not path.is_dir() else _unwritable(path)
    if why:
        raise PipelineError(f"{option} {path} is not writable: {why}. Choose another {option} or fix its "
                            "permissions; nothing was run or written.")


def check_writable(root: Path, option: str = "--artifacts") -> None:
    """Fail early, with a clear message, when the artifacts folder can't be written."""
    check_output_dir(root, option)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # the checks above raced with another process, or the mount changed
        raise PipelineError(
            f"{option} {root} is not writable: {_refusal(e, str(root))}. "
            f"Choose another with {option} DIR or fix its permissions; nothing was written."
        ) from None


@dataclass(frozen=True)
class RunDir:
    """Artifact layout of one model's run: ``<artifacts>/<model>/...``, and the bundles made from it.

    Every run path is built here and nowhere else (tests/pipeline/store/test_paths_run.py greps ``pipeline/`` for
    the names below), so the layout can change in one place. A path a report or a message cites relative to the
    run folder (``quantize/qat-torch.json``) comes from :meth:`relative`."""

    root: Path

    @classmethod
    def for_model(cls, artifacts: Path, model: str) -> "RunDir":
        safe = model.replace(":", "__").replace("/", "_")
        return cls(Path(artifacts) / safe)

    @classmethod
    def relative(cls) -> "RunDir":
        """The layout relative to the run folder: what report.json, report.md and messages cite."""
        return cls(Path())

    def relpath(self, path: Path) -> str:
        """``path`` relative to this run folder, as the run manifest (``stages.json``) records it."""
        return str(Path(path).relative_to(self.root))

    @property
    def lock(self) -> Path:
        """Held (``flock``) by the one ``pipeline run`` working in this folder: :func:`pipeline.stages.run_lock`."""
        return self.root / ".lock"

    # bundles
    @property
    def bundles(self) -> Path:
        """Where ``pipeline bundle`` and ``pipeline demo`` write bundles unless told otherwise: ``<artifacts>/bundles``,
        beside the model folders (one folder for every model's bundles)."""
        return self.root.parent / "bundles"

    def bundle(self, out_dir: Path, target: str) -> Path:
        """The bundle folder for ``target`` under ``out_dir``: named after this run's folder, so a module-named model
        (``pkg.mod:Class``, folder ``pkg.mod__Class``) is built and served under one name."""
        return Path(out_dir) / f"{self.root.name}-{target}-bundle"

    def bundle_tar(self, out_dir: Path, target: str) -> Path:
        """The archive of :meth:`bundle`, beside it."""
        folder = self.bundle(out_dir, target)
        return folder.with_name(folder.name + ".tar.gz")

    # data stage
    @property
    def data_summary(self) -> Path:
        return self.root / "data" / "summary.json"

    @property
    def samples_png(self) -> Path:
        return self.root / "data" / "samples.png"

    # train stage
    @property
    def checkpoint(self) -> Path:
        return self.root / "train" / "model.pt"

    @property
    def train_state(self) -> Path:
        """Resumable state after the last complete epoch; removed when training finishes."""
        return self.root / "train" / "resume.pt"

    @property
    def history(self) -> Path:
        return self.root / "train" / "history.json"

    @property
    def curves_png(self) -> Path:
        return self.root / "train" / "curves.png"

    # export stage
    def export_file(self, name: str) -> Path:
        """A file of the export folder, by the name the variant table gives it."""
        return self.root / "export" / name

    def unbuilt(self, name: str) -> Path:
        """Why an optional row's file ``name`` was not made this run (its converter's refusal), for the validate stage."""
        return self.root / "export" / f"{name}.unbuilt.json"

    @property
    def golden(self) -> Path:
        return self.root / "export" / "golden.npz"

    # quantize stage
    @property
    def sqnr_json(self) -> Path:
        return self.root / "quantize" / "sqnr.json"

    @property
    def qat_torch_json(self) -> Path:
        """The QAT model's test accuracy in torch before export (fake quantization): a rung of the ladder."""
        return self.root / "quantize" / "qat-torch.json"

    @property
    def sqnr_png(self) -> Path:
        return self.root / "quantize" / "sqnr.png"

    @property
    def sensitivity_json(self) -> Path:
        """Per-layer INT8 sensitivity on validation accuracy, and the layers each PTQ file keeps in FP32."""
        return self.root / "quantize" / "sensitivity.json"

    @property
    def sensitivity_png(self) -> Path:
        return self.root / "quantize" / "sensitivity.png"

    @property
    def engines_status(self) -> Path:
        """Which TensorRT engines were built, or why not."""
        return self.root / "engines" / "status.json"

    # validate / report
    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def devices(self) -> Path:
        """Measurements taken on the user's devices, one ``<slug>.json`` each (:mod:`pipeline.store.devices`)."""
        return self.root / "devices"

    @property
    def report_figures(self) -> Path:
        """The report's figures (PNG), which report.html inlines and report.md names."""
        return self.root / "report"

    def report_figure(self, name: str) -> Path:
        """One figure of the report, by the name :mod:`pipeline.report` gives it (``latency``, ``pareto-cpu``)."""
        return self.report_figures / f"{name}.png"

    @property
    def stages(self) -> Path:
        """Record of finished stages: their config hash and output hashes."""
        return self.root / "stages.json"
