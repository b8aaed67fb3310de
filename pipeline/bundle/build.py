"""``pipeline bundle``: everything a device needs, runnable without this repository or torch.

A bundle holds the ONNX files the variant table ships for its target (the
``bundle`` column of :mod:`pipeline.variants`), the MNIST test set, the PyTorch
reference logits and golden inputs, a manifest with the SHA-256 of every file, a
README for the device and ``bench.py``, which needs only numpy plus onnxruntime
or TensorRT, prints the same table as the report and checks each model as
strictly as validate does. Jetson and GPU bundles also get an engine build
script (``build_engines.py``: the very same file as :mod:`exporters.tensorrt`;
``build_engines.sh``: the trtexec forms) for the files whose row says ``tensorrt``.
``pipeline verify`` checks every hash and, since an archive is untrusted, every
member's type and name. The JavaScript targets (node and web: :data:`pipeline.targets.JS_TARGETS`)
share the models, report and manifest and get, instead of the Python files,
what :mod:`pipeline.bundle.js` writes: a Node command or a static page with an
embeddable ``classifier.js``, the JS preprocessing module and golden vectors from
the Python runtime.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import js as bundle_js, layout, mobile as bundle_mobile
from pipeline.store import manifest
from pipeline import variants
from pipeline.errors import PipelineError
from pipeline.store.paths import RunDir, _umask, atomic_path, atomic_write, sha256_file, walk_tree, write_json
from pipeline import targets
from pipeline.targets import TARGETS
from pipeline.variants import REFERENCE

log = logging.getLogger(__name__)
FORMAT = "edge-export-pipeline/bundle-v1"
FILES = Path(__file__).parent / "files"


def _readme(target: str, model: str, models: dict, tar_name: str) -> str:
    engines = targets.BUNDLE[target].engines
    ov = targets.BUNDLE[target].runner == "openvino"
    lines = [
        f"# {model} bundle for {target}",
        "",
        "Made by edge-export-pipeline. Needs Python 3 with numpy and "
        + ("openvino (`pip install openvino numpy`; no torch, no onnxruntime)." if ov else "onnxruntime"
           + (" (onnxruntime-gpu for CUDA), or TensorRT 10.x/11.x with polygraphy for engines." if engines else ".")),
        "",
        "0. Unpack the archive with tarfile's `data` filter (Python >= 3.10.12 or 3.11.4), which refuses links, devices",
        "   and names outside the folder, or run `pipeline verify` on it first; avoid a bare `tar xzf` on an archive",
        "   you did not make:",
        f"   `python3 -c \"import tarfile; tarfile.open('{tar_name}').extractall(filter='data')\"`",
        "1. Check the files: `sha256sum` against MANIFEST.json, or `pipeline verify <this folder>` on the build host.",
        *(bundle_mobile.OPENVINO_STEP if ov else (
            "2. Parity and latency on onnxruntime: `python3 bench.py` (add `--provider cuda` with onnxruntime-gpu). It checks",
            "   each model as strictly as the pipeline's validate stage (finite logits, same accuracy, the same flipped test",
            "   images, and agreement 1.0 within atol for FP32) and exits 1 if an onnxruntime-CPU check fails.")),
    ]
    if engines:
        lines += [
            "3. Build TensorRT engines on this device (engines are specific to the GPU and TensorRT version):",
            "   `python3 build_engines.py` (Python API), or `sh build_engines.sh` (trtexec).",
            "   Each engine gets a `.engine.json` sidecar; an engine whose sidecar does not match this ONNX,",
            "   TensorRT version or GPU is rebuilt, never reused.",
            "4. Parity and latency of the engines: `python3 bench.py --engines` (needs polygraphy: `pip install polygraphy`).",
        ]
    if targets.BUNDLE[target].readme:
        lines += ["", *targets.BUNDLE[target].readme]
    lines += [""] + (bundle_mobile.model_lines(models) if ov else bundle_js.model_lines(models))
    lines += ["", "MNIST is by Yann LeCun and Corinna Cortes, CC BY-SA 3.0 (data/mnist-test.npz).", ""]
    return "\n".join(lines)


#: where JetPack 6 installs trtexec (not on the PATH); the script looks there after the PATH
JETSON_TRTEXEC_DIR = "/usr/src/tensorrt/bin"


def _trtexec(models: dict) -> str:
    """``build_engines.sh``: the trtexec forms of ``build_engines.py`` (same profile, workspace, typing).

    trtexec's banner encodes the version as one number: ``&&&& RUNNING TensorRT.trtexec [TensorRT v100300]``
    is 10.3.0 (major*10000 + minor*100 + patch from 10.0 on; 11.1 prints v110100), and 8.6.1 printed v8601
    (major*1000 + minor*100 + patch). Decoded here, so 10.x gets ``--stronglyTyped`` (11.x has no other mode).
    The flags were read against trtexec 10.3 and 11.1 documentation, never run with a real trtexec.
    """
    lines = ["#!/bin/sh", "# trtexec forms of build_engines.py: precision comes from each ONNX file (strongly typed).",
             "# TensorRT 10 needs --stronglyTyped; TensorRT 11 builds strongly typed networks only.",
             "# trtexec: $TRTEXEC, else the PATH, else $TENSORRT_BIN (default: JetPack's " + JETSON_TRTEXEC_DIR + ").",
             "set -e", 'cd "$(dirname "$0")"',
             'if [ -z "$TRTEXEC" ]; then TRTEXEC=$(command -v trtexec || true); fi',
             f'if [ -z "$TRTEXEC" ] && [ -x "${{TENSORRT_BIN:-{JETSON_TRTEXEC_DIR}}}/trtexec" ]; then '
             f'TRTEXEC="${{TENSORRT_BIN:-{JETSON_TRTEXEC_DIR}}}/trtexec"; fi',
             'if [ -z "$TRTEXEC" ]; then echo "error: trtexec is neither on the PATH nor in '
             f'${{TENSORRT_BIN:-{JETSON_TRTEXEC_DIR}}}; set TRTEXEC=/path/to/trtexec." >&2; exit 2; fi',
             'V=$("$TRTEXEC" --help 2>&1 | sed -n "s/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p" | head -n1)',
             'if [ -z "$V" ]; then echo "error: $TRTEXEC printed no [TensorRT vNNNN] banner." >&2; exit 2; fi',
             'if [ "$V" -ge 100000 ]; then MAJOR=$((V / 10000)); else MAJOR=$((V / 1000)); fi',
             'case "$MAJOR" in',
             '  10) TYPED="--stronglyTyped" ;;',
             '  11) TYPED="" ;;',
             '  *) echo "error: $TRTEXEC is TensorRT $MAJOR.x (banner v$V); use 10.x or 11.x." >&2; exit 2 ;;',
             "esac",
             'echo "trtexec: $TRTEXEC (TensorRT $MAJOR.x, banner v$V)"', "mkdir -p engines"]
    for stem, m in models.items():
        if m["tensorrt"]:
            c, h, w = m["image_shape"]
            lines.append(f'"$TRTEXEC" --onnx=models/{stem}.onnx --saveEngine=engines/{stem}.engine $TYPED --noTF32 '
                         f"--minShapes=input:1x{c}x{h}x{w} --optShapes=input:64x{c}x{h}x{w} "
                         f"--maxShapes=input:256x{c}x{h}x{w} --memPoolSize=workspace:1024M")
    lines.append("echo 'trtexec writes no sidecar: bench.py --engines still runs these engines but cannot check their "
                 "source ONNX, TensorRT version, GPU or layer precisions; build_engines.py records and checks them.'")
    return "\n".join(lines) + "\n"


def make_bundle(run: RunDir, target: str, out_dir: Path, data_root: Path, ort_web: Path | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<model>-<target>-bundle/`` and its ``.tar.gz``; return both paths.

    Every run artifact it reads is first checked against the run's manifest, and the bundle is built in a
    temp folder beside the destination and swapped in only once complete, so a refusal, a bad ``--data-root``
    or a Ctrl-C leaves the previous bundle (folder and tarball) exactly as it was. ``ort_web``: for the web target,
    a local ``npm pack`` tarball of the pinned onnxruntime-web instead of the user cache (:mod:`pipeline.bundle.ort_web`).
    """
    if target not in targets.BUNDLE:
        raise PipelineError(f"--target must be one of {', '.join(targets.BUNDLE)}; got '{target}'.")
    if not run.report_json.is_file() or not run.stages.is_file():
        raise PipelineError(f"{run.report_json} is missing or unreadable; run `pipeline run all` first.")
    # the report's rows decide which model files are read, so the fixed files are checked (and the report read) first
    manifest.require_intact(run.root, [run.relpath(p) for p in (run.report_json, run.checkpoint, run.golden)],
                            "pipeline bundle")
    report = _read_report(run)
    rows = {v["name"]: v for v in report["variants"]}
    # the rows this target ships (the table's ``bundle`` column) that this run validated: bench.py reproduces them
    packed = [v for v in variants.VARIANTS if target in v.bundle and v.name in rows]
    if not packed:  # e.g. an android bundle of a run made without ExecuTorch and LiteRT: nothing to ship
        raise PipelineError(bundle_mobile.nothing_to_ship(target, report))
    record = manifest.require_intact(run.root, [run.relpath(run.export_file(f)) for v in packed
                                                for f in variants.files_of(v)], "pipeline bundle")

    out_dir = Path(out_dir)
    folder, tar_path = run.bundle(out_dir, target), run.bundle_tar(out_dir, target)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"Cannot write the bundle into {out_dir} ({e.strerror or e}); choose another --out.") from None
    with building(out_dir):
        _build(run, target, report, rows, packed, record, data_root, ort_web, folder, tar_path)
    log.info("bundle: %s and %s", folder, tar_path)
    return folder, tar_path


