"""``pipeline``: the command line. Builds validated configs at the edge and calls the stages.

Known errors (:class:`PipelineError`, the runtime's input errors) become one
paragraph on stderr and a non-zero exit; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from .config import (DataConfig, ExportConfig, QuantConfig, RunConfig, TrainConfig, ValidateConfig,
                     default_data_root)
from .errors import PipelineError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train an MNIST model, export ONNX (FP32/FP16/INT8) and prove parity and latency, in one command.",
)
log = logging.getLogger("pipeline")


def escape(text: str) -> str:
    """``text`` with rich markup escaped, so a path or key like ``[/x]`` is printed, never parsed."""
    from rich.markup import escape as _escape

    return _escape(text)


def _console():
    from rich.console import Console

    import shutil

    return Console(stderr=True, width=max(120, shutil.get_terminal_size((120, 24)).columns))


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True,
        handlers=[RichHandler(console=_console(), show_path=False, show_time=False, markup=False)],
    )
    for noisy in ("torch", "onnxscript", "onnx_ir", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def guarded(fn):
    """Turn known errors into a one-paragraph message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from runtime.errors import BackendUnavailable, RuntimeInputError

        try:
            return fn(*args, **kwargs)
        except PipelineError as e:  # messages quote user text (paths, JSON keys): escape rich markup
            _console().print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except (RuntimeInputError, BackendUnavailable) as e:
            _console().print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _console().print("[bold red]interrupted:[/] finished stages and files are kept; rerun to continue.")
            raise typer.Exit(130) from None
        except OSError as e:  # a write outside atomic_path (a library's temp file, the lock file) hit a full disk
            from .layout import DISK_ERRNOS, disk_error

            if e.errno not in DISK_ERRNOS:
                raise
            _console().print(f"[bold red]error:[/] {escape(str(disk_error(e.filename or 'a file', e)))}", highlight=False,
                             soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


STAGE_HELP = "Stage to run up to: data, train, export, quantize, engines, validate, or all (= every stage)."


@app.command()
@guarded
def run(
    stage: str = typer.Argument("all", help=STAGE_HELP),
    model: str = typer.Option("edgenet", "--model", "-m", help="Registry name (see `pipeline models`) or package.module:Class."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts", help="Output folder; each model gets <artifacts>/<model>/."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding MNIST/raw (default $PIPELINE_DATA or ~/.cache/edge-export-pipeline)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even if its inputs and config are unchanged."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: 4,000 training images, 2 epochs, short timings (under a minute)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs [default: 7]."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size [default: 128]."),
    optimizer: Optional[str] = typer.Option(None, help="adamw | adam | sgd [default: adamw]."),
    lr: Optional[float] = typer.Option(None, help="(Peak) learning rate [default: 0.003]."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay [default: 1e-4]."),
    schedule: Optional[str] = typer.Option(None, help="onecycle | cosine | step | none [default: onecycle]."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing [default: 0.05]."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random affine augmentation [default: on]."),
    seed: Optional[int] = typer.Option(None, help="Training seed [default: 0]."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda [default: auto]."),
    val_size: Optional[int] = typer.Option(None, help="Validation images held out of the 60,000 training images [default: 5000]."),
    quant: str = typer.Option("both", "--quant", help="INT8 variants: none | ptq | qat | both."),
    calib_size: Optional[int] = typer.Option(None, help="PTQ calibration images from the training split [default: 512]."),
    calib_method: str = typer.Option("minmax", help="PTQ calibration: minmax | entropy | percentile."),
    qat_epochs: Optional[int] = typer.Option(None, help="QAT fine-tuning epochs [default: 1]."),
    qat_lr: float = typer.Option(1e-4, help="QAT fine-tuning learning rate."),
    threads: int = typer.Option(0, help="Intra-op threads for training and timing (0 = all cores)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the pipeline up to STAGE (default: all), skipping stages whose inputs are unchanged."""
    from . import stages

    _setup_logging(verbose)
    until = "validate" if stage == "all" else stage
    if until not in stages.STAGE_NAMES:
        raise PipelineError(f"Unknown stage '{stage}'. Choose one of: all, {', '.join(stages.STAGE_NAMES)}.")
    cfg = build_config(
        model=model, artifacts=artifacts, data_root=data_root, force=force, quick=quick, threads=threads,
        train_overrides=dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                             weight_decay=weight_decay, schedule=schedule, label_smoothing=label_smoothing,
                             augment=augment, seed=seed, device=device),
        val_size=val_size,
        quant_overrides=dict(mode=quant, calib_size=calib_size, calib_method=calib_method, qat_epochs=qat_epochs,
                             qat_lr=qat_lr),
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(), transient=True) as progress:
        stages.run(cfg, until=until, progress=progress)
    rd = stages.RunDir.for_model(cfg.artifacts, cfg.model)
    if until == "validate":
        _console().print(f"[green]done:[/] report at {rd.report_md}, {rd.report_html} and {rd.report_json}")


def build_config(*, model: str, artifacts: Path, data_root: Optional[Path], force: bool, quick: bool,
                 threads: int = 0, train_overrides: dict | None = None, val_size: Optional[int] = None,
                 quant_overrides: dict | None = None) -> RunConfig:
    """Defaults, then --quick's budget, then explicit options (explicit always wins)."""
    data = DataConfig(root=data_root or default_data_root())
    train = TrainConfig(threads=threads)
    validate = ValidateConfig(threads=threads)
    if quick:
        data = replace(data, val_size=1000, max_train=4000)
        train = replace(train, epochs=2)
        validate = replace(validate, warmup=3, iterations=20, max_seconds=0.1)
        quant_cfg = dict(calib_size=128, qat_max_images=1024, sqnr_images=64)
    else:
        quant_cfg = {}
    if val_size is not None:
        data = replace(data, val_size=val_size)
    explicit = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    if explicit:
        train = replace(train, **explicit)
    quant_cfg.update({k: v for k, v in (quant_overrides or {}).items() if v is not None})
    return RunConfig(model=model, artifacts=artifacts, data=data, train=train, export=ExportConfig(),
                     validate=validate, quant=QuantConfig(**quant_cfg), force=force, quick=quick)


@app.command("models")
@guarded
def list_models() -> None:
    """List the built-in models with parameter counts and MACs per image."""
    from rich.table import Table

    from . import models

    table = Table(title="Built-in models (or --model package.module:Class)")
    for col in ("name", "parameters", "MACs / image", "description"):
        table.add_column(col, justify="right" if col in ("parameters", "MACs / image") else "left")
    for spec in models.REGISTRY.values():
        m = spec.build()
        table.add_row(spec.name, f"{models.param_count(m):,}", f"{models.macs_per_image(m):,}", spec.summary)
    from rich.console import Console

    Console().print(table)


@app.command()
@guarded
def report(run_dir: Path = typer.Argument(Path("artifacts/edgenet"),
                                          help="A run folder holding report.json, or that report.json itself.")) -> None:
    """Rebuild report.md, report.html and the figures from report.json alone."""
    from . import manifest
    from . import report as report_mod
    from .schema import check_report, strict_loads

    if run_dir.is_file() and run_dir.name == "report.json":  # the file itself: a likely, harmless slip
        run_dir = run_dir.parent
    elif run_dir.exists() and not run_dir.is_dir():
        raise PipelineError(f"{run_dir} is neither a run folder holding report.json nor a report.json file; "
                            "give the run folder (artifacts/<model>) or its report.json. Nothing was written.")
    path = run_dir / "report.json"
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run `pipeline run all` first, or give the run folder "
                            "(artifacts/<model>) that holds it.")
    # in a run folder, refuse a report.json that differs from what validate wrote (and a damaged manifest)
    damaged = [p for p in manifest.check(run_dir, manifest.load(run_dir / "stages.json")) if p.path == "report.json"]
    manifest.refuse_damaged(run_dir, damaged)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path} could not be read ({e.strerror or e}). Nothing was written.") from None
    try:
        data = strict_loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included
        raise PipelineError(f"{path} is not a pipeline report (invalid JSON: {e}). Nothing was written.") from None
    check_report(data, path)  # every problem named, before anything is rendered or rewritten
    written = report_mod.write_all(data, run_dir)
    _console().print(f"[green]rebuilt:[/] {escape(', '.join(str(p) for p in written[1:3]))} and "
                     f"{len(written) - 3} figures")


@app.command()
@guarded
def predict(
    images: list[Path] = typer.Argument(..., help="PNG/JPEG/... files of any size or mode."),
    model: Path = typer.Option(Path("artifacts/edgenet/export/model-fp32.onnx"), "--model", "-m",
                               help="An ONNX model exported by this pipeline (preprocessing is read from its metadata)."),
    top: int = typer.Option(1, help="Show the top-k classes."),
) -> None:
    """Classify image files: each is converted to a 28x28 MNIST-style digit, then run with onnxruntime."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from runtime.classifier import Classifier
    from runtime.preprocess import load_image

    if top < 1:
        raise PipelineError("--top must be at least 1.")
    arrays = [load_image(p) for p in images]  # fails on the first unreadable file, before any inference
    with Classifier(model) as clf:
        pred = clf.predict(np.stack(arrays))
        classes = list(clf.classes)
    table = Table(title=f"{model.name}")
    for col in ("image", "label", "probability", f"top {top}" if top > 1 else ""):
        if col:
            table.add_column(col)
    for i, path in enumerate(images):
        order = np.argsort(-pred.probabilities[i])[:top]
        cells = [path.name, pred.labels[i], f"{pred.probabilities[i, order[0]]:.4f}"]
        if top > 1:
            cells.append(", ".join(f"{classes[k]}:{pred.probabilities[i, k]:.3f}" for k in order))
        table.add_row(*cells)
    Console().print(table)


@app.command("bundle")
@guarded
def bundle_cmd(
    target: str = typer.Option(..., "--target", help="jetson | gpu | cpu"),
    model: str = typer.Option("edgenet", "--model", "-m", help="Which run to bundle."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the bundle [default: <artifacts>/bundles]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
) -> None:
    """Folder + .tar.gz with the ONNX variants, test data, reference outputs, build and bench scripts."""
    from . import bundle
    from .layout import RunDir

    _setup_logging()
    run_dir = RunDir.for_model(artifacts, model)
    folder, tar = bundle.make_bundle(run_dir, target, out or artifacts / "bundles", data_root or default_data_root())
    from rich.markup import escape

    _console().print(f"[green]bundle:[/] {escape(str(folder))} and {escape(str(tar))}")


@app.command()
@guarded
def verify(path: Path = typer.Argument(..., help="A bundle folder, a bundle .tar.gz, or a run folder (artifacts/<model>).")) -> None:
    """Check every file against its recorded SHA-256 (bundle MANIFEST.json or a run's stages.json)."""
    from rich.console import Console

    from . import bundle

    if not path.exists():
        raise PipelineError(f"{path} does not exist.")
    from rich.markup import escape

    problems = bundle.verify(path)
    if problems:  # member names come from the archive: escaped, so a name like "[/x]" is printed, not parsed
        _console().print(f"[bold red]verify failed:[/] {escape(str(path))}: " + escape("; ".join(problems)),
                         highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    Console().print(f"{path}: every file matches its recorded SHA-256.", highlight=False)


@app.command("check-qdq")
@guarded
def check_qdq_cmd(model: Path = typer.Argument(..., help="An INT8 QDQ .onnx file.")) -> None:
    """Check an INT8 ONNX file against the explicit-quantization rules TensorRT 10 and 11 need."""
    from exporters.qdq import RULES, QDQCheckError, check_qdq, format_report

    try:
        violations = check_qdq(model)
    except QDQCheckError as e:
        raise PipelineError(str(e)) from None
    if violations:
        _console().print(format_report(violations, model), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    from rich.console import Console

    Console().print(f"{model}: conforms to all {len(RULES)} QDQ rules (" + "; ".join(RULES) + ")", highlight=False)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise PipelineError(f"{what} must be comma-separated positive integers, got '{text}'.")
    return values


@app.command()
@guarded
def bench(
    model: Path = typer.Argument(..., help="Any ONNX image classifier."),
    batches: str = typer.Option("1,8,64,256", "--batch", help="Comma-separated batch sizes to sweep."),
    warmup: int = typer.Option(10, help="Untimed calls before timing each batch size."),
    warmup_seconds: float = typer.Option(0.5, help="...and keep warming up until this many seconds passed."),
    iterations: int = typer.Option(300, help="Timed calls per batch size (at most)."),
    duration: float = typer.Option(3.0, help="Stop timing a batch size after this many seconds (at least 10 calls)."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = its default, one per core)."),
    provider: str = typer.Option("cpu", help="cpu | cuda (needs onnxruntime-gpu and a GPU)."),
    shape: Optional[str] = typer.Option(None, help="Per-image input shape, e.g. 1,28,28, when the model does not say."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Latency percentiles and throughput of an ONNX model over a batch sweep, on onnxruntime."""
    from rich.console import Console
    from rich.table import Table

    from runtime.bench import METHOD, NOISY_CV, image_shape_of, sweep
    from runtime.onnxrt import OnnxrtRunner

    from . import efficiency, environment
    from .layout import write_json

    sizes = _ints(batches, "--batch")
    if iterations < 1 or warmup < 0 or duration <= 0:
        raise PipelineError("--iterations must be >= 1, --warmup >= 0 and --duration > 0.")
    override = _ints(shape, "--shape") if shape else None
    with OnnxrtRunner(model, provider=provider, threads=threads) as runner:
        image_shape = image_shape_of(runner, override)
        results = sweep(runner, sizes, image_shape, warmup=warmup, warmup_seconds=warmup_seconds,
                        iterations=iterations, max_seconds=duration)
    try:
        macs = efficiency.onnx_macs_per_image(model, image_shape)
    except Exception:  # shape inference can fail on exotic graphs; efficiency is then omitted
        macs = None
    peak = efficiency.peak_gflops() if macs and provider == "cpu" else None
    table = Table(title=f"{model.name} on onnxruntime-{provider}, input {('N', *image_shape)}")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "CV", "images/s", "GFLOP/s"):
        table.add_column(col, justify="right")
    rows = []
    for b, st in results.items():
        eff = efficiency.achieved(macs, st.throughput_per_s, peak) if macs else {}
        rows.append({**st.as_dict(), **eff})
        table.add_row(str(b), f"{st.p50_ms:.3f}", f"{st.p90_ms:.3f}", f"{st.p99_ms:.3f}", f"{st.mean_ms:.3f}",
                      f"{st.std_ms:.3f}", f"{st.cv:.2f}" + (" !" if st.noisy else ""), f"{st.throughput_per_s:,.0f}",
                      f"{eff['gflops']:.1f}" if eff else "-")
    out = Console()
    out.print(table)
    if macs:
        out.print(f"MACs per image: {macs:,} (from the ONNX graph). CPU peak: "
                  + (f"{peak:.0f} GFLOP/s ({efficiency.PEAK_METHOD}); at batch {sizes[-1]} the model reaches "
                     f"{100 * rows[-1]['fraction_of_peak']:.1f} % of it." if peak else "not measured for GPU providers."))
    if any(st.noisy for st in results.values()):
        out.print(f"[yellow]warning:[/] rows marked ! have a coefficient of variation above {NOISY_CV}: the machine "
                  "is too noisy to trust small differences; close other programs and rerun.")
    out.print(f"Timing method: {METHOD}; warm-up {warmup} calls and {warmup_seconds} s; up to {iterations} calls or "
              f"{duration} s per batch size.", highlight=False)
    if json_out:
        write_json(json_out, {"model": str(model), "provider": provider, "image_shape": list(image_shape),
                              "macs_per_image": macs, "peak_gflops": peak, "peak_method": efficiency.PEAK_METHOD,
                              "method": METHOD, "results": rows, "environment": environment.capture(threads)})


def main() -> None:
    app()
