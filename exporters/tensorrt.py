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
ONNX's SHA-256, the build parameters (:data:`BUILD_PARAMS`: precision,
profile, workspace, DLA core), TensorRT version, GPU and compute capability,
the per-layer precisions and placement read back from the *built* engine, and
build time. :func:`check_engine` refuses an engine whose sidecar does not
match the current ONNX, TensorRT, GPU or any requested build parameter.

API facts used here, none of them ever run (no GPU, no TensorRT where this was
written; they were read against the TensorRT 10.3 and 11.1 Python API):
``Builder.create_network/create_builder_config/create_optimization_profile/
build_serialized_network/num_DLA_cores``, ``OnnxParser``,
``IBuilderConfig.set_memory_pool_limit/clear_flag/set_flag/add_optimization_profile/
profiling_verbosity/default_device_type/DLA_core/create_timing_cache``,
``ProfilingVerbosity.DETAILED``, ``Runtime.deserialize_cuda_engine``,
``ICudaEngine.create_engine_inspector`` and
``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``: the
same names and signatures in 10.x and 11.x.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "int8")
DLA_PRECISIONS = ("fp16", "int8")  # the DLA computes in nothing else (TensorRT 10.x DLA docs)
#: every build parameter that changes the engine: recorded in the sidecar, compared by check_engine
BUILD_PARAMS = ("precision", "profile", "workspace_mib", "dla_core")


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


def installed_version() -> str | None:
    """``tensorrt.__version__`` of the importable module, or None when there is none.

    The module is the truth, not a pip distribution: pip installs TensorRT as ``tensorrt`` (a meta package),
    ``tensorrt-cu12`` or ``tensorrt-cu13``, and JetPack's apt package has no pip distribution at all, so
    ``importlib.metadata.version("tensorrt")`` fails on hosts where TensorRT works."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


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

    (This file is also shipped alone in bundles, so it cannot use ``pipeline.store.paths``.)"""
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


def build_params(precision: str, image_shape=(1, 28, 28), min_batch: int = 1, opt_batch: int = 64,
                 max_batch: int = 256, workspace_mib: int = 1024, dla_core: int | None = None) -> dict:
    """The :data:`BUILD_PARAMS` of one build, checked; what the sidecar records and :func:`check_engine` compares.

    The DLA supports no dynamic dimensions (min, opt and max must be equal) and computes only in FP16 or
    INT8, so a DLA build with anything else is refused rather than silently run on the GPU."""
    if precision not in PRECISIONS:
        raise TensorRTError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")
    if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0):
        raise TensorRTError(f"--dla-core must be a DLA core number (0, 1, ...), got {dla_core!r}.")
    if int(workspace_mib) < 1:
        raise TensorRTError(f"the workspace must be at least 1 MiB, got {workspace_mib}.")
    shapes = profile_shapes(image_shape, min_batch, opt_batch, max_batch)
    if dla_core is not None:
        if precision not in DLA_PRECISIONS:
            raise TensorRTError(f"the DLA computes only in FP16 or INT8, not {precision}: build {precision} "
                                "without --dla-core.")
        if not min_batch == opt_batch == max_batch:
            raise TensorRTError(f"the DLA supports no dynamic dimensions: its profile needs min = opt = max, got "
                                f"{min_batch}/{opt_batch}/{max_batch} (e.g. --max-batch {max_batch} alone).")
    return {"precision": precision, "profile": {k: list(v) for k, v in shapes.items()},
            "workspace_mib": int(workspace_mib), "dla_core": dla_core}


# Engine-inspector JSON (ProfilingVerbosity.DETAILED): {"Layers": [{"Name", "LayerType", "Inputs": [{"Name",
# "Dimensions", "Format/Datatype": "Row major linear FP32"}], "Outputs": [...], ...}], "Bindings": [...]}.
# With less verbosity a layer is only its name. Field names are from TensorRT 10.x's documentation and
# samples, read, never run; the datatype is taken from any "...Datatype"/"Format..." string of a tensor.
_DTYPE = re.compile(r"\b(fp32|float|fp16|half|bf16|fp8|fp4|int8|int4|uint8|int32|int64|bool)\b", re.IGNORECASE)
_DTYPE_NAMES = {"float": "fp32", "half": "fp16"}
_COMPUTE_ORDER = ("int4", "fp4", "int8", "fp8", "fp16", "bf16", "fp32")  # a layer's precision: its lowest input type


