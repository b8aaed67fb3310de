"""``pipeline device run``: measure the run's bundle on devices over ssh, in parallel, and record each result.

Per host (:func:`measure_host`): probe the device (Python, the modules the target needs, free disk, whether the
bundle is already there), copy the bundle's .tar.gz with scp unless it is, run the device side
(:mod:`.agent`: unpack, check every SHA-256, build engines for jetson/gpu, ``bench.py --json``) streaming its
progress, copy the JSON back, check it (:mod:`.result`) and record it (:mod:`.record`). Each host runs in its own
thread; one failure does not stop the others. A result is only ever taken from a file the device renamed into
place after bench.py finished, under a name fresh for this run, so a dropped connection or Ctrl-C records
nothing and the same command run again completes (the copied bundle is reused).
"""
from __future__ import annotations

import json
import logging
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import targets

from ..errors import PipelineError
from . import ssh
from .ssh import DeviceError, SshConfig

log = logging.getLogger(__name__)
AGENT = Path(__file__).with_name("agent.py")
#: the modules each target's bench needs on the device, and how to install them
#: (the targets bench.py measures: the Python bundles of pipeline.targets; those that build engines need TensorRT)
NEEDS = {t.name: ("numpy", "onnxruntime") + (("tensorrt", "polygraphy") if t.engines else ())
         for t in targets.BUNDLES if t.runner == "python"}
INSTALL = {"numpy": "numpy", "onnxruntime": "onnxruntime", "polygraphy": "polygraphy",
           "tensorrt": "tensorrt (on a Jetson: JetPack's python3-libnvinfer, `sudo apt-get install nvidia-jetpack`)"}
#: free bytes the device needs where the bundle goes, beyond the archive: the unpacked folder and the engines
FREE_FACTOR = 4


@dataclass(frozen=True)
class DeviceRun:
    """One ``pipeline device run``: what to measure and how to reach the devices."""

    target: str  # cpu | gpu | jetson
    ssh: SshConfig = SshConfig()
    python: str = "python3"  # the device's Python (a venv's bin/python, say)
    remote_dir: str = ".cache/edge-export-pipeline"  # on the device, relative to the login's home
    build: str = "python"  # engine targets: build_engines.py ("python") or build_engines.sh ("trtexec")
    trtexec: str = ""  # the device's trtexec when neither on its PATH nor in JetPack's folder
    bench_args: tuple[str, ...] = ()


@dataclass
class Session:
    """Live ssh/scp processes, so Ctrl-C can end them (kept per command, not in module state)."""

    procs: list = field(default_factory=list)

    def stop(self) -> None:
        for p in list(self.procs):
            try:
                p.terminate()
            except OSError:
                pass


def _printer(host: str, on_line):
    def emit(line: str) -> None:
        if not line.startswith("EDGE-"):
            on_line(host, line)
    return emit


def _marker(lines: list[str], word: str) -> dict | None:
    for line in reversed(lines):
        if line.startswith(f"EDGE-{word} "):
            try:
                obj = json.loads(line.split(" ", 1)[1])
                return obj if isinstance(obj, dict) else None
            except ValueError:
                return None
    return None


def _agent_call(cfg: DeviceRun, host: str, args: list[str], what: str, session: Session, on_line) -> ssh.Outcome:
    argv = ssh.ssh_argv(cfg.ssh, host, [cfg.python, "-", *args])
    out = ssh.call(argv, stdin=AGENT.read_bytes(), on_line=_printer(host, on_line), procs=session.procs)
    if out.rc == 255:
        raise ssh.fault(host, what, out, cfg.ssh)
    if out.rc == 127 or (out.rc != 0 and "No such file or directory" in out.stderr and cfg.python in out.stderr):
        raise DeviceError(f"{host} has no `{cfg.python}` (the device side needs Python 3 with numpy and onnxruntime). "
                          "Install them on the device (Debian/Ubuntu/JetPack: `sudo apt-get install python3 "
                          "python3-pip && python3 -m pip install --user numpy onnxruntime`), or name the device's "
                          "Python with --python. Nothing was recorded.", "python")
    fail = _marker(out.stdout_lines, "FAIL")
    if fail is not None:
        kind = fail.get("kind")
        why = str(fail.get("why"))
        if kind == "disk":
            raise DeviceError(f"The disk on {host} is full ({why}) while {what}. Free some space on the device or "
                              "choose another --remote-dir, then rerun. Nothing was recorded.", "disk")
        again = "; rerun to copy the bundle again" if kind in ("copy", "bundle") else ""
        raise DeviceError(f"{what.capitalize()} on {host} failed: {why}. Nothing was recorded{again}.", kind or "other")
    if out.rc != 0:
        tail = " ".join(out.stderr.split())[-400:]
        if ssh.classify(out.stderr) == "dropped" or out.rc < 0:
            raise DeviceError(f"The connection to {host} dropped while {what}. Nothing was recorded; run the same "
                              "command again: it reuses what was already copied and completes the measurement.",
                              "dropped")
        raise DeviceError(f"{what.capitalize()} on {host} failed (exit {out.rc}){': ' + tail if tail else ''}. "
                          "Nothing was recorded.", "other")
    return out