#: the temp names a bundle build makes in its --out folder: the staging folder (``.<bundle>.<random>.tmp``), the old
#: folder set aside by :func:`_swap_in` (``.<bundle>.<random>.old.tmp``) and the tarball's atomic write
#: (``.<bundle>.tar.gz.<random>.tmp``); nothing else in --out is ever swept
LEFTOVER = re.compile(r"\.[^/]+-(?:" + "|".join(map(re.escape, TARGETS)) + r")-bundle(?:\.tar\.gz)?\.[A-Za-z0-9_]+(?:\.old)?\.tmp")


@contextlib.contextmanager
def building(out_dir: Path):
    """Hold ``out_dir`` while a bundle is built in it, sweeping temp leftovers of killed builds first.

    A SIGKILL (or a power cut) runs no cleanup, so its staging folder stays. The next build removes such leftovers,
    but never a concurrent build's live staging folder: every build holds a shared ``flock`` on the --out folder
    itself (no lock file is added to it) from before it makes its temp names until after it removes them, and the
    sweep runs only under an exclusive one, taken without waiting. The kernel drops a killed process's lock (as for
    the run lock, :func:`pipeline.stages.run_lock`), so a leftover is swept exactly when no build that could own it
    is alive. A file system without ``flock`` on folders skips the sweep."""
    import fcntl

    try:
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PipelineError(f"Cannot write the bundle into {out_dir} ({e.strerror or e}); choose another --out.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sweep_leftovers(out_dir)
        except OSError:  # another build is running (BlockingIOError), or no flock here: no sweep this time
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sweep_leftovers(out_dir: Path) -> list[str]:
    """Remove the temp folders and files of killed bundle builds in ``out_dir`` (only :data:`LEFTOVER` names);
    call it only while no other build runs there (:func:`building`). Returns the names removed."""
    import stat

    removed = []
    for entry in os.scandir(out_dir):
        if not LEFTOVER.fullmatch(entry.name):
            continue
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                shutil.rmtree(entry.path)
            elif stat.S_ISREG(mode):
                os.unlink(entry.path)
            else:
                continue  # a link or anything else with our name is not ours
        except OSError:
            continue
        removed.append(entry.name)
    if removed:
        log.info("removed %d temp leftover(s) of an interrupted bundle build in %s: %s", len(removed), out_dir,
                 ", ".join(sorted(removed)))
    return removed


def _build(run: RunDir, target: str, report: dict, rows: dict, packed, record, data_root: Path, ort_web,
           folder: Path, tar_path: Path) -> None:
    out_dir = folder.parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=out_dir))
    except OSError as e:
        raise PipelineError(f"Cannot write the bundle into {out_dir} ({e.strerror or e}); choose another --out.") from None
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the bundle gets normal permissions
        files = _fill(staging, run, target, report, rows, packed, data_root, ort_web)
        copied = {layout.REPORT: run.report_json,
                  **{layout.model(f): run.export_file(f) for v in packed for f in variants.files_of(v)},
                  **({} if targets.BUNDLE[target].runner == "js" else {layout.GOLDEN: run.golden})}
        changed = [str(src) for dst, src in copied.items() if files[dst] != manifest.recorded_sha(record, run.relpath(src))]
        if changed:  # checked before copying; this catches a file replaced while the bundle was being built
            raise PipelineError(f"{', '.join(changed)} changed while the bundle was being built; nothing was replaced. "
                                "Run `pipeline bundle` again when nothing else writes to the run folder.")
        with atomic_path(tar_path) as tmp_tar:
            with tarfile.open(tmp_tar, "w:gz") as tar:
                tar.add(staging, arcname=folder.name)
            _swap_in(staging, folder)  # the tarball follows when this block exits (atomic_path renames it)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_report(run: RunDir) -> dict:
    """report.json through the one report loader; the bundle also needs the reference row's accuracy."""
    from pipeline.store.schema import load_report

    report = load_report(run.report_json, then="Rerun `pipeline run all --force`.")
    if not any(v["name"] == REFERENCE for v in report["variants"]):
        raise PipelineError(f"{run.report_json} has no `{REFERENCE}` row, the reference a bundle checks against; "
                            "rerun `pipeline run all --force`.")
    return report


