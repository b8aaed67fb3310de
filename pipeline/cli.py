"""``pipeline``: the command line. Builds validated configs at the edge and calls the stages.

Known errors (:class:`PipelineError`, the runtime's input errors) become one
paragraph on stderr and a non-zero exit; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Optional

import typer

from .config import (OPTIONS, QUICK, RUN_OPTIONS, LaunchConfig, Option, build_config, default_data_root, default_of,
                     parse_nproc, shown)
from .console import console as _console, error as _error, escape, literal, setup_logging as _setup_logging
from .devices.commands import app as device_app
from .errors import PipelineError
from . import targets
from .guard import ADVICE, guarded
from .store.paths import RunDir
from .variants import BY_NAME

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Train an MNIST model, export ONNX (FP32/FP16/INT8) and prove parity and latency, in one command.",
)
log = logging.getLogger("pipeline")


def default(option: str) -> str:
    """``[default: ...]`` of a ``pipeline run`` option, read from the config dataclasses and the quick budget, so
    the help never restates a number that config.py owns (``7 (--quick: 2)``)."""
    target = RUN_OPTIONS[option][0] if option in RUN_OPTIONS else option
    text = shown(default_of(target))
    section, _, name = target.rpartition(".")
    if name in QUICK.get(section, {}):
        text += f" (--quick: {shown(QUICK[section][name])})"
    return text


def with_default(text: str, option: str) -> str:
    """An option's help followed by its ``[default: ...]`` (escaped: the help is rich markup, where a bare
    ``[default: 7]`` would be read as a style tag and vanish)."""
    return f"{text} " + escape(f"[default: {default(option)}]")


def _typer_parameter(option: Option) -> inspect.Parameter:
    """``option`` (a row of :data:`pipeline.config.OPTIONS`) as the typer parameter a hand-written signature
    would declare: ``name: Optional[int] = typer.Option(None, help=...)``."""
    text = with_default(option.text(), option.name) if option.targets else option.text()
    if option.argument:
        info = typer.Argument(option.default, help=text)
    else:
        info = typer.Option(option.default, *option.flags, help=text, metavar=option.metavar)
    kind = Optional[option.type] if option.default is None else option.type
    return inspect.Parameter(option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info, annotation=kind)


def from_options(fn):
    """Give ``fn(stage, nproc, verbose, **options)`` the signature typer reads, one parameter per row of
    :data:`pipeline.config.OPTIONS`, so the command's options, flags, help and defaults are that table's."""
    fn.__signature__ = inspect.Signature([_typer_parameter(o) for o in OPTIONS], return_annotation=None)
    return fn


@app.command()
@guarded
@from_options
def run(stage: str, nproc: Optional[str], verbose: bool, **options) -> None:
    """Run the pipeline up to STAGE (default: all), skipping stages whose inputs are unchanged."""
    from .training import distributed
    from . import stages

    until = stages.until(stage)
    launch = LaunchConfig(nproc=parse_nproc(nproc))
    place = distributed.from_env()  # started by torchrun (multi-node form) or by our own --nproc launcher
    if place is not None and nproc is not None:
        raise PipelineError(f"--nproc {nproc} was given inside a torchrun worker (WORLD_SIZE={place.world}); "
                            "torchrun already started the workers: drop --nproc and set torchrun's "
                            "--nproc-per-node instead. Nothing was written.")
    if place is None or place.rank == 0:
        _setup_logging(verbose)
    cfg = build_config(world_size=place.world if place is not None else launch.nproc, **options)
    if place is not None:  # a torchrun worker: join the group; rank 0 runs the stages
        distributed.run_rank(cfg, until, launch, _execute)
        if place.rank != 0:
            return
    elif launch.nproc > 1:
        distributed.launch(cfg, until, launch, _execute, verbose)
    else:
        _execute(cfg, until)
    rd = stages.RunDir.for_model(cfg.artifacts, cfg.model)
    if until == "validate":
        _console().print(literal(("done:", "green"), f" report at {rd.report_md}, {rd.report_html} and "
                                 f"{rd.report_json}"), soft_wrap=True)


def _execute(cfg, until: str, group=None) -> None:
    """The stages with progress bars: the single process's whole run, and rank 0's in a DDP run (``group``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import stages

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(), transient=True) as progress:
        stages.run(cfg, until=until, progress=progress, **({"group": group} if group is not None else {}))


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
@guarded(advice=ADVICE["report"])
def report(run_dir: Path = typer.Argument(Path("artifacts/edgenet"),
                                          help="A run folder holding report.json, or that report.json itself.")) -> None:
    """Rebuild report.md, report.html and the figures from report.json alone."""
    from .store import manifest
    from .report import assemble as report_mod
    from .store.schema import load_report

    if run_dir.is_file() and run_dir.name == RunDir.relative().report_json.name:  # the file itself: a harmless slip
        run_dir = run_dir.parent
    elif run_dir.exists() and not run_dir.is_dir():
        raise PipelineError(f"{run_dir} is neither a run folder holding report.json nor a report.json file; "
                            "give the run folder (artifacts/<model>) or its report.json. Nothing was written.")
    run = RunDir(run_dir)
    path = run.report_json
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run `pipeline run all` first, or give the run folder "
                            "(artifacts/<model>) that holds it.")
    # in a run folder, refuse a report.json that differs from what validate wrote (and a damaged manifest)
    # (only report.json is hashed: the command reads nothing else; unrecorded means a folder of the user's own)
    damaged = [p for p in manifest.check_files(run_dir, manifest.load(run.stages), [run.relpath(path)])
               if p.kind != "unrecorded"]
    manifest.refuse_damaged(run_dir, damaged)
    data = load_report(path, then="Nothing was written.")  # every problem named, before anything is rendered
    written = report_mod.write_all(data, run_dir)
    _console().print(literal(("rebuilt:", "green"), f" {', '.join(str(p) for p in written[1:3])} and "
                             f"{len(written) - 3} figures"), soft_wrap=True)