def measure_host(cfg: DeviceRun, host: str, folder: Path, tar: Path, session: Session, on_line) -> bytes:
    """Measure the bundle ``folder`` (archive ``tar``) on ``host``; return bench.py's JSON, fetched home."""
    from pipeline.store.paths import sha256_file

    manifest_sha = sha256_file(folder / "MANIFEST.json")
    tar_sha = sha256_file(tar)
    base = ["--dir", cfg.remote_dir, "--sha", manifest_sha]
    engines = targets.BUNDLE[cfg.target].engines
    need = list(NEEDS[cfg.target])
    out = _agent_call(cfg, host, ["probe", *base, "--need", *need,
                                  *(["--trtexec-check"] if engines and cfg.build == "trtexec" else []),
                                  *(["--trtexec", cfg.trtexec] if cfg.trtexec else [])],
                      "checking the device", session, on_line)
    probe = _marker(out.stdout_lines, "PROBE")
    if probe is None:
        raise DeviceError(f"{host} did not answer the device check (no EDGE-PROBE line; is `{cfg.python}` Python 3?). "
                          "Nothing was recorded.", "python")
    missing = [m for m in probe.get("missing", []) if isinstance(m, str)]
    if engines and cfg.build == "trtexec" and not probe.get("trtexec"):
        missing.append("trtexec")
    if missing:
        pkgs = " ".join(m for m in missing if m in ("numpy", "onnxruntime", "polygraphy"))
        raise DeviceError(
            f"{host} lacks what `bench.py` needs for the {cfg.target} target: {', '.join(missing)} "
            f"(Python {probe.get('python', '?')}). Install "
            + "; ".join(INSTALL.get(m, m) if m != "trtexec" else "trtexec (JetPack's TensorRT; or give --trtexec PATH)"
                        for m in missing)
            + (f" (`{cfg.python} -m pip install --user {pkgs}`)" if pkgs else "")
            + ", then rerun. Nothing was recorded.", "packages")
    if not probe.get("have_bundle"):
        need_bytes = FREE_FACTOR * tar.stat().st_size
        free = probe.get("free_bytes")
        if isinstance(free, int) and free < need_bytes:
            raise DeviceError(f"The disk on {host} is full: {free / 1e6:.1f} MB free where the bundle goes "
                              f"({cfg.remote_dir}), {need_bytes / 1e6:.1f} MB needed. Free some space or choose another "
                              "--remote-dir, then rerun. Nothing was recorded.", "disk")
        on_line(host, f"copying {tar.name} ({tar.stat().st_size / 1e6:.1f} MB)")
        dst = ssh.scp_target(host, f"{cfg.remote_dir}/{manifest_sha}.tar.gz.part")
        cp = ssh.call(ssh.scp_argv(cfg.ssh, str(tar), dst), procs=session.procs)
        if cp.rc != 0:
            raise ssh.fault(host, "copying the bundle", cp, cfg.ssh)
    else:
        on_line(host, "the bundle is already on the device (every SHA-256 matches); not copied again")
    nonce = secrets.token_hex(8)
    run_args = ["run", *base, "--tar-sha", tar_sha, "--nonce", nonce, "--provider",
                "cuda" if cfg.target == "gpu" and not engines else "cpu"]
    if engines:
        run_args += ["--build", cfg.build] + (["--trtexec", cfg.trtexec] if cfg.trtexec else [])
    if cfg.bench_args:
        run_args += ["--bench-args", *cfg.bench_args]
    out = _agent_call(cfg, host, run_args, "running bench.py", session, on_line)
    done = _marker(out.stdout_lines, "RESULT")
    if done is None or done.get("file") != nonce + ".json":
        raise DeviceError(f"bench.py on {host} finished without a result file. Nothing was recorded.", "bench")
    with tempfile.TemporaryDirectory(prefix="device-result-") as tmp:
        local = Path(tmp) / "result.json"
        cp = ssh.call(ssh.scp_argv(cfg.ssh, ssh.scp_target(host, f"{cfg.remote_dir}/{nonce}.json"), str(local)),
                      procs=session.procs)
        if cp.rc != 0 or not local.is_file():
            raise ssh.fault(host, "copying the result back", cp, cfg.ssh)
        data = local.read_bytes()
    try:  # best effort: the result file on the device is ours to remove
        ssh.call(ssh.ssh_argv(cfg.ssh, host, [cfg.python, "-", "clean", "--dir", cfg.remote_dir, "--nonce", nonce]),
                 stdin=AGENT.read_bytes(), procs=session.procs)
    except PipelineError:
        pass
    return data