def _fill(folder: Path, run: RunDir, target: str, report: dict, rows: dict, packed, data_root: Path,
          ort_web: Path | None = None) -> dict:
    """Write every bundle file into ``folder`` (MANIFEST.json last); return {relative path: SHA-256}.

    The models, report.json and MANIFEST.json are common to every target; the rest is the target's own:
    :func:`_fill_python` (bench.py, reference logits, engine scripts), :func:`pipeline.bundle.js.fill_node` or
    :func:`pipeline.bundle.js.fill_web`."""
    from pipeline.dataset import ensure_raw

    (folder / layout.MODELS).mkdir()
    (folder / layout.DATA).mkdir()
    models = {}
    for v in packed:
        src = run.export_file(v.file)
        for f in variants.files_of(v):
            shutil.copy2(run.export_file(f), folder / layout.model(f))
        meta = bundle_mobile.read_contract(src)
        row = rows[v.name]
        # keyed by stem (bench.py looks a file up by its stem); the android bundle's .pte and .tflite share stems
        key = v.file if targets.BUNDLE[target].runner == "mobile" else Path(v.file).stem
        models[key] = {
            "variant": v.name, "precision": v.precision, "accuracy": row["accuracy"],
            "agreement": row["agreement"], "max_abs_diff": row["max_abs_diff"], "flips": row.get("flips"),
            "atol": v.atol, "tensorrt": v.tensorrt and targets.BUNDLE[target].engines,
            "image_shape": json.loads(meta.get("input_shape", "[1, 28, 28]")), "metadata": meta,
            "ort_optimization": v.ort_optimization, "backend": v.backend, "budget_pp": v.budget_pp,
            **bundle_mobile.also_runs(v, rows, target),
        }
    try:
        raw = ensure_raw(data_root)
    except OSError as e:
        raise PipelineError(f"--data-root {data_root} cannot hold MNIST ({e.strerror or e}); point it at a folder "
                            "with MNIST/raw or one that can be written.") from None
    reference = {"variant": REFERENCE, "accuracy": rows[REFERENCE]["accuracy"]}
    if targets.BUNDLE[target].site:  # the browser recommendation first: classifier.js loads the first model by default
        deploy = next((t.key for t in targets.DEPLOY if t.bundle == target), None)
        pick = Path(((report.get("recommended") or {}).get(deploy) or {}).get("file", "")).stem
        models = {k: models[k] for k in sorted(models, key=lambda k: k != pick)}
        bundle_js.fill_web(folder, models, raw, report["model"], ort_web)
    elif targets.BUNDLE[target].runner == "js":
        bundle_js.fill_node(folder, models, raw, report["model"])
    elif targets.BUNDLE[target].runner == "mobile":
        bundle_mobile.fill_mobile(folder, run, report, models, raw, reference)
    else:
        _fill_python(folder, run, target, report, models, raw, reference, data_root)
    shutil.copy2(run.report_json, folder / layout.REPORT)
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / "MANIFEST.json", {
        "format": FORMAT, "model": report["model"], "target": target,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": reference, "models": models, "files": files,
        **({"skipped": skipped} if (skipped := bundle_mobile.skipped_rows(target, report)) else {}),
    })
    return files


