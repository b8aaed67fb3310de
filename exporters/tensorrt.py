#!/usr/bin/env python3
"""ONNX -> TensorRT engine, for TensorRT 10.x (JetPack 6, GPU hosts) and 11.x, with a sidecar.

This file is self-contained on purpose (standard library + ``tensorrt`` only):
the pipeline imports it, and ``pipeline bundle`` copies it unchanged into a
bundle as ``build_engines.py`` so engines can be built on the device without
this repository. TensorRT is imported lazily; a missing one is a clear error.

Why the TensorRT API directly rather than Polygraphy's ``EngineFromNetwork``:
the two versions differ exactly where Polygraphy hides the details (network
creation flags, precision flags TensorRT 11 removed, TF32), and the sidecar
needs what the builder reports (DLA fallback layers, timing-cache identity).
Polygraphy *is* used to run engines (:mod:`runtime.tensorrt`).

Precision comes from the ONNX file, never from builder flags: ``fp32`` from
the FP32 ONNX, ``fp16`` from the FP16 ONNX, ``int8`` from the QDQ ONNX. Both
versions build a *strongly typed* network (TensorRT 10 needs the flag; 11
has no other kind), so the same files give the same precisions everywhere.
TF32 is switched off so ``fp32`` engines stay FP32.

The ``.engine`` file is exactly what TensorRT serialized (trtexec and
DeepStream load it); ``<name>.engine.json`` beside it records the source
ONNX's SHA-256, precision, TensorRT version, GPU and compute capability,
profile shapes and build time. :func:`check_engine` refuses an engine whose
sidecar does not match the current ONNX, TensorRT or GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTError(Exception):
    """TensorRT is missing, unsupported, rejected the model, or an engine is stale or foreign."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTError(
            "TensorRT is not installed: on a GPU host `pip install tensorrt` (NVIDIA's index) or use the "
            "NGC container; on a Jetson it comes with JetPack 6 (`python3 -c 'import tensorrt'`)."
        ) from None
    major = version_major(trt.__version__)
    if major not in SUPPORTED_MAJORS:
        raise TensorRTError(f"TensorRT {trt.__version__} is not supported; use 10.x or 11.x.")
    return trt