def run_all(cfg: DeviceRun, hosts: list[str], folder: Path, tar: Path, on_line, on_result) -> dict[str, object]:
    """Measure on every host in parallel; ``on_result(host, json_bytes)`` checks and records each (it runs in the
    host's thread, so a result is recorded as soon as it is home). Returns ``{host: outcome or DeviceError}``."""
    session = Session()
    results: dict[str, object] = {}

    def one(host: str):
        try:
            results[host] = on_result(host, measure_host(cfg, host, folder, tar, session, on_line))
        except PipelineError as e:
            results[host] = e

    pool = ThreadPoolExecutor(max_workers=min(8, len(hosts)))
    futures = [pool.submit(one, h) for h in hosts]
    try:
        for f in futures:
            while not f.done():
                try:
                    f.result(timeout=0.2)
                except TimeoutError:
                    continue
                except Exception:
                    raise
    except KeyboardInterrupt:
        session.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _source_files(target: str) -> dict[str, Path]:
    """The bundle's scripts and where they come from here: a bundle with older copies is rebuilt."""
    from pipeline import targets
    from pipeline.bundle import build as bundle

    repo = Path(bundle.__file__).resolve().parents[2]
    files = {"bench.py": bundle.FILES / "bench.py",
             **{f"runtime/{n}": repo / "runtime" / n for n in ("__init__.py", "bench.py", "errors.py")}}
    if targets.BUNDLE[target].engines:
        files["build_engines.py"] = repo / "exporters" / "tensorrt.py"
    return files


def bundle_is_current(run, target: str, folder: Path, tar: Path) -> str | None:
    """Why the bundle ``folder`` (and its ``tar``) cannot be reused for ``target`` (None when it can): it must be
    intact, made for this target from this run's current models and report figures, with today's scripts."""
    from pipeline import variants
    from pipeline.bundle import build as bundle, layout
    from pipeline.store.devices import current_models
    from pipeline.store.paths import sha256_file
    from pipeline.store.schema import load_report

    if not (folder / "MANIFEST.json").is_file() or not tar.is_file():
        return "no bundle yet"
    if tar.stat().st_mtime < (folder / "MANIFEST.json").stat().st_mtime - 5:
        return "its archive is older than its folder"
    try:
        problems = bundle.verify(folder)
        man = json.loads((folder / "MANIFEST.json").read_text())
        report = load_report(run.report_json)
    except (OSError, ValueError, PipelineError) as e:
        return f"unreadable ({e})"
    if problems:
        return "; ".join(problems[:3])
    if man.get("target") != target or man.get("model") != report.get("model"):
        return "made for another target or model"
    models = current_models(run.root) or {}
    shipped = {rel: sha for rel, sha in man.get("files", {}).items() if rel.startswith(layout.MODELS + "/")}
    rows = {r["name"]: r for r in report.get("variants", [])}
    want = {layout.model(v.file) for v in variants.VARIANTS if target in v.bundle and v.name in rows}
    if set(shipped) != want or any(models.get(rel) != sha for rel, sha in shipped.items()):
        return "the run's models changed since it was made"
    for stem, info in man.get("models", {}).items():
        row = rows.get(info.get("variant"))
        if row is None or row.get("accuracy") != info.get("accuracy") or row.get("flips") != info.get("flips"):
            return "the run's report changed since it was made"
    for rel, src in _source_files(target).items():
        if man["files"].get(rel) != sha256_file(src):
            return f"its {rel} is older than this pipeline's"
    return None


def ensure_bundle(run, target: str, out: Path, data_root: Path, on_line) -> tuple[Path, Path]:
    """The run's bundle for ``target``: reused when :func:`bundle_is_current`, else made (pipeline bundle)."""
    from pipeline.bundle import build as bundle

    folder = run.bundle(out, target)
    tar = folder.with_name(folder.name + ".tar.gz")
    why = bundle_is_current(run, target, folder, tar)
    if why is None:
        on_line(f"bundle: reusing {folder} (up to date)")
        return folder, tar
    on_line(f"bundle: making {folder} ({why})")
    return bundle.make_bundle(run, target, out, data_root)