@app.command()
@guarded
def predict(
    images: list[Path] = typer.Argument(..., help="PNG/JPEG/... files of any size or mode."),
    model: Path = typer.Option(RunDir.for_model(Path("artifacts"), "edgenet").export_file(BY_NAME["onnx-fp32"].file),
                               "--model", "-m",
                               help="An ONNX model exported by this pipeline (preprocessing is read from its metadata)."),
    top: int = typer.Option(1, help="Show the top-k classes (more than the model has shows them all)."),
) -> None:
    """Classify image files: each is converted to a 28x28 MNIST-style digit, then run with onnxruntime."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from runtime.classifier import Classifier
    from runtime.preprocess import load_image

    if top < 1:
        raise PipelineError("--top must be at least 1.")
    from .store import manifest

    manifest.require_intact_if_recorded(model, "pipeline predict")  # a run's artifact must be what it wrote
    arrays = [load_image(p) for p in images]  # fails on the first unreadable file, before any inference
    with Classifier(model) as clf:
        pred = clf.predict(np.stack(arrays))
        classes = list(clf.classes)
    top = min(top, len(classes))
    table = Table(title=literal(model.name))  # file names and the model's labels are user text: never markup
    for col in ("image", "label", "probability", f"top {top}" if top > 1 else ""):
        if col:
            table.add_column(col)
    for i, path in enumerate(images):
        order = np.argsort(-pred.probabilities[i])[:top]
        cells = [path.name, pred.labels[i], f"{pred.probabilities[i, order[0]]:.4f}"]
        if top > 1:
            cells.append(", ".join(f"{classes[k]}:{pred.probabilities[i, k]:.3f}" for k in order))
        table.add_row(*(literal(c) for c in cells))
    Console().print(table)


@app.command("bundle")
@guarded(advice=ADVICE["bundle"])
def bundle_cmd(
    target: str = typer.Option(..., "--target", help=targets.help_text()),
    model: str = typer.Option("edgenet", "--model", "-m", help="Which run to bundle."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the bundle [default: <artifacts>/bundles]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    ort_web: Optional[Path] = typer.Option(None, "--ort-web", help="web: the .tgz of `npm pack onnxruntime-web@<pinned>` "
                                           "made elsewhere, instead of fetching it into the user cache."),
) -> None:
    """Folder + .tar.gz with the ONNX variants, test data, reference outputs, build and bench scripts."""
    from .bundle import build as bundle
    from .store.paths import check_output_dir
    from .signals import as_interrupt

    _setup_logging()
    run_dir = RunDir.for_model(artifacts, model)
    out = out or run_dir.bundles
    check_output_dir(out, "--out")  # before reading 10,000 test images and running the model on them
    with as_interrupt():  # SIGTERM/SIGHUP clean up like Ctrl-C
        folder, tar = bundle.make_bundle(run_dir, target, out, data_root or default_data_root(), ort_web)
    _console().print(literal(("bundle:", "green"), f" {folder} and {tar}"), soft_wrap=True)


@app.command()
@guarded(advice=ADVICE["bundle"])
def demo(
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free port)."),
    model: str = typer.Option("edgenet", "--model", "-m", help="Which run's web bundle to serve."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    ort_web: Optional[Path] = typer.Option(None, "--ort-web", help="As for `pipeline bundle --target web`."),
    lan: bool = typer.Option(False, "--lan", help="Serve on the local network, behind a random token in the URL (printed, "
                             "and drawn as a QR code), with a 'measure this device' page whose figures are recorded "
                             "in the run (docs/devices.md)."),
    bind: Optional[str] = typer.Option(None, "--bind", help="With --lan: the IPv4 address to listen on (default: this "
                                       "host's address on its local network)."),
) -> None:
    """Serve the web bundle (built first if missing, checked like `pipeline verify`) on 127.0.0.1 and print its URL;
    Ctrl-C stops it. With --lan, on the local network for a phone's browser to measure itself."""
    from .bundle import build as bundle, demo as demo_mod
    from .signals import as_interrupt

    if bind is not None and not lan:
        raise PipelineError("--bind chooses the address of `pipeline demo --lan`; add --lan (without it the demo "
                            "listens on 127.0.0.1 only).")
    _setup_logging()
    run = RunDir.for_model(artifacts, model)
    out = run.bundles
    folder = run.bundle(out, targets.SITE)  # the very name make_bundle writes (a pkg.mod:Class model included)
    with as_interrupt():  # SIGTERM/SIGHUP: the build cleans up like Ctrl-C, serving stops like Ctrl-C
        if lan:
            from .devices import phone

            server = phone.PhoneServer(folder, port, phone.lan_address(bind))  # binds first, like the plain demo
        else:
            server = demo_mod.serve(folder, port)  # binds first: a busy port is refused before minutes of bundling
        try:
            if not (folder / "index.html").is_file():
                bundle.make_bundle(run, targets.SITE, out, data_root or default_data_root(), ort_web)
            demo_mod.check_bundle(folder)  # nothing is served from a bundle that `pipeline verify` fails
            if lan:  # the page's test images and the reference logits it is judged against
                from .dataset import ensure_raw

                server.prepare(run, ensure_raw(data_root or default_data_root()))
            server.open_folder()
        except BaseException:
            server.server_close()
            raise
        _console().print(literal(("serving:", "green"), f" {folder} at {server.url} (Ctrl-C stops it)"),
                         soft_wrap=True)
        if lan:  # drawn with block characters: printed as it is, never through rich's markup
            import sys

            qr = phone.qr_text(server.url)
            print(qr if qr else "(a QR code of the URL needs segno: pip install segno)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            _console().print(literal("stopped."))
        finally:
            server.server_close()


@app.command()
@guarded
def verify(path: Path = typer.Argument(..., help="A bundle folder, a bundle .tar.gz, or a run folder (artifacts/<model>).")) -> None:
    """Check every file against its recorded SHA-256 (bundle MANIFEST.json or a run's stages.json)."""
    from rich.console import Console

    from .bundle import build as bundle

    if not path.exists():
        raise PipelineError(f"{path} does not exist.")
    problems = bundle.verify(path)
    if problems:
        _error(f"{path}: " + "; ".join(problems), prefix="verify failed:")
        raise typer.Exit(1)
    Console().print(literal(f"{path}: every file matches its recorded SHA-256."), soft_wrap=True)


@app.command("check-qdq")
@guarded
def check_qdq_cmd(model: Path = typer.Argument(..., help="An INT8 QDQ .onnx file.")) -> None:
    """Check an INT8 ONNX file against the explicit-quantization rules TensorRT 10 and 11 need."""
    from exporters.qdq import RULES, QDQCheckError, check_qdq, format_report

    try:
        violations = check_qdq(model)
    except QDQCheckError as e:  # name the file, as every other message of this command does
        raise PipelineError(str(e) if str(model) in str(e) else f"{model}: {e}") from None
    if violations:  # node and tensor names come from the file: literal text
        _console().print(literal(format_report(violations, model)), soft_wrap=True)
        raise typer.Exit(1)
    from rich.console import Console

    Console().print(literal(f"{model}: conforms to all {len(RULES)} QDQ rules (" + "; ".join(RULES) + ")"),
                    soft_wrap=True)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise PipelineError(f"{what} must be comma-separated positive integers, got '{text}'.")
    return values


@app.command()
@guarded(advice=ADVICE["bench"])
def bench(
    models: list[Path] = typer.Argument(..., help="One or more ONNX image classifiers; several are timed together, "
                                                  "in rounds, and compared."),
    batches: str = typer.Option("1,8,64,256", "--batch", help="Comma-separated batch sizes to sweep."),
    warmup: int = typer.Option(10, help="Untimed calls per model and batch size before the first round (at most 10,000)."),
    warmup_seconds: float = typer.Option(0.5, help="...and keep warming up until this many seconds passed (0 to 3600)."),
    rounds: int = typer.Option(7, help="Timing rounds (3 to 1000): each gives every model a burst at every batch size, "
                                       "the order rotated; figures are medians over rounds."),
    iterations: int = typer.Option(100, help="Timed calls per burst (at most)."),
    duration: float = typer.Option(0.3, help="Seconds per burst (at most; at least 3 calls; at most 3600 s)."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0 = its default, one per core; at most 1024)."),
    provider: str = typer.Option("cpu", help="cpu | cuda (needs onnxruntime-gpu and a GPU)."),
    shape: Optional[str] = typer.Option(None, help="Per-image input shape, e.g. 1,28,28, when the model does not say."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Latency percentiles and throughput of ONNX models over a batch sweep, on onnxruntime, timed in interleaved
    rounds; with several models, which is faster beyond the noise (else a tie, broken by the smaller file)."""
    import contextlib

    from rich.console import Console
    from rich.table import Table

    from runtime.bench import (METHOD, NOISY_CV, NOISY_SPREAD_PCT, ROUNDS_METHOD, SPREAD, Candidate, call_limit,
                               check_rounds, feeds, image_shape_of, interleave, pick, untrusted)
    from runtime.onnxrt import OnnxrtRunner

    from .measure import efficiency, environment
    from .store.paths import check_output_file, write_json

    sizes = _ints(batches, "--batch")
    override = _ints(shape, "--shape") if shape else None
    check_rounds(rounds=rounds, burst_calls=iterations, burst_seconds=duration, warmup=warmup,
                 warmup_seconds=warmup_seconds,
                 names=("--rounds", "--iterations", "--duration", "--warmup", "--warmup-seconds"))
    if json_out:
        check_output_file(json_out, "--json")  # before the benchmark, so its results are never lost
    from .store import manifest

    for model in models:
        manifest.require_intact_if_recorded(model, "pipeline bench")  # a run's artifact must be what it wrote
    # two copies of one file are two candidates: name them by path where their file names collide
    names = [m.name for m in models]
    labels = [str(m) if names.count(m.name) > 1 else m.name for m in models]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
    with contextlib.ExitStack() as active:
        calls, shapes = {}, {}
        for label, model in zip(labels, models):  # every model opened and checked before anything is timed
            runner = active.enter_context(OnnxrtRunner(model, provider=provider, threads=threads,
                                                         time_limit=call_limit(duration, warmup_seconds)))  # a model that never returns
            shapes[label] = image_shape_of(runner, override)  # also refuses models without exactly one input
            calls[label] = feeds(runner, sizes, shapes[label])
        results, signals = interleave(calls, rounds=rounds, burst_calls=iterations, burst_seconds=duration,
                                      warmup=warmup, warmup_seconds=warmup_seconds)
    peak = None
    out = Console()
    report = []
    for label, model in zip(labels, models):
        try:
            macs = efficiency.onnx_macs_per_image(model, shapes[label])
        except Exception:  # shape inference can fail on exotic graphs; efficiency is then omitted
            macs = None
        if macs and provider == "cpu" and peak is None:
            peak = efficiency.peak_gflops()
        table = Table(title=literal(f"{model.name} on onnxruntime-{provider}, input {('N', *shapes[label])}"))
        for col in ("batch", "p50 ms", "spread", "p90 ms", "p99 ms", "mean ms", "std ms", "CV", "images/s", "GFLOP/s"):
            table.add_column(col, justify="right")
        rows = []
        for b, st in results[label].items():
            eff = efficiency.achieved(macs, st.throughput_per_s, peak) if macs else {}
            rows.append({**st.as_dict(), **eff})
            table.add_row(str(b), f"{st.p50_ms:.3f}", f"{st.spread_pct:.1f} %" + (" !" if st.noisy else ""),
                          f"{st.p90_ms:.3f}", f"{st.p99_ms:.3f}", f"{st.mean_ms:.3f}", f"{st.std_ms:.3f}",
                          f"{st.cv:.2f}", f"{st.throughput_per_s:,.0f}", f"{eff['gflops']:.1f}" if eff else "-")
        out.print(literal(f"model: {model}"), soft_wrap=True)  # the whole path, never wrapped (the title shows the name)
        out.print(table)
        if macs:
            out.print(f"MACs per image: {macs:,} (from the ONNX graph). CPU peak: "
                      + (f"{peak:.0f} GFLOP/s ({efficiency.PEAK_METHOD}); at batch {sizes[-1]} the model reaches "
                         f"{100 * rows[-1]['fraction_of_peak']:.1f} % of it." if peak else
                         "not measured for GPU providers."))
        report.append({"model": str(model), "label": label, "size_bytes": model.stat().st_size,
                       "image_shape": list(shapes[label]), "macs_per_image": macs, "results": rows})
    verdict = None
    if len(models) > 1:
        small = min(sizes)
        verdict = pick([Candidate(r["label"], results[r["label"]][small].p50_ms, results[r["label"]][small].spread_pct,
                                  r["size_bytes"], rounds=results[r["label"]][small].round_p50_ms) for r in report])
        out.print(literal(f"Faster at batch {small}: {verdict.winner} ({verdict.sentence()})."), soft_wrap=True)
    why = untrusted(signals, results)
    if why:
        out.print(literal(("warning:", "yellow"), " the figures are not to be trusted: " + "; ".join(why) + ". Rows "
                          f"marked ! have a spread above {NOISY_SPREAD_PCT:g} % or a coefficient of variation above "
                          f"{NOISY_CV}; close other programs and rerun."), soft_wrap=True)
    out.print(f"Timing method: {METHOD}; {ROUNDS_METHOD}: {rounds} rounds, bursts of up to {iterations} calls or "
              f"{duration} s, after {warmup} warm-up calls and {warmup_seconds} s per model and batch size. Spread: "
              f"{SPREAD}.", highlight=False)
    if json_out:
        check_output_file(json_out, "--json")  # again: the path may have been replaced while the benchmark ran
        write_json(json_out, {"provider": provider, "models": report, "peak_gflops": peak,
                              "peak_method": efficiency.PEAK_METHOD, "method": METHOD, "rounds_method": ROUNDS_METHOD,
                              "spread": SPREAD, "rounds": rounds, "verdict": verdict.as_dict() if verdict else None,
                              "contention": {**signals, "untrusted": why}, "environment": environment.capture(threads)})
        out.print(literal(f"results written to {json_out}"), soft_wrap=True)


app.add_typer(device_app, name="device")  # after the commands above, so `pipeline --help` lists it last


def main() -> None:
    app()
