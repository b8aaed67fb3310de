"""Score QAT recipes against PTQ on trained checkpoints: accuracy delta and flips vs torch FP32, and seconds.

Why: the default QAT recipe (``pipeline/config.py``'s ``QuantConfig``, ``pipeline/training/qat.py``) was chosen by
comparing candidates on the default model over seeds 0, 1 and 2 (docs/qat.md); this is the tool those
comparisons ran on. It needs each seed's run folder up to the export stage (a checkpoint and the FP32 ONNX):

    python -m pipeline run export --seed 0 --artifacts /tmp/qat/s0      # and seeds 1, 2
    python -m benchmarks.qat_recipes --artifacts '/tmp/qat/s{seed}' --seeds 0,1,2 \\
        --recipe default --recipe 'lr3e-4:qat_lr=3e-4,qat_ema=0.99'

Per seed it writes, into a scratch folder, the PTQ files (``onnx-int8-ptq``, ``onnx-int8-cpu``) and, per
recipe, ``onnx-int8-qat`` and ``onnx-int8-qat-cpu``, all through the quantize stage's own functions, and runs
each through the validate stage's runner and :func:`pipeline.measure.compare.compare` on the 10,000 test images
against the torch FP32 checkpoint, as ``pipeline run validate`` does. A recipe is ``name`` (the QuantConfig
defaults) or ``name:field=value,...`` (any ``QuantConfig`` field; values parsed as Python literals). The
seconds are QAT (fine-tuning, convert, export) plus the CPU form, on whatever else the machine was running:
the line ends with the 1-minute load average, to judge them by.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def _recipe(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            fields[key.strip()] = value.strip()
    return name, fields


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", required=True, help="run folder per seed, with {seed} in it")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="edgenet")
    ap.add_argument("--recipe", action="append", default=[], help="name[:field=value,...] (repeatable)")
    ap.add_argument("--no-ptq", action="store_true", help="skip the PTQ rows")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)

    import torch

    from exporters.cpu_placement import qat_cpu_int8
    from exporters.onnx import build_metadata
    from exporters.precision import quantize_file
    from pipeline.store import checkpoint
    from pipeline.training import qat
    from pipeline.config import build_config
    from pipeline.dataset import load_splits
    from pipeline.store.paths import RunDir
    from pipeline.stages.quantize import calibration_images
    from pipeline.measure.compare import compare, run_logits
    from pipeline.measure.runners import build
    from pipeline.variants import BY_NAME

    recipes = [_recipe(r) for r in args.recipe] or [("default", {})]
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = build_config(model=args.model, data_root=args.data_root, seed=seed,
                           artifacts=args.artifacts.format(seed=seed))
        splits = load_splits(cfg.data)
        rd = RunDir.for_model(cfg.artifacts, args.model)
        ckpt = checkpoint.load(rd.checkpoint)
        fp32 = rd.export_file(BY_NAME["onnx-fp32"].file)
        images, labels = splits.test_x.numpy(), splits.test_y.numpy()
        with build(BY_NAME["torch-fp32"], rd, model=checkpoint.restore(ckpt)) as runner:
            reference = run_logits(runner, images)
        norm = ckpt["normalization"]
        meta = build_metadata(model_name=ckpt["model"], mean=norm["mean"], std=norm["std"], classes=ckpt["classes"],
                              checkpoint_sha256="-", precision="int8", extra={"quantization": "benchmark"})
        calib = calibration_images(splits.train_x, cfg.quant)

        def score(name, scratch, recipe, seconds):
            v = BY_NAME[name]
            with build(v, scratch, model=None) as runner:
                f = compare(run_logits(runner, images), reference, labels)
            row = {"seed": seed, "recipe": recipe, "variant": name, "accuracy": round(100 * f["accuracy"], 2),
                   "delta_pp": f["accuracy_delta"], "flips": len(f["flips"]), "seconds": round(seconds, 1),
                   "load": _load()}
            print(json.dumps(row), flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            scratch = RunDir(Path(tmp))
            scratch.export_file("x").parent.mkdir(parents=True)
            if not args.no_ptq:
                for name in ("onnx-int8-ptq", "onnx-int8-cpu"):
                    v = BY_NAME[name]
                    t0 = time.perf_counter()
                    quantize_file(fp32, scratch.export_file(v.file), calib, cfg.quant.calib_method, meta,
                                  for_tensorrt=v.tensorrt)
                    score(name, scratch, "ptq", time.perf_counter() - t0)
            for rname, fields in recipes:
                q = dataclasses.replace(cfg.quant, **fields)
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                path = qat.qat(checkpoint.restore(ckpt), splits, q, scratch.export_file(BY_NAME["onnx-int8-qat"].file),
                               meta, cfg.export.opset, batch_size=cfg.train.batch_size, seed=seed)
                t_qat = time.perf_counter() - t0
                score("onnx-int8-qat", scratch, rname, t_qat)
                t0 = time.perf_counter()
                qat_cpu_int8(path, scratch.export_file(BY_NAME["onnx-int8-qat-cpu"].file), calib, meta)
                score("onnx-int8-qat-cpu", scratch, rname, t_qat + time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
