"""How much of the CPU a model uses: MACs per image from the ONNX graph, and a peak-FLOP/s probe.

MACs are counted from the graph itself (Conv, ConvTranspose, Gemm, MatMul
after shape inference at batch 1), so they work for any ONNX classifier,
quantized or not. The CPU's peak is *measured*: a float32 matrix multiply
(numpy's BLAS) of 2048x2048 matrices, best of 3, on all cores. Achieved
GFLOP/s = 2 x MACs x images/s; the fraction of peak tells how far a small
net is from compute-bound (for 28x28 inputs, memory traffic and per-op
overhead dominate). INT8 variants' integer operations are counted against the
same FP32 peak, so with VNNI their fraction can exceed 1.
"""
from __future__ import annotations

import time
from pathlib import Path

PEAK_METHOD = "measured: numpy float32 matmul 2048x2048, best of 3, all cores (not derived from CPU flags)"


def onnx_macs_per_image(path: Path, image_shape: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates for one image, from the graph's Conv/Gemm/MatMul nodes."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if image_shape is not None:
        del dims[:]
        for d in (1, *image_shape):
            dims.add().dim_value = int(d)
    else:
        dims[0].Clear()
        dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and y and all(y):
                if node.op_type == "Conv":  # each output value: Cin/group x kernel
                    macs += int(np.prod(y)) * int(np.prod(w[1:]))
                else:
                    x = shapes.get(node.input[0]) or []
                    macs += int(np.prod(x)) * int(w[1]) * int(np.prod(w[2:])) if x else 0
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and y and all(y):
                trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                k = a[-2] if trans_a else a[-1]
                macs += int(np.prod(y)) * int(k)
    return macs


def peak_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's float32 matmul throughput in GFLOP/s (see :data:`PEAK_METHOD`)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def achieved(macs_per_image: int, images_per_s: float, peak: float | None) -> dict:
    gflops = 2 * macs_per_image * images_per_s / 1e9
    return {"gflops": round(gflops, 2), "fraction_of_peak": round(gflops / peak, 4) if peak else None}
