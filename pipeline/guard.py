"""Known errors become a one-paragraph message and an exit code, never a traceback: the one wrapper every command
(``pipeline ...``, ``pipeline device ...``) runs in.

Its own module so that command groups in other modules (:mod:`pipeline.devices.commands`) use it without importing the
command line, which imports them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import typer

from .console import error as _error
from .errors import PipelineError
from .store.paths import RUN_ADVICE, WriteAdvice


#: What each command's user should change after a refused write (see :class:`pipeline.store.paths.DiskError`).
ADVICE = {
    "report": WriteAdvice("run folder (copy it elsewhere and run `pipeline report COPY`)",
                          "report.json is only read, and the previous report files are still in place"),
    "bundle": WriteAdvice("--out folder", "the bundle is made again from the run folder"),
    "bench": WriteAdvice("--json path", "the results table above was printed; only the JSON file is missing"),
}


def guarded(fn=None, *, advice: WriteAdvice = RUN_ADVICE):
    """Turn known errors into a one-paragraph message and an exit code, never a traceback.

    ``advice`` words a refused write (full disk, read-only folder) for this command: what to change and
    what rerunning it does. Every message is printed as literal text (see :func:`literal`).
    """
    if fn is None:
        return lambda f: guarded(f, advice=advice)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from runtime.errors import BackendUnavailable, RuntimeInputError

        from runtime.modelfile import check_path

        from .store.paths import DISK_ERRNOS, PATH_ERRNOS, DiskError, disk_error, path_error

        try:
            for name, value in kwargs.items():  # a name the OS cannot hold: Path.exists() would raise in 3.11
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, Path):
                        check_path(v, f"path given as {name.replace('_', '-')}")
            return fn(*args, **kwargs)
        except DiskError as e:
            _error(e.advise(advice))
            raise typer.Exit(e.exit_code) from None
        except PipelineError as e:
            _error(e)
            raise typer.Exit(e.exit_code) from None
        except (RuntimeInputError, BackendUnavailable) as e:
            _error(e)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            from .signals import Terminated

            if isinstance(e, Terminated):  # SIGTERM or SIGHUP (pipeline.signals): the same cleanup ran
                _error("the command was stopped; its temp files were removed, and finished stages and files are "
                       "kept; rerun to continue.", prefix=f"terminated by {e.name}:")
                raise typer.Exit(128 + e.signum) from None
            _error("finished stages and files are kept; rerun to continue.", prefix="interrupted:")
            raise typer.Exit(130) from None
        except OSError as e:  # a write outside atomic_path (a library's temp file, the lock file) was refused
            if e.errno in PATH_ERRNOS:  # a path built from a name (--model) or a symlink loop on the way
                _error(path_error(e))
                raise typer.Exit(2) from None
            if e.errno not in DISK_ERRNOS:
                raise
            _error(disk_error(e.filename or "a file", e, advice))
            raise typer.Exit(2) from None

    return wrapper
