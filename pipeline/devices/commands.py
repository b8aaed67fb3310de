"""``pipeline device``: measure on the user's own devices and bring the numbers home (docs/devices.md).

``device run HOST [HOST ...]`` measures over ssh (:mod:`.measure`); ``device add RESULT.json`` records a result
``bench.py --json`` wrote on a device the workstation cannot reach. Both check the result (:mod:`.result`), record
it (:mod:`.record`) and rewrite the report (:func:`.report.refresh`). Exit 0: every device measured and equals the
report; 1: recorded, but some device's figures disagree with the report (named); 2: a fault (one paragraph each).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from pipeline import targets

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure the run's bundle on your own devices (ssh, or a result file) and record it in the report.")

_print_lock = threading.Lock()


def _say(text: str, err: bool = False) -> None:
    from ..console import shown

    with _print_lock:
        print(shown(text), file=sys.stderr if err else sys.stdout, flush=True)


def _read_report(run_dir: Path) -> dict:
    from pipeline.store.paths import RunDir
    from pipeline.store.schema import load_report

    path = RunDir(run_dir).report_json
    if not path.is_file():
        from ..errors import PipelineError

        raise PipelineError(f"{path} does not exist; run `pipeline run all` first (or give --model/--artifacts of a "
                            "finished run). Nothing was recorded.")
    return load_report(path, "Nothing was recorded.")


def _disagreements(m: dict) -> list[str]:
    return [f"{m['name']}: `{k}` equals report: NO ({'; '.join(v.get('failed_checks') or [])}; flipped test images: "
            f"{', '.join(map(str, v['flipped'][:20]))}{', ...' if len(v['flipped']) > 20 else ''})"
            for k, v in m["variants"].items() if not v["equals_report"]]


def _guard():
    from ..guard import ADVICE, guarded

    return guarded(advice=ADVICE["bundle"])


@app.command("run")
def run_cmd(
    hosts: List[str] = typer.Argument(..., help="ssh destinations ([user@]host or a Host of your ssh config); several "
                                      "are measured in parallel."),
    target: str = typer.Option(..., "--target", help=" | ".join(
        f"{t.name}{' (TensorRT engines built on the device, then bench.py --engines)' if t.engines else ''}"
        for t in targets.BUNDLES if t.runner == "python")),
    model: str = typer.Option("edgenet", "--model", "-m", help="Which run to measure."),
    name: Optional[str] = typer.Option(None, "--name", help="The device's name in the report [default: the host]; "
                                       "one host only."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="As for `pipeline bundle`."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="An ssh_config file instead of ~/.ssh/config "
                                              "(ssh -F)."),
    ssh_option: List[str] = typer.Option([], "--ssh-option", "-o", help="Extra ssh -o Key=Value (repeatable); "
                                         "options that turn host-key checking off are refused."),
    connect_timeout: int = typer.Option(15, "--connect-timeout", min=1, max=600,
                                        help="Seconds before an unreachable host is given up."),
    python: str = typer.Option("python3", "--python", help="The device's Python (e.g. a venv's bin/python)."),
    remote_dir: str = typer.Option(".cache/edge-export-pipeline", "--remote-dir",
                                   help="Where the bundle goes on the device (relative to the login's home)."),
    build: str = typer.Option("python", "--build", help="jetson/gpu: build engines with build_engines.py (python) or "
                              "build_engines.sh (trtexec)."),
    trtexec: str = typer.Option("", "--trtexec", help="The device's trtexec, when neither on its PATH nor in "
                                "/usr/src/tensorrt/bin (with --build trtexec)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=3, help="bench.py --rounds on the device."),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.001, help="bench.py --seconds on the device."),
) -> None:
    """Build (or reuse) the bundle, copy it with your ssh, run bench.py on each device, record the results."""
    _guard()(_run)(hosts=hosts, target=target, model=model, name=name, artifacts=artifacts, data_root=data_root,
                   ssh_config=ssh_config, ssh_option=ssh_option, connect_timeout=connect_timeout, python=python,
                   remote_dir=remote_dir, build=build, trtexec=trtexec, rounds=rounds, seconds=seconds)


def _run(*, hosts, target, model, name, artifacts, data_root, ssh_config, ssh_option, connect_timeout, python,
         remote_dir, build, trtexec, rounds, seconds) -> None:
    from ..config import default_data_root
    from ..errors import PipelineError
    from pipeline.store.paths import RunDir, sha256_file
    from pipeline.signals import as_interrupt
    from pipeline.store import devices as record

    from . import measure, result
    from .refresh import refresh
    from .ssh import SshConfig, check_remote_dir

    if target not in measure.NEEDS:
        raise PipelineError(f"--target must be one of {', '.join(measure.NEEDS)}; got {target!r}. (A phone's browser "
                            "is measured through `pipeline demo`.)")
    if build not in ("python", "trtexec"):
        raise PipelineError(f"--build must be python or trtexec; got {build!r}.")
    if name is not None and len(hosts) > 1:
        raise PipelineError("--name names one device; give one host with it, or leave it out (each device is then "
                            "named after its host).")
    if ssh_config is not None and not ssh_config.is_file():
        raise PipelineError(f"--ssh-config {ssh_config} is not a file.")
    names = {h: (name or h) for h in hosts}
    for h, n in names.items():
        why = record._name_problem(n, "the device name")
        if why:
            raise PipelineError(f"{why} (host {h!r}); give a plain --name.")
    slugs = {}
    for h, n in names.items():
        if record.slug(n) in slugs:
            raise PipelineError(f"{slugs[record.slug(n)]!r} and {h!r} would be recorded under the same name "
                                f"({record.slug(n)}); measure them in separate commands with --name.")
        slugs[record.slug(n)] = h
    bench_args = tuple([*(["--rounds", str(rounds)] if rounds else []), *(["--seconds", str(seconds)] if seconds else [])])
    cfg = measure.DeviceRun(target=target, ssh=SshConfig(ssh_config, tuple(ssh_option), connect_timeout),
                            python=python, remote_dir=check_remote_dir(remote_dir), build=build, trtexec=trtexec,
                            bench_args=bench_args)
    cfg.ssh.common()  # refuses options that would turn host-key checking off, before anything is built
    run = RunDir.for_model(artifacts, model)
    report = _read_report(run.root)
    with as_interrupt():
        folder, tar = measure.ensure_bundle(run, target, run.bundles, data_root or default_data_root(),
                                            on_line=lambda line: _say(line))
    manifest_sha = sha256_file(folder / "MANIFEST.json")
    models = record.current_models(run.root)
    recorded: list[dict] = []

    def on_result(host: str, data: bytes) -> dict:
        m = result.to_measurement(data, f"The result from {host}", report=report, models=models, name=names[host],
                                  source="ssh", target=target, host=host, manifest_sha256=manifest_sha)
        path = record.record(run.root, m)
        recorded.append(m)
        _say(f"[{host}] recorded as {path}")
        return m

    try:
        with as_interrupt():
            outcomes = measure.run_all(cfg, hosts, folder, tar, lambda h, line: _say(f"[{h}] {line}"), on_result)
    finally:
        if recorded:
            refresh(run.root)
    failed = {h: o for h, o in outcomes.items() if isinstance(o, PipelineError)}
    disagree = [line for m in recorded for line in _disagreements(m)]
    for m in recorded:
        _say(f"{m['name']}: {len(m['variants'])} variants measured, "
             f"{sum(v['equals_report'] for v in m['variants'].values())} equal the report; report: {run.report_md}")
    for line in disagree:
        _say(line, err=True)
    if failed:
        if len(hosts) == 1:
            raise next(iter(failed.values()))
        for h, e in failed.items():
            _say(f"error: {h}: {e}", err=True)
        raise typer.Exit(2)
    if disagree:
        raise typer.Exit(1)


@app.command("add")
def add_cmd(
    result_file: Path = typer.Argument(..., help="A JSON that the bundle's `bench.py --json` wrote on the device."),
    name: Optional[str] = typer.Option(None, "--name", help="The device's name in the report [default: the host it "
                                       "names]."),
    model: str = typer.Option("edgenet", "--model", "-m", help="Which run it measured."),
    artifacts: Path = typer.Option(Path("artifacts"), "--artifacts"),
) -> None:
    """Check and record a result from a device the workstation cannot reach (an air-gapped Jetson)."""
    _guard()(_add)(result_file=result_file, name=name, model=model, artifacts=artifacts)


def _add(*, result_file: Path, name, model, artifacts) -> None:
    import json

    from ..errors import PipelineError
    from pipeline.store.paths import RunDir
    from pipeline.store import devices as record

    from . import result
    from .refresh import refresh

    run = RunDir.for_model(artifacts, model)
    report = _read_report(run.root)
    if not result_file.is_file():
        raise PipelineError(f"{result_file} is not a file; give the JSON that `bench.py --json FILE` wrote on the "
                            "device. Nothing was recorded.")
    try:
        with open(result_file, "rb") as f:
            data = f.read(result.MAX_BYTES + 1)
    except OSError as e:
        raise PipelineError(f"{result_file} could not be read ({e.strerror or e}). Nothing was recorded.") from None
    if name is None:
        try:
            host = json.loads(data).get("device", {}).get("host")
        except (ValueError, AttributeError):
            host = None
        name = host if isinstance(host, str) and not record._name_problem(host, "") else result_file.stem
    why = record._name_problem(name, "--name")
    if why:
        raise PipelineError(f"{why}; give a plain --name. Nothing was recorded.")
    m = result.to_measurement(data, str(result_file), report=report, models=record.current_models(run.root),
                              name=name, source="file")
    path = record.record(run.root, m)
    refresh(run.root)
    _say(f"recorded {m['name']} ({m['target']}) as {path}; report: {run.report_md}")
    disagree = _disagreements(m)
    for line in disagree:
        _say(line, err=True)
    if disagree:
        raise typer.Exit(1)