def _tensor_dtype(tensor) -> str | None:
    fields = tensor.values() if isinstance(tensor, dict) else [tensor]
    for text in fields:
        m = _DTYPE.search(text) if isinstance(text, str) else None
        if m:
            word = m.group(1).lower()
            return _DTYPE_NAMES.get(word, word)
    return None


def layer_table(info: dict) -> list[dict]:
    """Per built layer: name, type, precision (the lowest float/quantized type among its inputs, else its
    outputs; "unknown" without detailed verbosity) and device ("dla" when the inspector names the DLA)."""
    rows = []
    for layer in info.get("Layers", []) if isinstance(info, dict) else []:
        if not isinstance(layer, dict):
            rows.append({"name": str(layer), "type": "?", "precision": "unknown", "device": "unknown"})
            continue
        precision = "other"
        for side in ("Inputs", "Outputs"):
            types = [t for t in map(_tensor_dtype, layer.get(side) or []) if t in _COMPUTE_ORDER]
            if types:
                precision = min(types, key=_COMPUTE_ORDER.index)
                break
        where = " ".join(str(layer.get(k, "")) for k in ("LayerType", "Name", "TacticName"))
        rows.append({"name": str(layer.get("Name", "?")), "type": str(layer.get("LayerType", "?")),
                     "precision": precision, "device": "dla" if re.search(r"\bDLA\b", where, re.I) else "gpu"})
    return rows


def precision_summary(layers: list[dict]) -> dict:
    """``{"layers": n, "by_precision": {"int8": k, ...}, "on_dla": m}`` for the sidecar and the report."""
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return {"layers": len(layers), "by_precision": dict(sorted(counts.items())),
            "on_dla": sum(1 for layer in layers if layer["device"] == "dla")}


def check_precision(precision: str, summary: dict, onnx_path) -> None:
    """An fp16 or int8 engine with no layer in that precision is a silent FP32 engine: refuse it.

    TensorRT 11 dropped the builder precision flags and some projects shipped FP32 engines while asking for
    FP16 with only a warning; here the precision comes from the ONNX, and this proves it arrived."""
    if precision in ("fp16", "int8") and not summary["by_precision"].get(precision):
        raise TensorRTError(
            f"TensorRT built the {precision} engine from {onnx_path} with no {precision} layer (per-layer "
            f"precisions from the engine inspector: {summary['by_precision'] or 'none reported'}); the engine was "
            "not written. Check that the ONNX file carries that precision (FP16 weights / Q/DQ nodes).")


