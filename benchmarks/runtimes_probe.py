"""Probe the edge runtimes (OpenVINO, ExecuTorch, LiteRT) on one checkpoint against torch FP32 and onnxruntime FP32.

Why: the table of docs/runtimes.md comes from here, before these runtimes are rows of the variant table. It
restores a pipeline checkpoint, exports every file with the exporters of issue 24 (FP32 and INT8 per runtime,
calibrated on training images), judges each on all 10,000 MNIST test images (accuracy, agreement with torch FP32,
flipped images, max |logit diff|) and times them all interleaved in ONE process with onnxruntime FP32
(:func:`runtime.bench.interleave`), at batch 1 and 256. Writes nothing but its output folder and a JSON.

    python -m benchmarks.runtimes_probe --checkpoint artifacts/edgenet/train/model.pt --out /tmp/probe
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _images(ckpt: dict, data_root: Path | None, calib: int):
    import torch
    from torchvision import datasets

    from pipeline.config import DataConfig
    from pipeline.dataset import ensure_raw

    root = data_root or DataConfig().root
    ensure_raw(root)
    mean, std = (torch.tensor(ckpt["normalization"][k], dtype=torch.float32).reshape(-1, 1, 1) for k in ("mean", "std"))

    def norm(u8):
        return ((u8.float().unsqueeze(1) / 255 - mean) / std).contiguous().numpy()

    train, test = (datasets.MNIST(str(root), train=t, download=False) for t in (True, False))
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train.data), generator=g)[:calib]
    return norm(test.data), test.targets.numpy(), norm(train.data[pick])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--calib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--skip", default="", help="comma-separated runtimes to leave out: openvino,executorch,litert")
    args = p.parse_args()

    import torch

    from exporters.onnx import build_metadata, export_fp32 as onnx_fp32
    from pipeline.measure.compare import compare, run_logits
    from pipeline.measure.torch_runner import TorchRunner
    from pipeline.store import checkpoint
    from runtime.bench import interleave
    from runtime.onnxrt import OnnxrtRunner

    torch.set_num_threads(torch.get_num_threads())
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore(ckpt)
    norm = ckpt["normalization"]
    meta = build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                          checkpoint_sha256="probe", precision="fp32")
    test_x, test_y, calib = _images(ckpt, args.data_root, args.calib)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    runners, export_s = {"torch-fp32": TorchRunner(model)}, {}

    def made(name, fn):
        t0 = time.perf_counter()
        path = fn()
        export_s[name] = round(time.perf_counter() - t0, 1)
        return path

    onnx_file = made("onnx-fp32", lambda: onnx_fp32(model, out / "model-fp32.onnx", meta))
    runners["onnx-fp32"] = OnnxrtRunner(onnx_file)
    if "openvino" not in skip:
        from exporters import openvino as eov
        from runtime.openvino import OpenvinoRunner, cpu_has_bf16

        ov32 = made("openvino-fp32", lambda: eov.export_fp32(onnx_file, out / "ov-fp32.xml", meta))
        ov8 = made("openvino-int8", lambda: eov.export_int8(onnx_file, out / "ov-int8.xml", meta, calib))
        runners["openvino-fp32"] = OpenvinoRunner(ov32)
        runners["openvino-int8"] = OpenvinoRunner(ov8, precision="int8")
        if cpu_has_bf16():
            runners["openvino-bf16 (hint)"] = OpenvinoRunner(ov32, precision="bf16")
    if "executorch" not in skip:
        from exporters import executorch as eet
        from pipeline.measure.executorch_runner import ExecutorchRunner

        runners["executorch-fp32"] = ExecutorchRunner(made("executorch-fp32", lambda: eet.export_fp32(
            model, out / "et-fp32.pte", meta)))
        runners["executorch-int8"] = ExecutorchRunner(made("executorch-int8", lambda: eet.export_int8(
            model, out / "et-int8.pte", meta, calib)))
    if "litert" not in skip:
        from exporters import litert as elt
        from runtime.litert import LitertRunner

        runners["litert-fp32"] = LitertRunner(made("litert-fp32", lambda: elt.export_fp32(
            model, out / "lt-fp32.tflite", meta, example=calib[:2])), mode="worker")
        runners["litert-int8"] = LitertRunner(made("litert-int8", lambda: elt.export_int8(
            model, out / "lt-int8.tflite", meta, calib, example=calib[:2])), mode="worker")

    for r in runners.values():
        r.activate()
    reference = run_logits(runners["torch-fp32"], test_x)
    rows = {}
    for name, r in runners.items():
        figures = compare(run_logits(r, test_x, batch_size=256), reference, test_y)
        rows[name] = {"accuracy": figures["accuracy"], "agreement": figures["agreement"],
                      "flips": len(figures["flips"]), "max_abs_diff": figures["max_abs_diff"],
                      "export_s": export_s.get(name)}
    calls = {name: {b: (lambda r=r, x=test_x[:b]: r.infer({"input": x})) for b in (1, 256)}
             for name, r in runners.items()}
    stats, contention = interleave(calls, rounds=args.rounds)
    base = stats["onnx-fp32"]
    for name in rows:
        for b in (1, 256):
            s = stats[name][b]
            rows[name][f"b{b}_p50_ms"] = round(s.p50_ms, 4)
            rows[name][f"b{b}_vs_ort"] = round(s.throughput_per_s / base[b].throughput_per_s, 2)
            rows[name][f"b{b}_noisy"] = s.noisy
    for r in runners.values():
        r.deactivate()
    (out / "probe.json").write_text(json.dumps({"rows": rows, "contention": contention}, indent=1, default=str))
    print(f"{'row':24} {'acc %':>7} {'agree %':>8} {'flips':>5} {'max diff':>9} {'b1 ms':>8} {'b1 x':>5} "
          f"{'b256 ms':>8} {'b256 x':>6}")
    for name, row in rows.items():
        diff = "NaN" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2g}"
        print(f"{name:24} {100 * row['accuracy']:7.2f} {100 * row['agreement']:8.2f} {row['flips']:5d} {diff:>9} "
              f"{row['b1_p50_ms']:8.3f} {row['b1_vs_ort']:5.2f} {row['b256_p50_ms']:8.2f} {row['b256_vs_ort']:6.2f}")


if __name__ == "__main__":
    main()
