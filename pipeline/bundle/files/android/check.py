#!/usr/bin/env python3
"""Reruns this bundle's golden vectors with each runtime's Python API and holds every file to the report.

    python3 check.py                       # every .pte and .tflite whose runtime is installed here
    python3 check.py --runtime litert      # only LiteRT (pip install ai-edge-litert numpy)
    python3 check.py --runtime executorch  # only ExecuTorch (pip install executorch numpy; it needs torch)

For each model it preprocesses the raw golden images (data/golden-images.npz) with the model's own contract (its
sidecar, models/<file>.json: pixel scale, mean, std, NCHW), checks that this gives the very inputs the pipeline fed
(data/golden.npz, within 1e-5), runs them through the runtime (ExecuTorch: executorch.runtime; LiteRT:
ai_edge_litert.interpreter, quantizing the input and dequantizing the output of a file with int8 tensors with the
tensors' scale and zero point) and compares the logits with PyTorch's in data/golden.npz:

- every logit finite;
- a file with a parity tolerance (FP32, MANIFEST.json's atol): the same class on every image and
  max |logit diff| <= atol;
- every file: the images flipped against PyTorch are exactly those the report lists for it among these images
  (MANIFEST.json's flips: the pipeline checked all 10,000 test images; the golden images are the first of them);
- a file without one (INT8): max |logit diff| no larger than the report's over all 10,000 images (a bound the golden
  images, being among them, cannot exceed on the pipeline's host; logits read without dequantizing them do).

A runtime that is not installed is skipped, saying how to install it. Exit 0 when every model that ran passed and at
least one ran; 1 when a check failed; 2 when nothing could run. Needs numpy and one of the runtimes; never this
repository. --json writes the results.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # no __pycache__ in the bundle: its MANIFEST.json lists every file it may hold

#: suffix -> (runtime, the module that must import, how to install it)
RUNTIMES = {".pte": ("executorch", "executorch.runtime", "pip install executorch torch numpy (ExecuTorch's Python "
                     "runtime takes torch tensors; torch's CPU build is enough)"),
            ".tflite": ("litert", "ai_edge_litert.interpreter", "pip install ai-edge-litert numpy")}
#: how close the contract's preprocessing must come to the pipeline's golden inputs (float32 rounding)
CONTRACT_ATOL = 1e-5


def normalize(images_u8, meta):
    """The preprocessing contract: x = (pixel * pixel_scale - mean) / std, float32, NCHW (one channel here)."""
    scale = float(json.loads(str(meta.get("pixel_scale", 1 / 255))))
    mean = np.asarray(json.loads(meta["normalization_mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["normalization_std"]), np.float32).reshape(1, -1, 1, 1)
    return ((images_u8[:, None].astype(np.float32) * scale - mean) / std).astype(np.float32)


def import_error(module):
    """Why ``module`` cannot be imported here ('' when it can): not installed, or installed without what it needs
    (executorch without torch fails with its own message about its extension module)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        return " ".join(str(e).split())[:200] or type(e).__name__
    return ""


def run_executorch(path, x):
    """forward() of the .pte on the whole batch (within its max_batch), through ExecuTorch's Python runtime."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy().astype(np.float32)


def run_litert(path, x):
    """The .tflite on ai-edge-litert's Interpreter, image by image at the file's own batch (a file exported with a
    fixed batch of 1 cannot be resized). An int8 input is quantized as q = clip(round(x / scale) + zero_point,
    -128, 127), an int8 output dequantized as (q - zero_point) * scale: what an app must do too."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    batch = int(i["shape"][0])
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:  # pad the last chunk with copies of its last image; their logits are dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        if np.dtype(i["dtype"]) == np.int8:
            scale, zero = i["quantization"]
            chunk = np.clip(np.round(chunk / scale) + zero, -128, 127).astype(np.int8)
        interp.set_tensor(i["index"], np.ascontiguousarray(chunk, dtype=i["dtype"]))
        interp.invoke()
        y = interp.get_tensor(o["index"])
        if np.dtype(o["dtype"]) == np.int8:
            scale, zero = o["quantization"]
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        outs.append(np.array(y, dtype=np.float32)[:n])
    return np.concatenate(outs)


RUN = {"executorch": run_executorch, "litert": run_litert}