def _fill_python(folder: Path, run: RunDir, target: str, report: dict, models: dict, raw: Path, reference: dict,
                 data_root: Path) -> None:
    """The Python targets' files: the test set and PyTorch's logits on it, so bench.py reproduces the report's
    figures exactly; bench.py; the README; and, for the engine targets (jetson, gpu), the engine build scripts."""
    from pipeline.dataset import read_test_set
    from pipeline.store import checkpoint

    images, labels = read_test_set(raw)
    logits = checkpoint.reference_logits(checkpoint.load(run.checkpoint), images)
    acc = float((logits.argmax(1) == labels).mean())
    if not np.isfinite(logits).all() or acc != reference["accuracy"]:
        raise PipelineError(
            f"The checkpoint's logits on the test set in {data_root} give accuracy {acc!r}"
            f"{' and are not all finite' if not np.isfinite(logits).all() else ''}, but the report says {REFERENCE} "
            f"reached {reference['accuracy']!r}: the bundle's reference would not reproduce the report, so none was "
            "written. Rerun `pipeline run all --force`.")
    _savez(folder / layout.DATA / "mnist-test.npz", images=images, labels=labels)
    _savez(folder / layout.DATA / "reference.npz", logits=logits)
    shutil.copy2(run.golden, folder / layout.GOLDEN)
    shutil.copy2(FILES / "bench.py", folder / "bench.py")
    (folder / "runtime").mkdir()  # bench.py times with the pipeline's own runtime/bench.py (numpy only)
    for name in ("__init__.py", "bench.py", "errors.py"):
        shutil.copy2(Path(__file__).resolve().parents[2] / "runtime" / name, folder / "runtime" / name)
    if targets.BUNDLE[target].engines:
        shutil.copy2(Path(__file__).resolve().parents[2] / "exporters" / "tensorrt.py", folder / "build_engines.py")
        atomic_write(folder / "build_engines.sh", _trtexec(models))
    atomic_write(folder / "README.md", _readme(target, report["model"], models, run.bundle_tar(folder.parent, target).name))


