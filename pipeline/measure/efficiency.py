"""How much of the CPU a model uses: MACs per image from the ONNX graph, and a peak-FLOP/s probe.

MACs are counted from the graph itself (Conv, ConvTranspose, Gemm, MatMul
after shape inference at batch 1), so they work for any ONNX classifier,
quantized or not. The CPU's peak is *measured*: a float32 matrix multiply
of 2048x2048 matrices in onnxruntime, best of 5, on all cores. Achieved
GFLOP/s = 2 x MACs x images/s; the fraction of peak tells how far a small
net is from compute-bound (for 28x28 inputs, memory traffic and per-op
overhead dominate). INT8 variants' integer operations are counted against the
same FP32 peak, so with VNNI their fraction can exceed 1.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

PEAK_METHOD = ("measured: float32 2048x2048 matmul, best of 5 runs, better of onnxruntime (MLAS) and torch, "
               "all cores (not derived from CPU flags)")


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


@functools.lru_cache(maxsize=None)
def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 matmul throughput in GFLOP/s (see :data:`PEAK_METHOD`): the better of
    onnxruntime's GEMM (MLAS, whose kernels the ONNX variants run on) and torch's BLAS.

    Measured once per process (about two seconds): the CPU does not change between the validate stages
    of one process, so a notebook calling :func:`pipeline.run` several times, or ``pipeline bench`` after
    it, reuses the first figure.

    numpy is not used: its OpenBLAS may be pinned to an older kernel on this
    kind of machine. A GEMM probe is not the silicon's theoretical peak, so a
    well-blocked convolution can reach a fraction above 1.
    """
    return max(_ort_matmul_gflops(size, repeats), _torch_matmul_gflops(size, repeats))


def _torch_matmul_gflops(size: int, repeats: int) -> float:
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def _ort_matmul_gflops(size: int, repeats: int) -> float:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "probe",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((size, size)).astype(np.float32)
    sess.run(None, {"A": a})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"A": a})
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


#: Training arithmetic per image, in forward passes: the forward, then the backward's two products of the same
#: size (gradients with respect to the activations and to the weights). The usual rule of thumb; augmentation,
#: the loss and the optimizer step are left out (small beside the convolutions).
TRAIN_MACS_FACTOR = 3


def training(macs_per_image: int, images_per_s: float, peak: float | None) -> dict:
    """Training throughput and efficiency: GFLOP/s = 2 x :data:`TRAIN_MACS_FACTOR` x forward MACs x images/s,
    and that as a fraction of ``peak`` (None: no CPU peak applies, e.g. training on a GPU)."""
    return {"images_per_s": round(images_per_s, 1), "macs_factor": TRAIN_MACS_FACTOR,
            **achieved(TRAIN_MACS_FACTOR * macs_per_image, images_per_s, peak)}


def achieved(macs_per_image: int, images_per_s: float, peak: float | None) -> dict:
    gflops = 2 * macs_per_image * images_per_s / 1e9
    return {"gflops": round(gflops, 2), "fraction_of_peak": round(gflops / peak, 4) if peak else None}