def check_model(logits, ref, info):
    """The checks that failed, each as a sentence (empty: the model equals the report on the golden images)."""
    failed = []
    finite = np.isfinite(logits).all(1)
    if not finite.all():
        failed.append(f"{int((~np.isfinite(logits)).sum())} logits are NaN or infinite")
    pred, ref_pred = np.where(finite, logits.argmax(1), -1), ref.argmax(1)
    flipped = set(np.flatnonzero(pred != ref_pred).tolist())
    atol, reported = info.get("atol"), info.get("max_abs_diff")
    diff = float(np.abs(logits - ref).max()) if finite.all() else float("nan")
    if atol is not None:
        if flipped:
            failed.append(f"{len(flipped)} golden images get another class than PyTorch's (needs none)")
        if not diff <= atol:  # written so that NaN fails
            failed.append(f"max |logit diff| {diff:.2e} (needs <= {atol:g})")
    elif reported is not None and not diff <= reported:  # e.g. int8 logits used without dequantizing them
        failed.append(f"max |logit diff| {diff:.2e} on the golden images, above the report's {reported:.2e} on all "
                      "10,000 test images (the golden images are among them)")
    if info.get("flips") is not None:
        expected = {i for i in info["flips"] if i < len(ref)}
        if flipped != expected:
            failed.append(f"flipped golden images {sorted(flipped)[:10]} differ from the report's {sorted(expected)[:10]}")
    return failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", choices=["all", *sorted(RUN)], default="all")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if args.json and (Path(args.json).is_symlink() or (Path(args.json).exists() and not Path(args.json).is_file())):
        sys.exit(f"error: --json {args.json} is not a regular file; give a new file or an existing regular file.")

    manifest = json.loads((HERE / "MANIFEST.json").read_text())
    golden = np.load(HERE / "data" / "golden.npz")
    raw = np.load(HERE / "data" / "golden-images.npz")
    ref, x_pipeline = golden["logits"], golden["input"]
    problems = []
    if not np.isfinite(ref).all():
        problems.append("REFERENCE BROKEN: data/golden.npz holds NaN or infinite logits; no check can be trusted.")
    if not np.array_equal(raw["labels"], golden["labels"]):
        problems.append("REFERENCE BROKEN: data/golden-images.npz and data/golden.npz hold other images.")
    rows, skipped = [], {}
    for name, info in sorted(manifest.get("models", {}).items()):
        path = HERE / "models" / name
        runtime, module, install = RUNTIMES.get(path.suffix, (None, None, None))
        if runtime is None or args.runtime not in ("all", runtime):
            continue
        why = import_error(module)
        if why:
            skipped[name] = f"{runtime} cannot be imported here ({why}); install it: {install}"
            continue
        meta = json.loads(Path(f"{path}.json").read_text())
        x = normalize(raw["images"], meta)
        row = {"file": name, "variant": info.get("variant", name), "runtime": runtime,
               "precision": meta.get("precision", info.get("precision", "?")), "failed_checks": []}
        gap = float(np.abs(x - x_pipeline).max())
        if not gap <= CONTRACT_ATOL:
            row["failed_checks"].append(f"the contract in models/{name}.json gives inputs {gap:.2e} off the "
                                        f"pipeline's (needs <= {CONTRACT_ATOL:g})")
        try:
            logits = RUN[runtime](path, x)
        except Exception as e:  # a damaged file or a runtime that refuses it: this model fails, the others go on
            row["failed_checks"].append(f"{runtime} could not run it: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            rows.append(row)
            continue
        pred, ref_pred = logits.argmax(1), ref.argmax(1)
        row.update(agreement=float((pred == ref_pred).mean()),
                   max_abs_diff=float(np.abs(logits - ref).max()) if np.isfinite(logits).all() else None,
                   flips=np.flatnonzero(pred != ref_pred).tolist())
        row["failed_checks"] += check_model(logits, ref, info)
        rows.append(row)

    print(f"| file | variant | runtime | precision | agreement on {len(ref)} golden images | max abs diff | "
          "equals report |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = r.get("max_abs_diff")
        print(f"| {r['file']} | {r['variant']} | {r['runtime']} | {r['precision']} | "
              f"{r['agreement']:.4f} | {'NaN/inf' if diff is None else format(diff, '.2e')} | "
              f"{'NO' if r['failed_checks'] else 'yes'} |" if "agreement" in r else
              f"| {r['file']} | {r['variant']} | {r['runtime']} | {r['precision']} | - | - | NO |")
    for name, why in skipped.items():
        print(f"SKIPPED {name}: {why}")
    for problem in problems:
        print(problem)
    for r in rows:
        if r["failed_checks"]:
            print(f"{r['file']} ({r['variant']}) does not equal the report: " + "; ".join(r["failed_checks"]) + ".")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped, "problems": problems}, indent=2))
    if problems or any(r["failed_checks"] for r in rows):
        print("FAILED")
        return 1
    if not rows:
        print("nothing was checked: no runtime for these files is installed here")
        return 2
    print(f"OK: {len(rows)} model(s) equal the report on the golden images" + (
        f"; {len(skipped)} skipped" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
