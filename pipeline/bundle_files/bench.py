#!/usr/bin/env python3
"""Standalone parity + latency check for this bundle. Needs numpy and onnxruntime (or TensorRT); no torch.

    python3 bench.py                      # every ONNX model on onnxruntime CPU
    python3 bench.py --provider cuda      # onnxruntime-gpu
    python3 bench.py --engines            # the engines built by build_engines.py (TensorRT + polygraphy)

For each model it classifies the 10,000 MNIST test images in data/mnist-test.npz, compares with the
PyTorch reference logits in data/reference.npz (accuracy, agreement, max |logit diff|, flips), times
it (warm-up, then p50/p90/p99 and throughput), and says whether the accuracy equals the one the
pipeline reported (MANIFEST.json). It prints the same table as the pipeline's report.md.
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


def device_state():
    """Jetson power mode and clocks when the Jetson tools exist; CPU/platform otherwise."""
    state = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    for tool, args in (("nvpmodel", ["-q"]), ("jetson_clocks", ["--show"])):
        if shutil.which(tool):
            try:
                out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=20)
                state[tool] = (out.stdout or out.stderr).strip()[:2000]
            except (OSError, subprocess.SubprocessError) as e:
                state[tool] = f"could not run: {e}"
    return state


def normalize(images_u8, meta):
    scale = float(json.loads(meta.get("pixel_scale", str(1 / 255))))
    mean = np.asarray(json.loads(meta["normalization_mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["normalization_std"]), np.float32).reshape(1, -1, 1, 1)
    return ((images_u8[:, None].astype(np.float32) * scale - mean) / std).astype(np.float32)


class OrtModel:
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


class TrtModel:
    """TensorRT engine through Polygraphy's runner (device buffers, copies and stream sync included)."""

    def __init__(self, path):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        side = json.loads(Path(str(path) + ".json").read_text())
        self.meta = side["metadata"]
        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
        self.runner.activate()
        self.input = self.meta.get("input_name", "input")
        self.backend = "tensorrt"

    def __call__(self, x):
        return next(iter(self.runner.infer({self.input: x}).values()))


def timings(model, x, batch, warmup, iterations, seconds):
    reps = -(-batch // len(x))
    feed = np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
    for _ in range(warmup):
        model(feed)
    ts, deadline = [], time.perf_counter() + seconds
    while len(ts) < iterations and (len(ts) < 10 or time.perf_counter() < deadline):
        t = time.perf_counter_ns()
        model(feed)
        ts.append((time.perf_counter_ns() - t) / 1e6)
    t = np.asarray(ts)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": t.mean(),
            "throughput_per_s": batch * len(t) / (t.sum() / 1000)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--engines", action="store_true", help="run engines/*.engine with TensorRT instead of ONNX")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=2.0, help="max timing seconds per batch size")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)

    manifest = json.loads((HERE / "MANIFEST.json").read_text())
    test = np.load(HERE / "data" / "mnist-test.npz")
    ref = np.load(HERE / "data" / "reference.npz")["logits"]
    images, labels = test["images"], test["labels"]
    ref_pred = ref.argmax(1)
    batches = [int(b) for b in args.batches.split(",")]
    paths = sorted((HERE / "engines").glob("*.engine")) if args.engines else sorted((HERE / "models").glob("*.onnx"))
    if not paths:
        sys.exit("no engines found: run build_engines.py first" if args.engines else "no ONNX models in models/")
    rows = []
    for path in paths:
        info = manifest.get("models", {}).get(path.stem, {})
        model = TrtModel(path) if args.engines else OrtModel(path, args.provider, args.threads,
                                                             info.get("ort_optimization", "all"))
        x = normalize(images, model.meta)
        logits = np.concatenate([model(x[i:i + 1000]) for i in range(0, len(x), 1000)]).astype(np.float32)
        finite = np.isfinite(logits).all(1)  # an image with a NaN/inf logit is wrong, never argmax'ed
        pred = np.where(finite, logits.argmax(1), -1)
        name = info.get("variant", path.stem)
        expected = info.get("accuracy")
        acc = float((pred == labels).mean())
        row = {"variant": name, "backend": model.backend, "precision": model.meta.get("precision", "?"),
               "size_bytes": path.stat().st_size, "accuracy": acc,
               "agreement": float((pred == ref_pred).mean()),
               "max_abs_diff": float(np.abs(logits - ref).max()) if finite.all() else None,  # null: NaN/inf
               "nonfinite": int((~finite).sum()),
               "flips": int((pred != ref_pred).sum()), "reported_accuracy": expected,
               "matches_report": expected is not None and acc == expected and bool(finite.all()),
               "latency": {str(b): timings(model, x[:256], b, 10, args.iterations, args.seconds) for b in batches}}
        rows.append(row)
    small, big = str(batches[0]), str(batches[-1])
    head = (f"| variant | backend | precision | size | accuracy | agreement | max abs diff | flips | "
            f"p50 @{small} (ms) | p99 @{small} (ms) | throughput @{big} (img/s) | equals report |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        s, b = r["latency"][small], r["latency"][big]
        print(f"| {r['variant']} | {r['backend']} | {r['precision']} | {r['size_bytes'] / 1024:.1f} KiB | "
              f"{100 * r['accuracy']:.2f} % | {r['agreement']:.4f} | "
              f"{'NaN/inf' if r['max_abs_diff'] is None else format(r['max_abs_diff'], '.2e')} | {r['flips']} | "
              f"{s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {b['throughput_per_s']:,.0f} | "
              f"{'yes' if r['matches_report'] else 'NO' if r['reported_accuracy'] is not None else '-'} |")
    print("Timing: host wall clock per call after 10 warm-up calls (TensorRT: Polygraphy's runner, copies included).")
    state = device_state()
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "device": state}, indent=2, allow_nan=False))
    broken = [r["variant"] for r in rows if r["nonfinite"]]
    if broken:
        print(f"FAILED: NaN or infinite logits from {', '.join(broken)}")
    checked = [r for r in rows if r["reported_accuracy"] is not None and r["backend"] == "onnxruntime-cpu"]
    return 0 if all(r["matches_report"] for r in checked) and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