def version_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise TensorRTError(f"cannot read the TensorRT version '{version}'.") from None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file + rename, so a killed build never leaves a half-written engine that looks complete.

    (This file is also shipped alone in bundles, so it cannot use ``pipeline.layout``.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # the hidden-temp pattern a run sweeps after a kill
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def profile_shapes(image_shape, min_batch: int = 1, opt_batch: int = 64, max_batch: int = 256) -> dict:
    """Optimization-profile shapes for a dynamic batch axis: {"min": (1, C, H, W), "opt": ..., "max": ...}."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise TensorRTError(f"profile batches must satisfy 1 <= min <= opt <= max; got {min_batch}/{opt_batch}/{max_batch}.")
    dims = tuple(int(d) for d in image_shape)
    return {k: (b, *dims) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def network_flags(trt) -> int:
    """Creation flags: strongly typed on 10.x (explicit), nothing to ask for on 11.x (the only mode)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if version_major(trt.__version__) == 10:
        if flag is None:
            raise TensorRTError(f"TensorRT {trt.__version__} lacks strongly typed networks; use 10.0 or newer.")
        return 1 << int(flag)
    return 1 << int(flag) if flag is not None else 0


def gpu_identity() -> dict:
    """GPU name and compute capability, from nvidia-smi or, on Jetson, the device tree."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if out:
                name, cc = (s.strip() for s in out[0].rsplit(",", 1))
                return {"gpu": name, "compute_capability": cc}
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    model = Path("/proc/device-tree/model")
    if model.exists():
        return {"gpu": model.read_text(errors="replace").strip("\x00 \n"), "compute_capability": "unknown"}
    return {"gpu": "unknown", "compute_capability": "unknown"}


def timing_cache_key(trt_version: str, gpu: dict) -> str:
    return f"tensorrt-{trt_version}|{gpu['gpu']}|sm{gpu['compute_capability']}"


def _load_timing_cache(config, path, key: str) -> bool:
    """Reuse the cache only if it was made by this TensorRT on this GPU; else start a new one."""
    data = b""
    if path and Path(path).exists() and Path(str(path) + ".json").exists():
        try:
            meta = json.loads(Path(str(path) + ".json").read_text())
        except ValueError:
            meta = {}
        if meta.get("key") == key:
            data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return bool(data)


def build_engine(onnx_path, engine_path, precision: str, *, metadata: dict | None = None, image_shape=(1, 28, 28),
                 min_batch: int = 1, opt_batch: int = 64, max_batch: int = 256, workspace_mib: int = 1024,
                 dla_core: int | None = None, timing_cache=None, log=print) -> dict:
    """Parse ``onnx_path``, build, write ``engine_path`` and its sidecar; return the sidecar dict."""
    if precision not in PRECISIONS:
        raise TensorRTError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes(), str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            node = e.node_name() if hasattr(e, "node_name") else e.node()
            errors.append(f"node {node}: {e.desc()}")
        raise TensorRTError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # keep fp32 engines bit-comparable with the FP32 ONNX
    shapes = profile_shapes(image_shape, min_batch, opt_batch, max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    fallback = []
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise TensorRTError(f"DLA core {dla_core} requested but this device has {builder.num_DLA_cores}.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        fallback = [network.get_layer(i).name for i in range(network.num_layers)
                    if not config.can_run_on_DLA(network.get_layer(i))]
        if fallback:
            log(f"DLA core {dla_core}: {len(fallback)} layer(s) fall back to the GPU: {', '.join(fallback)}")
    gpu = gpu_identity()
    cache_key = timing_cache_key(trt.__version__, gpu)
    reused = _load_timing_cache(config, timing_cache, cache_key) if timing_cache else False
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build a {precision} engine from {onnx_path} (see its log above).")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(engine_path, bytes(serialized))
    if timing_cache:
        _write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
        _write_atomic(Path(str(timing_cache) + ".json"), json.dumps({"key": cache_key}).encode())
    side = {
        "onnx": Path(onnx_path).name, "onnx_sha256": sha256_file(onnx_path), "precision": precision,
        "tensorrt": trt.__version__, **gpu, "profile": {k: list(v) for k, v in shapes.items()},
        "workspace_mib": workspace_mib, "dla_core": dla_core, "gpu_fallback_layers": fallback,
        "timing_cache_reused": reused, "build_seconds": round(seconds, 2),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metadata": metadata or {},
    }
    _write_atomic(Path(str(engine_path) + ".json"), json.dumps(side, indent=2, allow_nan=False).encode())
    return side


def check_engine(engine_path, onnx_path, trt_version: str, gpu: dict) -> list[str]:
    """Why this engine must not be used with this ONNX, TensorRT and GPU (empty list = fine)."""
    side_path = Path(str(engine_path) + ".json")
    if not Path(engine_path).is_file():
        return [f"{engine_path} does not exist"]
    if not side_path.is_file():
        return [f"{side_path} is missing, so where {Path(engine_path).name} came from is unknown"]
    try:
        side = json.loads(side_path.read_text())
    except ValueError:
        return [f"{side_path} is not valid JSON"]
    problems = []
    if side.get("onnx_sha256") != sha256_file(onnx_path):
        problems.append(f"it was built from another version of {Path(onnx_path).name} (SHA-256 differs)")
    if side.get("tensorrt") != trt_version:
        problems.append(f"it was built by TensorRT {side.get('tensorrt')}, this is {trt_version}")
    for key in ("gpu", "compute_capability"):
        if side.get(key) != gpu.get(key):
            problems.append(f"it was built for {key} {side.get(key)!r}, this device has {gpu.get(key)!r}")
    return problems


def require_fresh(engine_path, onnx_path, trt_version: str, gpu: dict) -> None:
    problems = check_engine(engine_path, onnx_path, trt_version, gpu)
    if problems:
        raise TensorRTError(f"Refusing {engine_path}: " + "; ".join(problems) + ". Rebuild it (--rebuild).")


def main(argv=None) -> int:
    """Bundle entry point: build engines for every models/*.onnx listed in MANIFEST.json."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Build TensorRT engines for this bundle's ONNX models on this device.")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--workspace-mib", type=int, default=1024)
    ap.add_argument("--dla-core", type=int, default=None, help="Jetson: build for this DLA core, GPU fallback on")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if a matching engine exists")
    args = ap.parse_args(argv)
    manifest = json.loads((here / "MANIFEST.json").read_text())
    try:
        trt = import_tensorrt()
        gpu = gpu_identity()
        for stem, info in manifest["models"].items():
            if info["precision"] not in args.precisions.split(",") or not info.get("tensorrt", False):
                continue
            onnx_path, engine = here / "models" / f"{stem}.onnx", here / "engines" / f"{stem}.engine"
            if not args.rebuild and not check_engine(engine, onnx_path, trt.__version__, gpu):
                print(f"{engine.name}: up to date")
                continue
            side = build_engine(onnx_path, engine, info["precision"], metadata=info["metadata"],
                                image_shape=tuple(info["image_shape"]), min_batch=args.min_batch,
                                opt_batch=args.opt_batch, max_batch=args.max_batch,
                                workspace_mib=args.workspace_mib, dla_core=args.dla_core,
                                timing_cache=here / "engines" / "timing.cache")
            print(f"{engine.name}: built in {side['build_seconds']} s with TensorRT {side['tensorrt']} on {side['gpu']}")
    except TensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
