#!/usr/bin/env python3
"""Standalone parity + latency check for this bundle. Needs numpy and onnxruntime, TensorRT or OpenVINO; no torch.

    python3 bench.py                      # every model: ONNX on onnxruntime CPU, OpenVINO IR (.xml) on OpenVINO CPU
    python3 bench.py --provider cuda      # onnxruntime-gpu
    python3 bench.py --engines            # the engines built by build_engines.py (TensorRT + polygraphy)
    python3 bench.py --device GPU         # OpenVINO IRs on an Intel iGPU (or NPU); CPU is the default

The backend follows the file: ``.onnx`` runs on onnxruntime, ``.xml`` (with its ``.bin``) on OpenVINO, each imported
only when a file needs it, so an OpenVINO bundle needs only openvino and numpy. OpenVINO runs every IR with
INFERENCE_PRECISION_HINT f32 (its CPU plugin would otherwise run an FP32 model in bfloat16 on CPUs with BF16) and,
where the CPU has BF16, the FP32 IR again with the bf16 hint (the report's openvino-bf16 row, MANIFEST.json's
``also``); that row and the GPU/NPU runs are shown with their checks but do not decide the exit status (their
arithmetic differs between chips). The NPU gets no hint (it computes in FP16). GPU and NPU were never run by the
authors.

With --engines it exits 1 when an engine's accuracy is more than --engine-tolerance-pp off its ONNX model's
reported accuracy or its sidecar does not match; an engine without a sidecar (trtexec) still runs, and the
checks that needed the sidecar are listed as not done. The TensorRT parts were never run by their authors.

Timing is the pipeline's own (runtime/bench.py, shipped beside this script): every model is timed together with the
others, in --rounds rounds of short bursts (at most --iterations calls or --seconds each) with the order rotated;
p50 and throughput are medians over rounds, the spread is (max - min) / median of the rounds' p50s, and a warning
says when the load average, other processes or CPU steal make the figures untrustworthy.

For each model it classifies the 10,000 MNIST test images in data/mnist-test.npz, compares with the
PyTorch reference logits in data/reference.npz (accuracy, agreement, max |logit diff|, flips), times
it (warm-up, then p50/p90/p99 and throughput), and says whether it equals what the pipeline reported
(MANIFEST.json) as strictly as the pipeline's validate stage checks it: every logit finite, the same
accuracy, the same test images flipped against PyTorch, and for variants with a parity tolerance
(atol) agreement 1.0 and max |logit diff| <= atol. The reference itself must reproduce the report's
torch-fp32 accuracy. It prints the same table as the pipeline's report.md, then each failed check.
Exit 1 when the reference or any onnxruntime-CPU model or OpenVINO-CPU model with the f32 hint fails a check.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # runtime/ ships beside this script (python -I leaves the script's folder off the path)
sys.dont_write_bytecode = True  # no __pycache__ in the bundle: its MANIFEST.json lists every file it may hold
from runtime.bench import check_rounds, interleave, untrusted  # noqa: E402  (the pipeline's own timing code)
from runtime.errors import RuntimeInputError  # noqa: E402


def device_state():
    """What the figures were measured on: host, OS, CPU, GPU, runtime versions and, on a Jetson, the JetPack
    release, power mode and clocks. Every probe is read defensively (a missing tool or file leaves its key
    out, a failing one says so), because a device owes us none of them."""
    state = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
             "host": platform.node(), "os": _os_name(), "cpu": _cpu_name(), "runtimes": _runtimes()}
    gpu = _gpu_name()
    if gpu:
        state["gpu"] = gpu
    l4t = _read_text("/etc/nv_tegra_release")  # "# R36 (release), REVISION: 3.0, ...": the L4T release
    jetpack = _jetpack_version()
    if jetpack or l4t:
        state["jetpack"] = "; ".join(x for x in (jetpack and f"JetPack {jetpack}", l4t.splitlines()[0][:200] if l4t
                                                 else "") if x)
    for tool, args in (("nvpmodel", ["-q"]), ("jetson_clocks", ["--show"])):
        if shutil.which(tool):
            try:
                out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=20)
                state[tool] = (out.stdout or out.stderr).strip()[:2000]
            except (OSError, subprocess.SubprocessError) as e:
                state[tool] = f"could not run: {e}"
    return state


def _jetpack_version():
    """The nvidia-jetpack package's version ('' when dpkg or the package is absent)."""
    if not shutil.which("dpkg-query"):
        return ""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()[:50] if out.returncode == 0 else ""


