"""The conversion half of :mod:`exporters.litert`, run BY PATH with the LiteRT venv's python (never imported).

It imports only torch, numpy, torchao and litert-torch, which live in that venv. Input: a ``torch.export``
program file (``.pt2``, saved by the project's torch, the same release as the venv's), the precision, a
calibration ``.npy`` (int8), and the output path. It writes the ``.tflite`` there and prints ONE JSON line on
stdout: ``{"ok": true, "batch": "dynamic" | N}`` or ``{"ok": false, "error": "..."}``.

Batch: LiteRT's converter fails on a dynamic batch through ``nn.Flatten`` (the probe of issue 24), so a
dynamic batch is tried first and, when it fails, the program is converted at the fixed batch ``--batch``; the
JSON line says which, and the sidecar records it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--program", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--precision", choices=("fp32", "int8"), required=True)
    p.add_argument("--calibration")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # converter chatter goes to stderr; stdout carries only our JSON line

    def answer(obj) -> int:
        real_stdout.write(json.dumps(obj) + "\n")
        real_stdout.flush()
        return 0 if obj.get("ok") else 1

    try:
        import numpy as np
        import torch
        import litert_torch
    except ImportError as e:
        return answer({"ok": False, "error": f"the LiteRT venv lacks a package: {_one_line(e)}"})
    torch.manual_seed(0)
    module = torch.export.load(args.program).module()
    calibration = None
    if args.precision == "int8":
        calibration = torch.from_numpy(np.load(args.calibration, allow_pickle=False)).float()
    example = torch.zeros(args.batch, 1, 28, 28) if calibration is None else calibration[:args.batch]
    if len(example) < args.batch:
        example = example.repeat(args.batch, 1, 1, 1)[:args.batch]

    def convert(sample, dynamic):
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
        if args.precision == "fp32":
            return litert_torch.convert(module, (sample,), dynamic_shapes=shapes)
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import quantize_pt2e

        quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        graph = torch.export.export(module, (sample,), dynamic_shapes=shapes).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        step = 256 if dynamic else len(sample)  # a fixed-batch graph takes only its own batch
        with torch.no_grad():
            for i in range(0, len(calibration) - step + 1, step):
                prepared(calibration[i:i + step])
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        return litert_torch.convert(converted, (sample,), dynamic_shapes=shapes,
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))

    # a dynamic attempt needs a sample batch of 2 or more: torch.export specializes a batch of 1 to the constant 1
    dynamic_example = example.repeat(2, 1, 1, 1)[:max(2, len(example))]
    errors = []
    for dynamic in (True, False):
        try:
            model = convert(dynamic_example if dynamic else example, dynamic)
            model.export(args.out)
            return answer({"ok": True, "batch": "dynamic" if dynamic else args.batch,
                           "dynamic_failed": errors[0] if errors else None})
        except Exception as e:  # the converter raises many types; all mean "cannot lower this"
            errors.append(_one_line(e))
    return answer({"ok": False, "error": errors[-1], "dynamic_error": errors[0]})


if __name__ == "__main__":
    sys.exit(main())
