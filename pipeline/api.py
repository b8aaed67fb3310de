"""``pipeline.run``: the Python twin of ``pipeline run``, for notebooks and scripts.

It takes the same options as the command (as keywords), builds the config through the same function
(:func:`pipeline.config.build_config`), runs the same stages, and returns what they produced instead of
printing it. Because it runs inside the caller's process it behaves as a library: user errors are
:class:`~pipeline.errors.PipelineError` (never an exit), it configures no logging (the stages log to the
``pipeline`` logger; ``logging.basicConfig(level=logging.INFO)`` shows their progress), and it gives back
torch's thread count and random state as it found them.

``model`` may also be an ``nn.Module`` object, for instance a class defined in the notebook itself: see
:func:`pipeline.models.adopt` for how it is checked, fingerprinted and copied, and docs/usage.md "Python API".
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import OPTIONS
from .errors import PipelineError


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` produced.

    ``report`` is the validate stage's report (``report.json`` as a dict: accuracies, parity, latency per
    variant; see docs/report.md "Report contract"), also when validate was skipped as up to date. It is ``None`` when
    ``stage`` stops before validate: the stage's files are then in ``run_dir`` (``train/history.json`` holds
    the training summary).
    """

    run_dir: Path  # <artifacts>/<run name>: a registry name, package.module__Class, or an object's class name
    model: str  # the run's name, as the report and the ONNX metadata give it
    stages: dict[str, str]  # each stage up to the one asked for, in order: "ran" or "skipped" (up to date)
    report: Optional[dict]
    data_root: Path = field(repr=False)

    def accuracy(self, variant: str = "torch-fp32") -> float:
        """Test accuracy (fraction, 0..1, on the 10,000 MNIST test images) of one variant of the report."""
        if self.report is None:
            raise PipelineError("This run stopped before validate, so it has no report; run up to stage 'all'.")
        for row in self.report["variants"]:
            if row["name"] == variant:
                return row["accuracy"]
        raise PipelineError(f"The report has no variant '{variant}'; it has "
                            f"{', '.join(r['name'] for r in self.report['variants'])}.")

    def bundle(self, target: str, out: Path | str | None = None) -> tuple[Path, Path]:
        """``pipeline bundle --target TARGET`` for this run: a folder and a ``.tar.gz`` (returned) under ``out``
        (default ``<artifacts>/bundles``). In the session that ran it, this works for a model given as an object
        too, which a later ``pipeline bundle`` in a new process cannot rebuild."""
        from .bundle import build as bundle
        from .store.paths import RunDir, check_output_dir

        run = RunDir(self.run_dir)
        out = Path(out) if out is not None else run.bundles
        with _library_errors():
            check_output_dir(out, "out")
            return bundle.make_bundle(run, target, out, self.data_root)


def run(**options) -> RunResult:
    """Run the pipeline up to ``stage`` (default: all), skipping stages whose inputs are unchanged.

    The keywords are ``pipeline run``'s options (``--batch-size`` is ``batch_size``), read from the same table
    (:data:`pipeline.config.OPTIONS`; an unknown keyword is a :class:`~pipeline.errors.PipelineError` naming the
    valid ones); ``None`` means the default, or the quick budget with ``quick=True`` (see
    :data:`pipeline.config.QUICK`). ``model`` is a registry name, ``"package.module:Class"``, or an ``nn.Module``
    object: the object is left as it is (a copy is trained), its run is ``<artifacts>/<class name>``, and its
    stages are skipped on a later call only when its class, layers and initial weights are the same. Raises
    :class:`~pipeline.errors.PipelineError` for every user error.
    """
    from . import stages
    from .config import build_config
    from .store.paths import RunDir
    from .store.schema import load_report

    given = _keywords(options)
    with _library_errors():
        until = stages.until(given.pop("stage"))
        cfg = build_config(**given)
        with _torch_state_kept():
            done = stages.run(cfg, until=until)
        rd = RunDir.for_model(cfg.artifacts, cfg.model)
        report = load_report(rd.report_json) if until == stages.STAGE_NAMES[-1] else None
    return RunResult(run_dir=rd.root, model=cfg.model, stages=done, report=report, data_root=cfg.data.root)


#: :func:`run`'s keywords: the rows of the option table that are not the command's own process options.
KEYWORDS = {o.name: o for o in OPTIONS if not o.command_only}
run.__signature__ = inspect.Signature(  # what help(pipeline.run) and editors show: the table's keywords
    [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                       annotation=o.api_type or (o.type if o.default is not None else o.type | None))
     for o in KEYWORDS.values()], return_annotation=RunResult)


def _keywords(options: dict) -> dict:
    """``options`` over the table's defaults; an unknown keyword is one paragraph naming the valid ones (a close
    spelling first), and a command-line-only option says why it is one."""
    import difflib

    unknown = [name for name in options if name not in KEYWORDS]
    if unknown:
        command = {o.name: o.command_only for o in OPTIONS if o.command_only}
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, KEYWORDS, n=1)
            hints.append(f"{name} is an option of the `pipeline run` command only: {command[name]}" if name in command
                         else f"{name!r} is not one" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PipelineError(f"pipeline.run() got {len(unknown)} unknown keyword{'s' if len(unknown) > 1 else ''}: "
                            f"{'; '.join(hints)}. Its keywords are {', '.join(KEYWORDS)}. Nothing was run.")
    return {name: options.get(name, o.default) for name, o in KEYWORDS.items()}


@contextlib.contextmanager
def _torch_state_kept():
    """Give back torch's process-wide state as it was: the intra-op thread count (``--threads`` and the timing
    set it) and the global random generators (training and QAT seed them). The caller's own random sequence
    then goes on as if the pipeline had not run."""
    import torch

    threads = torch.get_num_threads()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def _library_errors():
    """The errors the CLI turns into an exit code become :class:`PipelineError` with the same paragraph: the
    runtime's input errors, a missing backend, and a write the file system refused outside an atomic write."""
    from runtime.errors import BackendUnavailable, RuntimeInputError

    from .store.paths import DISK_ERRNOS, PATH_ERRNOS, disk_error, path_error

    try:
        yield
    except (RuntimeInputError, BackendUnavailable) as e:
        raise PipelineError(str(e)) from None
    except OSError as e:
        if e.errno in PATH_ERRNOS:  # a name too long for the OS, a symlink loop: the path's fault, not the disk's
            raise PipelineError(path_error(e)) from None
        if e.errno not in DISK_ERRNOS:
            raise
        raise disk_error(e.filename or "a file", e) from None
