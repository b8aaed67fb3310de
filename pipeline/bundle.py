"""``pipeline bundle``: everything a device needs, runnable without this repository or torch.

A bundle holds the ONNX variants, the MNIST test set, the PyTorch reference
logits and golden inputs, a manifest with the SHA-256 of every file, a README
for the device, an engine build script (``build_engines.py``: the very same
file as :mod:`exporters.tensorrt`; ``build_engines.sh``: the trtexec forms) and
``bench.py``, which needs only numpy plus onnxruntime or TensorRT and prints
the same table as the report. ``pipeline verify`` checks every hash.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import manifest
from .errors import PipelineError
from .layout import RunDir, atomic_path, atomic_write, sha256_file, write_json
from .variants import VARIANTS

log = logging.getLogger(__name__)
TARGETS = ("jetson", "gpu", "cpu")
FORMAT = "edge-export-pipeline/bundle-v1"
FILES = Path(__file__).parent / "bundle_files"
TRT_VARIANTS = {"onnx-fp32": "fp32", "onnx-fp16": "fp16", "onnx-int8-ptq": "int8", "onnx-int8-qat": "int8"}


def _readme(target: str, model: str, models: dict) -> str:
    engines = target in ("jetson", "gpu")
    lines = [
        f"# {model} bundle for {target}",
        "",
        "Made by edge-export-pipeline. Needs Python 3 with numpy and onnxruntime"
        + (" (onnxruntime-gpu for CUDA), or TensorRT 10.x/11.x with polygraphy for engines." if engines else "."),
        "",
        "1. Check the files: `sha256sum` against MANIFEST.json, or `pipeline verify <this folder>` on the build host.",
        "2. Parity and latency on onnxruntime: `python3 bench.py` (add `--provider cuda` with onnxruntime-gpu).",
    ]
    if engines:
        lines += [
            "3. Build TensorRT engines on this device (engines are specific to the GPU and TensorRT version):",
            "   `python3 build_engines.py` (Python API), or `sh build_engines.sh` (trtexec).",
            "   Each engine gets a `.engine.json` sidecar; an engine whose sidecar does not match this ONNX,",
            "   TensorRT version or GPU is rebuilt, never reused.",
            "4. Parity and latency of the engines: `python3 bench.py --engines` (needs polygraphy: `pip install polygraphy`).",
        ]
    if target == "jetson":
        lines += ["", "On a Jetson, set and record the power mode first (`sudo nvpmodel -m 0`, `sudo jetson_clocks`);",
                  "bench.py --json records `nvpmodel -q` and `jetson_clocks --show` with the results.",
                  "`python3 build_engines.py --dla-core 0` builds the fp16 and int8 engines for a DLA core (static",
                  "profile: batch = --max-batch; GPU fallback on); the layers that run on the GPU, read from the",
                  "built engine, are printed and stored in the sidecar."]
    lines += ["", "Models:", ""] + [f"- `models/{stem}.onnx`: {m['variant']}, {m['precision']}, reported accuracy "
                                     f"{100 * m['accuracy']:.2f} % on the 10,000 MNIST test images" for stem, m in models.items()]
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


def make_bundle(run: RunDir, target: str, out_dir: Path, data_root: Path) -> tuple[Path, Path]:
    """Write ``<out_dir>/<model>-<target>-bundle/`` and its ``.tar.gz``; return both paths."""
    import torch

    from exporters.onnx import read_metadata

    from . import checkpoint
    from .data import ensure_raw

    if target not in TARGETS:
        raise PipelineError(f"--target must be one of {', '.join(TARGETS)}; got '{target}'.")
    try:
        report = json.loads(run.report_json.read_text())
    except (OSError, ValueError):
        raise PipelineError(f"{run.report_json} is missing or unreadable; run `pipeline run all` first.") from None
    rows = {v["name"]: v for v in report["variants"]}
    folder = Path(out_dir) / f"{run.root.name}-{target}-bundle"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "models").mkdir(parents=True)
    (folder / "data").mkdir()
    models = {}
    for v in VARIANTS:
        if not v.file or v.name not in rows:
            continue
        src = run.export_file(v.file)
        if sha256_file(src) != _recorded_sha(run, src):
            raise PipelineError(f"{src} no longer matches what the pipeline recorded; rerun `pipeline run all`.")
        shutil.copy2(src, folder / "models" / v.file)
        meta = read_metadata(src)
        models[Path(v.file).stem] = {
            "variant": v.name, "precision": v.precision, "accuracy": rows[v.name]["accuracy"],
            "agreement": rows[v.name]["agreement"], "tensorrt": v.name in TRT_VARIANTS and target != "cpu",
            "image_shape": json.loads(meta.get("input_shape", "[1, 28, 28]")), "metadata": meta,
            "ort_optimization": v.ort_optimization,
        }
    # the test set and PyTorch's logits on it, so bench.py reproduces the report's figures exactly
    raw = ensure_raw(data_root)
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    ckpt = checkpoint.load(run.checkpoint)
    model, norm = checkpoint.restore(ckpt), ckpt["normalization"]
    x = torch.from_numpy(((images[:, None].astype(np.float32) / 255 - norm["mean"][0]) / norm["std"][0]).astype(np.float32))
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)]).numpy()
    _savez(folder / "data" / "mnist-test.npz", images=images, labels=labels)
    _savez(folder / "data" / "reference.npz", logits=logits)
    shutil.copy2(run.golden, folder / "data" / "golden.npz")
    shutil.copy2(run.report_json, folder / "report.json")
    shutil.copy2(FILES / "bench.py", folder / "bench.py")
    if target != "cpu":
        shutil.copy2(Path(__file__).resolve().parents[1] / "exporters" / "tensorrt.py", folder / "build_engines.py")
        atomic_write(folder / "build_engines.sh", _trtexec(models))
    atomic_write(folder / "README.md", _readme(target, report["model"], models))
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / "MANIFEST.json", {
        "format": FORMAT, "model": report["model"], "target": target,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": models, "files": files,
    })
    tar_path = folder.with_name(folder.name + ".tar.gz")
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
    log.info("bundle: %s (%d files) and %s", folder, len(files) + 1, tar_path)
    return folder, tar_path


def _recorded_sha(run: RunDir, path: Path) -> str | None:
    return manifest.recorded_sha(manifest.load(run.stages), str(path.relative_to(run.root)))


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
        manifest = _read_manifest((path / "MANIFEST.json").read_bytes(), path)
        return _compare(manifest["files"], {str(p.relative_to(path)): p.read_bytes()
                                            for p in path.rglob("*") if p.is_file() and p.name != "MANIFEST.json"})
    if (path / "stages.json").is_file():
        return _verify_run(path)
    raise PipelineError(f"{path} is neither a bundle (no MANIFEST.json), a bundle .tar.gz, nor a run folder "
                        "(no stages.json).")


def _read_manifest(data: bytes, where) -> dict:
    try:
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a bundle manifest")
        return manifest
    except (ValueError, AttributeError) as e:
        raise PipelineError(f"The MANIFEST.json of {where} is corrupted or foreign ({e}).") from None


def _compare(expected: dict, actual: dict[str, bytes]) -> list[str]:
    import hashlib

    problems = [f"missing: {rel}" for rel in expected if rel not in actual]
    problems += [f"altered: {rel} (SHA-256 differs from the manifest)" for rel, sha in expected.items()
                 if rel in actual and hashlib.sha256(actual[rel]).hexdigest() != sha]
    problems += [f"not in the manifest: {rel}" for rel in actual if rel not in expected
                 and not rel.startswith("engines/")]  # engines are built on the device
    return problems


def _verify_tar(path: Path) -> list[str]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        return [f"{path} is not a readable .tar.gz ({type(e).__name__}: {e})"]
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) != 1 or f"{next(iter(tops))}/MANIFEST.json" not in members:
        return [f"{path} does not contain one bundle folder with a MANIFEST.json"]
    top = next(iter(tops))
    manifest = _read_manifest(members.pop(f"{top}/MANIFEST.json"), path)
    return _compare(manifest["files"], {name[len(top) + 1 :]: data for name, data in members.items()})


def _verify_run(run_dir: Path) -> list[str]:
    record = manifest.load(run_dir / "stages.json")
    if not record:
        raise PipelineError(f"{run_dir / 'stages.json'} records no finished stage, so there is nothing to verify.")
    return [str(p) for p in manifest.check(run_dir, record)]  # temp files of killed writes are not artifacts