def inspect_engine(trt, logger, serialized) -> list[dict]:
    """The built engine's layers (precision, placement), from TensorRT's engine inspector."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise TensorRTError("TensorRT could not load the engine it had just built, so its layers cannot be read.")
    inspector = engine.create_engine_inspector()
    try:
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except (TypeError, ValueError):
        info = {}
    return layer_table(info)


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
    """Parse ``onnx_path``, build, read the built layers back, write ``engine_path`` and its sidecar; return the sidecar.

    The engine is written only after the inspector shows it holds the precision asked for."""
    params = build_params(precision, image_shape, min_batch, opt_batch, max_batch, workspace_mib, dla_core)
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
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector reports per-layer types
    shapes = {k: tuple(v) for k, v in params["profile"].items()}
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise TensorRTError(f"DLA core {dla_core} requested but this device has {builder.num_DLA_cores}.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    gpu = gpu_identity()
    cache_key = timing_cache_key(trt.__version__, gpu)
    reused = _load_timing_cache(config, timing_cache, cache_key) if timing_cache else False
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build a {precision} engine from {onnx_path} (see its log above).")
    # placement and precision from the built engine: can_run_on_DLA before the build under-reports fallback
    layers = inspect_engine(trt, logger, serialized)
    summary = precision_summary(layers)
    check_precision(precision, summary, onnx_path)
    fallback = [layer["name"] for layer in layers if layer["device"] != "dla"] if dla_core is not None else []
    if dla_core is not None:
        log(f"DLA core {dla_core}: {summary['on_dla']} of {summary['layers']} layer(s) run on the DLA; "
            f"{len(fallback)} run on the GPU" + (f": {', '.join(fallback)}" if fallback else ""))
    log(f"{Path(engine_path).name}: per-layer precisions {summary['by_precision']}")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(engine_path, bytes(serialized))
    if timing_cache:
        _write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
        _write_atomic(Path(str(timing_cache) + ".json"), json.dumps({"key": cache_key}).encode())
    side = {
        "onnx": Path(onnx_path).name, "onnx_sha256": sha256_file(onnx_path), **params,
        "tensorrt": trt.__version__, **gpu, "gpu_fallback_layers": fallback,
        "layer_precisions": summary, "layers": layers,
        "timing_cache_reused": reused, "build_seconds": round(seconds, 2),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metadata": metadata or {},
    }
    _write_atomic(Path(str(engine_path) + ".json"), json.dumps(side, indent=2, allow_nan=False).encode())
    return side


def check_engine(engine_path, onnx_path, trt_version: str, gpu: dict, expected: dict | None = None) -> list[str]:
    """Why this engine must not be used with this ONNX, TensorRT and GPU, or for the build parameters in
    ``expected`` (any of :data:`BUILD_PARAMS`, as :func:`build_params` returns them); empty list = fine."""
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
    for key in BUILD_PARAMS:
        if expected is None or key not in expected:
            continue
        if key not in side:
            problems.append(f"its sidecar does not record its {key}")
        elif side[key] != expected[key]:
            problems.append(f"it was built with {key} {side[key]!r}, {expected[key]!r} is asked for")
    return problems


def require_fresh(engine_path, onnx_path, trt_version: str, gpu: dict, expected: dict | None = None) -> None:
    problems = check_engine(engine_path, onnx_path, trt_version, gpu, expected)
    if problems:
        raise TensorRTError(f"Refusing {engine_path}: " + "; ".join(problems) + ". Rebuild it (--rebuild).")


def _dla_core(text: str) -> int:
    core = int(text)
    if core < 0:
        raise argparse.ArgumentTypeError(f"a DLA core is 0, 1, ...; got {core}")
    return core


def main(argv=None) -> int:
    """Bundle entry point: build engines for every models/*.onnx listed in MANIFEST.json."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Build TensorRT engines for this bundle's ONNX models on this device.")
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--min-batch", type=int, default=None, help="default 1 (with --dla-core: --max-batch)")
    ap.add_argument("--opt-batch", type=int, default=None, help="default 64 (with --dla-core: --max-batch)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--workspace-mib", type=int, default=1024)
    ap.add_argument("--dla-core", type=_dla_core, default=None,
                    help="Jetson: build fp16/int8 for this DLA core with a static profile (batch = --max-batch), "
                         "GPU fallback on")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if a matching engine exists")
    args = ap.parse_args(argv)
    static = args.dla_core is not None  # the DLA has no dynamic dimensions
    min_batch = args.min_batch if args.min_batch is not None else (args.max_batch if static else 1)
    opt_batch = args.opt_batch if args.opt_batch is not None else (args.max_batch if static else 64)
    manifest = json.loads((here / "MANIFEST.json").read_text())
    try:
        trt = import_tensorrt()
        gpu = gpu_identity()
        for stem, info in manifest["models"].items():
            if info["precision"] not in args.precisions.split(",") or not info.get("tensorrt", False):
                continue
            if static and info["precision"] not in DLA_PRECISIONS:
                print(f"{stem}: skipped, the DLA computes only in FP16 or INT8 (build it without --dla-core)")
                continue
            onnx_path, engine = here / "models" / f"{stem}.onnx", here / "engines" / f"{stem}.engine"
            params = build_params(info["precision"], tuple(info["image_shape"]), min_batch, opt_batch,
                                  args.max_batch, args.workspace_mib, args.dla_core)
            problems = check_engine(engine, onnx_path, trt.__version__, gpu, params)
            if not args.rebuild and not problems:
                print(f"{engine.name}: up to date")
                continue
            if problems and engine.exists():
                print(f"{engine.name}: rebuilding: " + "; ".join(problems))
            side = build_engine(onnx_path, engine, info["precision"], metadata=info["metadata"],
                                image_shape=tuple(info["image_shape"]), min_batch=min_batch,
                                opt_batch=opt_batch, max_batch=args.max_batch,
                                workspace_mib=args.workspace_mib, dla_core=args.dla_core,
                                timing_cache=here / "engines" / "timing.cache")
            print(f"{engine.name}: built in {side['build_seconds']} s with TensorRT {side['tensorrt']} on {side['gpu']}; "
                  f"layers by precision {side['layer_precisions']['by_precision']}")
    except TensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