def _swap_in(new: Path, dest: Path) -> None:
    """Put the complete folder ``new`` at ``dest``: the old one is renamed aside, the new one renamed into place,
    and only then is the old one removed. If anything (Ctrl-C included) stops this before the new one is in place,
    the old one is put back."""
    if not dest.exists():
        os.rename(new, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old.tmp", dir=dest.parent))
    try:
        os.rename(dest, aside)  # onto an empty folder: allowed, and atomic
        os.rename(new, dest)
    except BaseException:
        if not dest.exists():
            os.rename(aside, dest)  # if even this fails, the old bundle stays whole in ``aside``
        else:
            shutil.rmtree(aside, ignore_errors=True)  # empty (nothing moved), or both renames were done
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _savez(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


def verify(path: Path) -> list[str]:
    """Problems found in a bundle folder, a bundle .tar.gz, or a run folder (empty list = intact)."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".tar.gz"):
        return _verify_tar(path)
    if (path / "MANIFEST.json").is_file():
        return _verify_folder(path)
    if RunDir(path).stages.is_file():
        return _verify_run(path)
    raise PipelineError(f"{path} is neither a bundle (no MANIFEST.json), a bundle .tar.gz, nor a run folder "
                        "(no stages.json).")


#: the largest MANIFEST.json read into memory (a real one is a few KiB); every other file is hashed in chunks
MANIFEST_MAX_BYTES = 16 << 20


def _read_manifest(data: bytes, where) -> dict:
    try:
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a bundle manifest")
        return manifest
    except (ValueError, AttributeError) as e:
        raise PipelineError(f"The MANIFEST.json of {where} is corrupted or foreign ({e}).") from None


def _compare(expected: dict, actual: dict[str, str]) -> list[str]:
    """``actual``: relative path -> SHA-256 of every regular file found (MANIFEST.json excluded)."""
    problems = [f"missing: {rel}" for rel in expected if rel not in actual]
    problems += [f"altered: {rel} (SHA-256 differs from the manifest)" for rel, sha in expected.items()
                 if rel in actual and actual[rel] != sha]
    problems += [f"not in the manifest: {rel}" for rel in actual if rel not in expected
                 and not rel.startswith("engines/")]  # engines are built on the device
    return problems


def _verify_folder(root: Path) -> list[str]:
    """A bundle folder: only folders and regular files (a symlink could point anywhere), each hashed in chunks."""
    import stat

    problems, hashes = [], {}
    for p, mode in walk_tree(root):  # iterative (a folder 1,100 levels deep), never into a symlinked folder
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(mode):
            problems.append(f"symbolic link (only regular files and folders are allowed): {rel}")
        elif stat.S_ISREG(mode):
            hashes[rel] = sha256_file(p)
        elif not stat.S_ISDIR(mode):
            problems.append(f"not a regular file ({_kind(mode)}): {rel}")
    if "MANIFEST.json" not in hashes:
        return problems + ["MANIFEST.json is not a regular file"]
    if (root / "MANIFEST.json").stat().st_size > MANIFEST_MAX_BYTES:
        return problems + [f"MANIFEST.json is larger than {MANIFEST_MAX_BYTES} bytes, so it is not a bundle manifest"]
    manifest = _read_manifest((root / "MANIFEST.json").read_bytes(), root)
    hashes.pop("MANIFEST.json")
    return problems + _compare(manifest["files"], hashes)


def _kind(mode: int) -> str:
    import stat

    for test, what in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return what
    return "unknown type"


#: what a tar member that is not a regular file or a folder is, for the problem line
_TAR_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
              tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


def _unsafe_name(name: str) -> str | None:
    """Why a member name could land outside the folder it is unpacked into (None when it is safe)."""
    if not name:
        return "empty name"
    if "\0" in name or "\\" in name:
        return "NUL or backslash in the name"
    if name.startswith("/"):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' component"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' component"
    return None


def _show(name: str) -> str:
    return name if name.isprintable() else ascii(name)


def _verify_tar(path: Path) -> list[str]:
    """A bundle .tar.gz, read member by member without unpacking: only regular files and folders with safe relative
    names under one top folder, each name once; regular files are hashed in 1 MiB chunks, so memory stays flat
    whatever a member's size."""
    import hashlib
    import zlib

    problems, seen, safe, hashes, manifest_data, top = [], {}, {}, {}, None, None
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                name = m.name[:-1] if m.isdir() and m.name.endswith("/") else m.name
                why = [_unsafe_name(name)]
                if why[0] is None:
                    top = top or name.split("/", 1)[0]
                    if name.split("/", 1)[0] != top:
                        why.append(f"outside the bundle folder {_show(top)}/")
                if not (m.isreg() or m.isdir()):
                    link = f" to {_show(m.linkname)}" if m.issym() or m.islnk() else ""
                    why.append(f"{_TAR_KINDS.get(m.type, 'special member')}{link}; only regular files and folders "
                               "are allowed")
                if name in seen:
                    why.append(f"appears twice (before as a {seen[name]})")
                seen.setdefault(name, "folder" if m.isdir() else "file" if m.isreg() else "special member")
                why = [w for w in why if w]
                if why:
                    problems.append(f"unsafe member: {_show(m.name)} ({'; '.join(why)})")
                    continue
                safe[name] = seen[name]
                if m.isreg():
                    if name == f"{top}/MANIFEST.json" and m.size <= MANIFEST_MAX_BYTES:
                        manifest_data = tar.extractfile(m).read()
                        continue
                    h, f = hashlib.sha256(), tar.extractfile(m)
                    while block := f.read(1 << 20):
                        h.update(block)
                    hashes[name] = h.hexdigest()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        return problems + [f"{path} is not a readable .tar.gz ({type(e).__name__}: {e})"]
    if top is None or safe.get(top, "folder") != "folder" or manifest_data is None:
        return problems + [f"{path} does not contain one bundle folder with a MANIFEST.json"]
    manifest = _read_manifest(manifest_data, path)
    return problems + _compare(manifest["files"], {name[len(top) + 1:]: sha for name, sha in hashes.items()})


def _verify_run(run_dir: Path) -> list[str]:
    record = manifest.load(RunDir(run_dir).stages)
    if not record:
        raise PipelineError(f"{RunDir(run_dir).stages} records no finished stage, so there is nothing to verify.")
    return [str(p) for p in manifest.check(run_dir, record)]  # temp files of killed writes are not artifacts
