"""The conversion half of :mod:`exporters.litert`, run BY PATH with the LiteRT venv's python (never imported).

It imports only torch, numpy, torchao and litert-torch, which live in that venv. Input: a ``torch.export``
program file (``.pt2``, saved by the project's torch, the same release as the venv's), the precision, a
calibration ``.npy`` (int8), and the output path. It writes the ``.tflite`` there and prints ONE JSON line on
stdout: ``{"ok": true, "batch": "dynamic" | N}`` or ``{"ok": false, "error": "..."}``.

Batch: LiteRT's converter fails on a dynamic batch through ``nn.Flatten`` (the probe of issue 24), so flattens and
reshapes to the batch are first rewritten with ``-1`` for it (:func:`batch_free_reshapes`), a dynamic batch is tried
and, when it still fails, the program is converted at the fixed batch ``--batch``; the JSON line says which, and the
sidecar records it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def batch_free_reshapes(gm) -> int:
    """Rewrite ``gm``'s flattens and reshapes to the batch (a symbolic size, then concrete ones) as ``reshape(x, [-1,
    ...])``; returns how many. Why: litert-torch's JAX lowering cannot take a symbolic size in a shape ("Shapes must be
    1D sequences of concrete values", the ``nn.Flatten`` trap of the probe), while ``-1`` leaves the batch free and
    names no symbol. A shape with any other symbolic size is left alone (the fixed-batch fallback then applies)."""
    import math

    import torch

    aten = torch.ops.aten
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            shape = node.args[1]
            if not (isinstance(shape, (list, tuple)) and len(shape) >= 2 and isinstance(shape[0], torch.fx.Node)
                    and all(isinstance(d, int) and d > 0 for d in shape[1:])):
                continue
            rest = list(shape[1:])
        elif node.target is aten.flatten.using_ints:
            val = node.args[0].meta.get("val")
            start = node.args[1] if len(node.args) > 1 else 0
            end = node.args[2] if len(node.args) > 2 else -1
            if val is None or start != 1 or end not in (-1, val.dim() - 1):
                continue
            try:
                rest = [int(math.prod(int(d) for d in val.shape[1:]))]
            except (TypeError, ValueError):  # a symbolic size after the batch
                continue
        else:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(aten.reshape.default, (node.args[0], [-1, *rest]))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed += 1
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed


def _runs_at_batches(path: str, batches) -> None:
    """Raise unless LiteRT's interpreter (XNNPACK) runs the file at each batch: a dynamic INT8 file can convert and
    still fail to reshape in the XNNPACK delegate, and such a file falls back to the fixed batch."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    i = interp.get_input_details()[0]
    for n in batches:
        interp.resize_tensor_input(i["index"], [n, *i["shape"][1:]], strict=False)
        interp.allocate_tensors()
        interp.set_tensor(i["index"], np.zeros([n, *i["shape"][1:]], dtype=i["dtype"]))
        interp.invoke()


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
    batch_free_reshapes(module)
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
        # a fixed-batch graph takes only its own batch; a dynamic one any, so every image calibrates (a step larger
        # than the calibration set would skip them all and leave the observers empty)
        step = min(256, len(calibration)) if dynamic else len(sample)
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
            if dynamic:
                _runs_at_batches(args.out, (1, 3))
            return answer({"ok": True, "batch": "dynamic" if dynamic else args.batch,
                           "dynamic_failed": errors[0] if errors else None})
        except Exception as e:  # the converter raises many types; all mean "cannot lower this"
            errors.append(_one_line(e))
    return answer({"ok": False, "error": errors[-1], "dynamic_error": errors[0]})


if __name__ == "__main__":
    sys.exit(main())
