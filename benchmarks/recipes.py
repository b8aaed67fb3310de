"""Train one (model, recipe) per seed through the pipeline's own training code and print one line per run.

Why: the default model and recipe (``pipeline/config.py``, ``pipeline/models.py``) were chosen by comparing
candidates on test accuracy against training cost; this is the tool those comparisons ran on, so anyone can
repeat a row of the "recipes tried" table of docs/history.md. It calls :func:`pipeline.training.fit.train` on the splits the
pipeline itself loads, builds its config through :func:`pipeline.config.build_config` (so defaults and
validation are the pipeline's), seeds before building the model exactly as the train stage does, and writes
nothing but its output. Selection is on the validation split; the test accuracy is that of the kept weights.

    python -m benchmarks.recipes --model edgenet --seeds 0,1,2 --set epochs=5 --set batch_size=256

``--set`` takes any ``pipeline run`` option (``pipeline.config.RUN_OPTIONS``); values are parsed as Python
literals where they can be. ``--model`` takes a registry name or ``package.module:Class``. Seconds depend on the
machine's load: the line ends with the 1-minute load average read at the end of the run, to judge them by.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: an optimizer or schedule name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="edgenet")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                    help="a pipeline run option, e.g. epochs=5 (repeatable)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json", action="store_true", help="print each run as one JSON object instead")
    args = ap.parse_args(argv)

    import logging

    import torch

    from pipeline import models
    from pipeline.config import build_config
    from pipeline.dataset import load_splits
    from pipeline.training.fit import train

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # the per-epoch lines
    options = {}
    for item in args.set:
        name, _, value = item.partition("=")
        options[name.replace("-", "_")] = _value(value)
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = build_config(model=args.model, data_root=args.data_root, **{**options, "seed": seed})
        splits = load_splits(cfg.data)
        torch.manual_seed(cfg.train.seed)  # as the train stage does: initial weights from the seeded global RNG
        model = models.build(cfg.model)
        macs = models.macs_per_image(model)
        r = train(model, splits, cfg.train)
        try:
            with open("/proc/loadavg") as f:  # Linux; elsewhere the line says n/a
                load = f.read().split()[0]
        except OSError:
            load = "n/a"
        row = {"model": args.model, "macs": macs, "seed": seed, "options": options, "epochs": cfg.train.epochs,
               "seconds": round(r.seconds, 1), "epoch_seconds": [round(h["seconds"], 1) for h in r.history],
               "val": [round(100 * h["val_accuracy"], 2) for h in r.history], "best_epoch": r.best_epoch,
               "val_accuracy": round(100 * r.val_accuracy, 2), "test_accuracy": round(100 * r.test_accuracy, 2),
               "load": load}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{args.model} {macs / 1e6:.2f} M MACs seed {seed} {options}: {cfg.train.epochs} epochs "
                  f"{r.seconds:.0f} s, kept epoch {r.best_epoch} val {row['val_accuracy']:.2f} % "
                  f"test {row['test_accuracy']:.2f} % (val per epoch {row['val']}; load {load})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
