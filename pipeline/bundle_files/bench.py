#!/usr/bin/env python3
"""Standalone parity + latency check for this bundle. Needs numpy and onnxruntime (or TensorRT); no torch.

    python3 bench.py                      # every ONNX model on onnxruntime CPU
    python3 bench.py --provider cuda      # onnxruntime-gpu
    python3 bench.py --engines            # the engines built by build_engines.py (TensorRT + polygraphy)

For each model it classifies the 10,000 MNIST test images in data/mnist-test.npz, compares with the
PyTorch reference logits in data/reference.npz (accuracy, agreement, max |logit diff|, flips), times
it (warm-up, then p50/p90/p99 and throughput), and says whether it equals what the pipeline reported
(MANIFEST.json) as strictly as the pipeline's validate stage checks it: every logit finite, the same
accuracy, the same test images flipped against PyTorch, and for variants with a parity tolerance
(atol) agreement 1.0 and max |logit diff| <= atol. The reference itself must reproduce the report's
torch-fp32 accuracy. It prints the same table as the pipeline's report.md, then each failed check.
Exit 1 when the reference or any onnxruntime-CPU model fails a check.
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


def compare(logits, ref, labels):
    """Accuracy and agreement (fractions), max |logit diff| against the reference, and the flipped test indices."""
    pred, ref_pred = logits.argmax(1), ref.argmax(1)
    return {"accuracy": float((pred == labels).mean()), "agreement": float((pred == ref_pred).mean()),
            "max_abs_diff": float(np.abs(logits - ref).max()), "flip_indices": np.flatnonzero(pred != ref_pred).tolist()}


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
        if not figures["max_abs_diff"] <= atol:  # written so that NaN fails
            failed.append(f"max |logit diff| {figures['max_abs_diff']:.2e} (needs <= {atol:g})")
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
    reference_failed = check_reference(ref, labels, manifest.get("reference", {}).get("accuracy"))
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
        figures = compare(logits, ref, labels)
        failed = check_model(logits, figures, info)
        expected = info.get("accuracy")
        row = {"variant": info.get("variant", path.stem), "backend": model.backend,
               "precision": model.meta.get("precision", "?"), "size_bytes": path.stat().st_size,
               **figures, "flips": len(figures["flip_indices"]), "reported_accuracy": expected,
               "matches_report": expected is not None and not failed, "failed_checks": failed,
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
              f"{100 * r['accuracy']:.2f} % | {r['agreement']:.4f} | {r['max_abs_diff']:.2e} | {r['flips']} | "
              f"{s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {b['throughput_per_s']:,.0f} | "
              f"{'yes' if r['matches_report'] else 'NO' if r['reported_accuracy'] is not None else '-'} |")
    print("Timing: host wall clock per call after 10 warm-up calls (TensorRT: Polygraphy's runner, copies included).")
    for problem in reference_failed:
        print(f"REFERENCE BROKEN: {problem}; no row above can be trusted.")
    for r in rows:
        if r["failed_checks"]:
            print(f"{r['variant']} ({r['backend']}) does not equal the report: " + "; ".join(r["failed_checks"]) + ".")
    state = device_state()
    if args.json:
        out = {"rows": rows, "reference_failed_checks": reference_failed, "device": state}
        Path(args.json).write_text(json.dumps(strict_json(out), indent=2, allow_nan=False))
    checked = [r for r in rows if r["reported_accuracy"] is not None and r["backend"] == "onnxruntime-cpu"]
    return 0 if not reference_failed and all(r["matches_report"] for r in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
