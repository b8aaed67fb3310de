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
        from runtime.errors import BackendUnavailable, RuntimeInputError

        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            _console().print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except (RuntimeInputError, BackendUnavailable) as e:
            _console().print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _console().print("[bold red]interrupted:[/] finished stages and files are kept; rerun to continue.")
            raise typer.Exit(130) from None

    return wrapper


STAGE_HELP = "Stage to run up to: data, train, export, quantize, validate, or all (= every stage)."


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
        _console().print(f"[green]done:[/] report at {rd.report_md} and {rd.report_json}")


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


def main() -> None:
    app()