def _read_text(path, limit=4096):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").replace("\0", "").strip()
    except OSError:
        return ""


def _os_name():
    for line in _read_text("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')[:200]
    return f"{platform.system()} {platform.release()}"


def _cpu_name():
    for line in _read_text("/proc/cpuinfo", 1 << 16).splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "hardware", "cpu model") and ":" in line:
            return line.split(":", 1)[1].strip()[:200]
    return (platform.processor() or platform.machine())[:200]


def _gpu_name():
    """nvidia-smi's GPU name, else a Jetson's device-tree model; '' when neither says."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0][:200]
        except (OSError, subprocess.SubprocessError):
            pass
    return _read_text("/proc/device-tree/model")[:200]


def _runtimes():
    """Versions of the runtimes this script may use, from their own modules (only those that import)."""
    import importlib

    found = {"numpy": np.__version__}
    for name in ("onnxruntime", "tensorrt", "polygraphy", "openvino"):
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception:  # not installed, or broken: either way not a runtime this device has
            pass
    return found


#: what a --json file is (pipeline device add checks it)
RESULT_FORMAT = "edge-export-pipeline/bench-result-v1"


def bundle_identity(manifest_bytes):
    """Which bundle the figures came from: the SHA-256 of its MANIFEST.json and its models' SHA-256, so the
    pipeline can refuse a result of another bundle or model and mark one stale when the model changes."""
    import hashlib

    manifest = json.loads(manifest_bytes)
    return {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "model": manifest.get("model"),
            "target": manifest.get("target"),
            "files": {k: v for k, v in manifest.get("files", {}).items() if k.startswith("models/")}}


def digest_of(body):
    """SHA-256 of the result's canonical JSON (sorted keys, no spaces): catches an edited or damaged file.
    Anyone can recompute it, so it guards against accidents, not against a forger."""
    import hashlib

    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
                          .encode()).hexdigest()


def normalize(images_u8, meta):
    scale = float(json.loads(meta.get("pixel_scale", str(1 / 255))))
    mean = np.asarray(json.loads(meta["normalization_mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["normalization_std"]), np.float32).reshape(1, -1, 1, 1)
    return ((images_u8[:, None].astype(np.float32) * scale - mean) / std).astype(np.float32)


class OrtModel:
    includes = "session.run on the host: compute + copies (CUDA provider: H2D + GPU compute + D2H)"

    def __init__(self, path, provider, threads, optimization="all"):
        """``optimization="basic"`` runs Q/DQ as written, as the report did for the TensorRT-targeted INT8 files
        (onnxruntime's fused int8 kernels saturate on x86 CPUs without VNNI)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if optimization == "basic":
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        prov = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
        self.session = ort.InferenceSession(str(path), opts, providers=[prov])
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input = self.session.get_inputs()[0].name
        self.backend = f"onnxruntime-{provider}"

    def __call__(self, x):
        return self.session.run(None, {self.input: x})[0]


class OvModel:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for ``device`` with an explicit precision hint (CPU, GPU: f32 for
    fp32 and int8 files, bf16 for the bf16 row; NPU: none, it computes in FP16). The hint is read back from the
    compiled model and a mismatch refused, so a row is never mislabelled."""

    includes = "InferRequest.infer on the host: compute + copies"
    #: row precision -> INFERENCE_PRECISION_HINT; what OpenVINO calls each when read back
    HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
    TYPE_NAMES = {"f32": "float32", "bf16": "bfloat16"}
    #: the rt_info section that holds the preprocessing contract (runtime/openvino.py's RT_SECTION)
    RT_SECTION = "edge_export_pipeline"

    def __init__(self, path, device="CPU", threads=0, precision="fp32"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        info = model.get_rt_info()
        section = info[self.RT_SECTION] if self.RT_SECTION in list(info.keys()) else {}
        self.meta = {str(k): str(getattr(v, "value", v)) for k, v in (section.items() if isinstance(section, dict)
                                                                      else ())}
        if "normalization_mean" not in self.meta:
            raise SystemExit(f"error: {path} carries no preprocessing contract in its rt_info "
                             f"(section {self.RT_SECTION}); it is not this bundle's file.")
        self.hint = self.HINTS[precision] if device in ("CPU", "GPU") else None
        if precision == "bf16" and "BF16" not in core.get_property(device, "OPTIMIZATION_CAPABILITIES"):
            raise Unavailable(f"{device} has no BF16 (OPTIMIZATION_CAPABILITIES lacks it)")
        config = {"INFERENCE_PRECISION_HINT": self.hint} if self.hint else {}
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)
        if self.hint:
            got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
            if self.TYPE_NAMES[self.hint] not in got:
                raise Unavailable(f"{device} compiled {Path(path).name} with precision {got}, not {self.hint}")
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.outputs[0]
        self.backend = f"openvino-{device.lower()}"
        self.precision = precision

    def __call__(self, x):
        # a copy: the request's output tensor is reused by the next call
        return np.array(self.request.infer({0: x})[self.output], dtype=np.float32, copy=True)


class Unavailable(Exception):
    """A run this device cannot make (no BF16 here): the row is listed as not run, not failed."""


def runs_of(path, info):
    """(model info, precision) of each run of ``path``: an IR also runs with each hint its MANIFEST entry lists in
    ``also`` (openvino-bf16 on the FP32 IR); every other file runs once."""
    if path.suffix != ".xml":
        return [(info, None)]
    return [(info, info.get("precision", "fp32"))] + [(a, a["precision"]) for a in info.get("also", [])]


def load_model(path, info, precision, args, manifest):
    """The runner for ``path``, chosen by its suffix (each runtime imported only here, when a file needs it)."""
    try:
        if args.engines:
            return TrtModel(path, info, manifest.get("files", {}))
        if path.suffix == ".xml":
            return OvModel(path, args.device, args.threads, precision)
        return OrtModel(path, args.provider, args.threads, info.get("ort_optimization", "all"))
    except ImportError as e:  # the runtime this file needs is not installed here: say which, and how to get it
        need = ("TensorRT and polygraphy (JetPack, or pip install tensorrt polygraphy)" if args.engines else
                "OpenVINO (pip install openvino numpy)" if path.suffix == ".xml" else
                "onnxruntime (pip install onnxruntime numpy)")
        sys.exit(f"error: models/{path.name} needs {need}; importing it failed: {e}")


def counted(row):
    """Whether a row decides the exit status: onnxruntime on the CPU, and OpenVINO on the CPU with the f32 hint."""
    return row["reported_accuracy"] is not None and (
        row["backend"] == "onnxruntime-cpu" or (row["backend"] == "openvino-cpu" and row.get("hint") == "f32"))


class TrtModel:
    """TensorRT engine through Polygraphy's runner. A timed call spans the H2D copy, GPU compute, the D2H copy
    and the stream sync (Polygraphy's own inference time spans the same); `trtexec --loadEngine=FILE` reports
    GPU compute alone. Written against TensorRT 10.x/11.x and Polygraphy 0.49, never run by its authors."""

    includes = "H2D copy + GPU compute + D2H copy + stream sync, host wall clock (Polygraphy TrtRunner)"

    def __init__(self, path, info, files):
        import tensorrt as trt
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        side_path = Path(str(path) + ".json")
        self.unchecked, self.problems = [], []
        if side_path.is_file():
            side = json.loads(side_path.read_text())
            self.meta = side["metadata"]
            want = files.get(f"models/{Path(path).stem}.onnx")
            if want and side.get("onnx_sha256") != want:
                self.problems.append("built from another ONNX file than this bundle's (SHA-256 differs)")
            if side.get("tensorrt") != trt.__version__:
                self.problems.append(f"built by TensorRT {side.get('tensorrt')}, this is {trt.__version__}")
            self.layer_precisions = side.get("layer_precisions")
        else:  # e.g. built by build_engines.sh: trtexec writes no sidecar
            self.meta = info.get("metadata", {})
            self.unchecked = ["source ONNX (SHA-256)", "TensorRT version", "GPU", "build parameters",
                              "per-layer precisions"]
            self.layer_precisions = None
        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        self.runner.activate()
        self.input = self.meta.get("input_name", "input")
        self.batch_range = engine_batch_range(trt, self.runner.engine, self.input)
        self.backend = "tensorrt"

    def __call__(self, x):
        # copy: Polygraphy's TrtRunner reuses its host output buffers, so the next call would overwrite this one
        return np.array(next(iter(self.runner.infer({self.input: x}).values())), copy=True)


def engine_batch_range(trt, engine, name):
    """(min, max) batch of optimization profile 0 (the one TrtRunner uses), read from the engine
    (ICudaEngine.get_tensor_profile_shape(name, 0) -> (min, opt, max), TensorRT 10.x/11.x)."""
    mn, _opt, mx = engine.get_tensor_profile_shape(name, 0)
    return int(mn[0]), int(mx[0])


def _size(path):
    """A model's size on disk: an IR's .xml and its .bin together."""
    bin_file = path.with_suffix(".bin")
    return path.stat().st_size + (bin_file.stat().st_size if path.suffix == ".xml" and bin_file.is_file() else 0)


def classify(model, x, step=1000):
    """Logits of every image, in batches the model accepts (an engine: within its profile; a last chunk
    below a static profile's batch is padded with copies of its last image, whose logits are dropped)."""
    lo, hi = getattr(model, "batch_range", None) or (1, step)
    step = max(lo, min(step, hi))
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if n < lo:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
        outs.append(model(chunk)[:n])
    return np.concatenate(outs).astype(np.float32)


def feed_of(x, batch):
    """``batch`` images from ``x``, repeated when it holds fewer."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def figures_of(st):
    """The latency figures a row reports, from runtime.bench's LatencyStats (ms, images/s, spread in percent)."""
    return {"p50_ms": st.p50_ms, "p90_ms": st.p90_ms, "p99_ms": st.p99_ms, "mean_ms": st.mean_ms,
            "throughput_per_s": st.throughput_per_s, "rounds": st.rounds, "round_p50_ms": list(st.round_p50_ms),
            "spread_pct": st.spread_pct}


def compare(logits, ref, labels):
    """Accuracy and agreement (fractions), max |logit diff| against the reference, and the flipped test indices.

    An image with a NaN/inf logit is wrong and flipped (never argmax'ed); ``max_abs_diff`` is then None (null)."""
    finite = np.isfinite(logits).all(1)
    pred, ref_pred = np.where(finite, logits.argmax(1), -1), ref.argmax(1)
    return {"accuracy": float((pred == labels).mean()), "agreement": float((pred == ref_pred).mean()),
            "max_abs_diff": float(np.abs(logits - ref).max()) if finite.all() else None,
            "nonfinite": int((~finite).sum()), "flip_indices": np.flatnonzero(pred != ref_pred).tolist()}


def _examples(indices, n=5):
    return ", ".join(str(i) for i in indices[:n]) + (", ..." if len(indices) > n else "")


def check_model(logits, figures, info):
    """The checks that failed, each as a sentence (empty: the model equals the report). ``info`` is the model's
    MANIFEST.json entry; a check whose reported figure is absent (an older bundle) is skipped."""
    failed = []
    bad = int((~np.isfinite(logits)).sum())
    if bad:
        failed.append(f"{bad} logits are NaN or infinite")
    if info.get("accuracy") is not None and figures["accuracy"] != info["accuracy"]:
        failed.append(f"accuracy {figures['accuracy']!r} differs from the reported {info['accuracy']!r}")
    if info.get("flips") is not None:
        now, then = set(figures["flip_indices"]), set(info["flips"])
        if now != then:
            new, gone = sorted(now - then), sorted(then - now)
            failed.append(f"flipped test images differ from the report: {len(new)} newly flipped"
                          f"{' (' + _examples(new) + ')' if new else ''}, {len(gone)} no longer flipped"
                          f"{' (' + _examples(gone) + ')' if gone else ''}")
    atol = info.get("atol")
    if atol is not None:
        if figures["agreement"] != 1.0:
            failed.append(f"agreement {figures['agreement']:.4f} (needs 1.0)")
        diff = figures["max_abs_diff"]
        if diff is None or not diff <= atol:  # written so that NaN fails
            failed.append(f"max |logit diff| {'NaN/inf' if diff is None else format(diff, '.2e')} (needs <= {atol:g})")
    return failed


def check_reference(ref, labels, expected):
    """data/reference.npz must be finite and reproduce the report's torch-fp32 accuracy, or no comparison holds."""
    bad = int((~np.isfinite(ref)).sum())
    if bad:
        return [f"data/reference.npz: {bad} logits are NaN or infinite"]
    acc = float((ref.argmax(1) == labels).mean())
    if expected is not None and acc != expected:
        return [f"data/reference.npz: accuracy {acc!r} differs from the report's torch-fp32 accuracy {expected!r}"]
    return []


def check_output_file(path):
    """--json must be a new file or an existing regular file: writing would otherwise replace (or block on, or
    write through) a symlink, a fifo or a device that is not ours. The same rule as the pipeline's own options
    (pipeline.store.paths.check_output_file), restated because this script runs without the pipeline."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        sys.exit(f"error: --json {path} cannot be used ({e.strerror or e}); choose another --json.")
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        sys.exit(f"error: --json {path} is {kind}; give a new file or an existing regular file. Nothing was run.")


def strict_json(obj):
    """``obj`` with every NaN or infinity replaced by None, so json.dumps(allow_nan=False) accepts it."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--device", default="CPU", choices=["CPU", "GPU", "NPU"],
                    help="the OpenVINO device the IR files (.xml) are compiled for")
    ap.add_argument("--engines", action="store_true", help="run engines/*.engine with TensorRT instead of ONNX")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds: each a burst per model and batch size")
    ap.add_argument("--iterations", type=int, default=100, help="timed calls per burst (at most)")
    ap.add_argument("--seconds", type=float, default=0.15, help="a burst's length in seconds (at most; at least 3 calls)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--engine-tolerance-pp", type=float, default=0.1,
                    help="--engines: exit 1 when an engine's accuracy differs from its ONNX model's reported "
                         "accuracy by more than this many percentage points, or its sidecar does not match")
    args = ap.parse_args(argv)
    if args.json:
        check_output_file(args.json)
    try:
        check_rounds(rounds=args.rounds, burst_calls=args.iterations, burst_seconds=args.seconds, warmup=10,
                     names=("--rounds", "--iterations", "--seconds", "warm-up", "warm-up seconds"))
    except RuntimeInputError as e:
        sys.exit(f"error: {e}")

    manifest_bytes = (HERE / "MANIFEST.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    test = np.load(HERE / "data" / "mnist-test.npz")
    ref = np.load(HERE / "data" / "reference.npz")["logits"]
    images, labels = test["images"], test["labels"]
    reference_failed = check_reference(ref, labels, manifest.get("reference", {}).get("accuracy"))
    batches = [int(b) for b in args.batches.split(",")]
    paths = sorted((HERE / "engines").glob("*.engine")) if args.engines else \
        sorted([*(HERE / "models").glob("*.onnx"), *(HERE / "models").glob("*.xml")])
    if not paths:
        sys.exit("no engines found: run build_engines.py first" if args.engines else "no models in models/")
    rows, calls, not_run = [], {}, []
    for path, info, precision in [(p, i, pr) for p in paths
                                  for i, pr in runs_of(p, manifest.get("models", {}).get(p.stem, {}))]:
        try:
            model = load_model(path, info, precision, args, manifest)
        except Unavailable as e:
            not_run.append(f"{info.get('variant', path.stem)}: not run: {e}")
            continue
        x = normalize(images, model.meta)
        logits = classify(model, x)
        figures = compare(logits, ref, labels)
        failed = check_model(logits, figures, info)
        expected = info.get("accuracy")
        lo, hi = getattr(model, "batch_range", None) or (1, max(batches))
        row = {"variant": info.get("variant", path.stem), "backend": model.backend,
               "precision": precision or model.meta.get("precision", "?"), "size_bytes": _size(path),
               **figures, "flips": len(figures["flip_indices"]), "reported_accuracy": expected,
               "matches_report": expected is not None and not failed, "failed_checks": failed,
               "latency_includes": model.includes, "latency": {str(b): None for b in batches}}
        # timed below, with every other model, in rounds; the model stays loaded until then
        calls[len(rows)] = {b: (lambda m, f: lambda: m(f))(model, feed_of(x[:256], b)) for b in batches if lo <= b <= hi}
        if getattr(model, "hint", None):
            row["hint"] = model.hint
        if args.engines:
            row.update(unchecked=model.unchecked, problems=model.problems, layer_precisions=model.layer_precisions,
                       batch_range=[lo, hi])
        rows.append(row)
    stats, signals = interleave(calls, rounds=args.rounds, burst_calls=args.iterations, burst_seconds=args.seconds,
                                warmup=10)
    for i, by_batch in stats.items():
        rows[i]["latency"].update({str(b): figures_of(st) for b, st in by_batch.items()})
    noisy = untrusted(signals, {rows[i]["variant"]: by for i, by in stats.items()})
    small, big = str(batches[0]), str(batches[-1])
    head = (f"| variant | backend | precision | size | accuracy | agreement | max abs diff | flips | "
            f"p50 @{small} (ms) | p99 @{small} (ms) | throughput @{big} (img/s) | equals report |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        s, b = r["latency"][small] or {}, r["latency"][big] or {}
        print(f"| {r['variant']} | {r['backend']} | {r['precision']} | {r['size_bytes'] / 1024:.1f} KiB | "
              f"{100 * r['accuracy']:.2f} % | {r['agreement']:.4f} | "
              f"{'NaN/inf' if r['max_abs_diff'] is None else format(r['max_abs_diff'], '.2e')} | {r['flips']} | "
              f"{s.get('p50_ms', float('nan')):.3f} | {s.get('p99_ms', float('nan')):.3f} | "
              f"{b.get('throughput_per_s', float('nan')):,.0f} | "
              f"{'yes' if r['matches_report'] else 'NO' if r['reported_accuracy'] is not None else '-'} |")
    print(f"Timing: host wall clock per call after 10 warm-up calls; all models together in {args.rounds} rounds of "
          f"bursts (order rotated), p50 and throughput the median over rounds; each call spans: "
          + "; ".join(sorted({f"{r['backend']}: {r['latency_includes']}" for r in rows})) + ".")
    if noisy:
        print("WARNING: the timings are not to be trusted: " + "; ".join(noisy) + ". Close other programs and rerun.")
    for line in not_run:
        print(line)
    for problem in reference_failed:
        print(f"REFERENCE BROKEN: {problem}; no row above can be trusted.")
    for r in rows:
        if r["failed_checks"]:
            print(f"{r['variant']} ({r['backend']}) does not equal the report: " + "; ".join(r["failed_checks"]) + "."
                  + ("" if counted(r) or r["backend"].startswith("onnxruntime-") or r["backend"] == "tensorrt"
                     else " (shown, not counted in the exit status: see the top of bench.py)"))
        skipped = [b for b, st in r["latency"].items() if st is None]
        if skipped:
            print(f"{r['variant']}: batch {', '.join(skipped)} not timed: outside the engine profile's "
                  f"{r['batch_range'][0]}..{r['batch_range'][1]} (nan above)")
        if r.get("unchecked"):
            print(f"{r['variant']}: no sidecar (trtexec writes none), so not checked: {', '.join(r['unchecked'])}")
        for problem in r.get("problems") or []:
            print(f"{r['variant']}: WARNING: {problem}; rebuild with build_engines.py")
        if r.get("layer_precisions"):
            print(f"{r['variant']}: layers by precision {r['layer_precisions'].get('by_precision')}")
    state = device_state()
    if args.json:
        out = strict_json({"format": RESULT_FORMAT, "bundle": bundle_identity(manifest_bytes),
                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "engines": args.engines, "provider": args.provider, "openvino_device": args.device,
                           "images": int(len(labels)),
                           "rows": rows, "reference_failed_checks": reference_failed, "device": state,
                           "contention": {**signals, "untrusted": noisy}})
        out["digest"] = digest_of(out)
        Path(args.json).write_text(json.dumps(out, indent=2, allow_nan=False))
    broken = [r["variant"] for r in rows if r["nonfinite"]]
    if broken:
        print(f"FAILED: NaN or infinite logits from {', '.join(broken)}")
    checked = [r for r in rows if counted(r)]
    engines_failed = [r["variant"] for r in rows if r["backend"] == "tensorrt" and (
        r["problems"] or r["reported_accuracy"] is None or r["nonfinite"]
        or 100 * abs(r["accuracy"] - r["reported_accuracy"]) > args.engine_tolerance_pp)]
    if engines_failed:
        print(f"engines FAILED: {', '.join(engines_failed)} (accuracy off the report by more than "
              f"{args.engine_tolerance_pp} pp, NaN/inf logits, or a sidecar that does not match)")
    ok = not reference_failed and not broken and not engines_failed and all(r["matches_report"] for r in checked)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
