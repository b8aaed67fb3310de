"""PyTorch -> ExecuTorch ``.pte`` lowered to XNNPACK: FP32, and INT8 through PT2E with ``XNNPACKQuantizer``.

The batch-bound trap (probe of issue 24): a ``.pte`` holds a fixed upper bound for every dynamic dimension, and
with an example batch of 8 or less at export the lowered program refused batches over 15 whatever
``Dim("batch", max=...)`` said. So the export's example batch is :data:`EXAMPLE_BATCH` (256) images, and the
bound the file actually holds is read back from the written program (``MethodMeta``) and recorded in the
sidecar; :class:`pipeline.measure.executorch_runner.ExecutorchRunner` reads it from the file again and refuses a
larger batch with a clear error.

A ``.pte`` has no free-form metadata, so the preprocessing contract (:func:`exporters.onnx.build_metadata`) goes
into a sidecar ``<file>.pte.json`` (:func:`sidecar_path`), with ``max_batch`` beside it. Lowering failures
raise :class:`ExecutorchExportError`: one paragraph naming ExecuTorch and, where it says, the operator.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .atomic import atomic_path

EXAMPLE_BATCH = 256
MAX_BATCH = 1024  # Dim("batch", max=...) at export; the file's real bound is read back and recorded
INSTALL_HINT = "`pip install -e .[executorch]` (executorch==1.5.*)"


class ExecutorchExportError(Exception):
    """ExecuTorch could not export or lower the model (an operator XNNPACK or the portable kernels lack...)."""


def sidecar_path(pte: Path) -> Path:
    return Path(f"{pte}.json")


def read_sidecar(pte: Path) -> dict:
    """The sidecar of ``pte`` as a dict of strings (plus ``max_batch`` as an int); ValueError if unreadable."""
    try:
        data = json.loads(sidecar_path(pte).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"ExecuTorch sidecar {sidecar_path(pte)} is missing or not JSON ({type(e).__name__}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("max_batch"), int) or isinstance(data["max_batch"], bool):
        raise ValueError(f"ExecuTorch sidecar {sidecar_path(pte)} has no integer max_batch.")
    return data


def _import():
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise ExecutorchExportError(f"ExecuTorch is not installed: {INSTALL_HINT}.") from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def _failed(step: str, e: Exception) -> ExecutorchExportError:
    text = " ".join(str(e).split())
    op = re.search(r"\b((?:aten|quantized_decomposed|torchao)::?\.?[\w.]+|aten\.[\w.]+)", text)
    named = f" (operator {op.group(1)})" if op else ""
    return ExecutorchExportError(f"ExecuTorch {step} failed{named}: {type(e).__name__}: {text[:400]}")


def _example(example):
    import torch

    example = torch.as_tensor(example if example is not None else torch.zeros(1, 1, 28, 28), dtype=torch.float32)
    if example.ndim != 4 or len(example) == 0:
        raise ExecutorchExportError(f"ExecuTorch export needs an example batch (N, C, H, W); got {tuple(example.shape)}.")
    # the bound trap: pad (by repetition) to EXAMPLE_BATCH images whatever the caller gave
    reps = -(-EXAMPLE_BATCH // len(example))
    return example.repeat(reps, 1, 1, 1)[:EXAMPLE_BATCH].contiguous()


def _export(model, example):
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _lower_and_write(program, path: Path, metadata: dict[str, str], extra: dict) -> Path:
    XnnpackPartitioner, to_edge_transform_and_lower = _import()
    try:
        et = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as e:  # exir raises ExportError, RuntimeError, InternalError...
        raise _failed("lowering to XNNPACK", e) from None
    path = Path(path)
    missing = unregistered_operators(et.executorch_program)
    if missing:  # checked before loading: the runtime would fail with a bare error code and a page of log lines
        raise ExecutorchExportError(
            f"ExecuTorch cannot run the lowered model: operator {', '.join(missing)} is not delegated to XNNPACK and "
            "this ExecuTorch build has no kernel for it, so the .pte would fail to load (Missing operator). Replace "
            "that operation in the model, or deploy it with another runtime.")
    data = bytes(et.buffer)
    try:
        max_batch = program_max_batch(data)
    except Exception as e:  # converter output is untrusted: a program the runtime cannot load is refused here
        raise _failed("loading the lowered program", e) from None
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps({**metadata, **extra, "max_batch": max_batch,
                                   "example_batch": EXAMPLE_BATCH, "backend": "xnnpack"}, indent=1))
    with atomic_path(path) as tmp:  # the .pte last: a .pte without its sidecar never appears
        tmp.write_bytes(data)
    return path


def unregistered_operators(program) -> list[str]:
    """The operators ``program`` (an ``exir`` ExecuTorch program: what XNNPACK did not take) calls that this
    ExecuTorch build registers no kernel for, as ``aten::sort.values``; [] when every one has a kernel."""
    from executorch.extension.pybindings.portable_lib import _get_operator_names

    known = set(_get_operator_names())
    out = []
    for plan in program.execution_plan:
        for op in plan.operators:
            name = f"{op.name}.{op.overload}" if op.overload else op.name
            if name not in known and op.name not in known and name not in out:
                out.append(name)
    return out


def program_max_batch(data: bytes) -> int:
    """The batch bound a serialized program holds: the upper size of its first input's first dimension."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(data).load_method("forward")
    return int(method.metadata.input_tensor_meta(0).sizes()[0])


def export_fp32(model, path: Path, metadata: dict[str, str], example=None) -> Path:
    """FP32 ``.pte`` of the eval-mode ``model`` lowered to XNNPACK, with its sidecar; returns ``path``."""
    import torch

    _import()
    model = model.eval()
    try:
        with torch.no_grad():
            program = _export(model, _example(example))
    except ExecutorchExportError:
        raise
    except Exception as e:  # torch.export's many types
        raise _failed("torch.export", e) from None
    return _lower_and_write(program, path, metadata, {"precision": "fp32"})


def export_int8(model, path: Path, metadata: dict[str, str], calibration, example=None) -> Path:
    """INT8 ``.pte``: PT2E static quantization with ``XNNPACKQuantizer`` (symmetric, per-channel weights),
    calibrated on ``calibration`` (float32 (N, 1, 28, 28), preprocessed), lowered to XNNPACK; returns ``path``."""
    import torch

    _import()
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ExecutorchExportError(f"ExecuTorch INT8 needs executorch's XNNPACKQuantizer and torchao's PT2E "
                                    f"({e}): {INSTALL_HINT}.") from None
    calibration = torch.as_tensor(calibration, dtype=torch.float32)
    if calibration.ndim != 4 or len(calibration) == 0 or not torch.isfinite(calibration).all():
        raise ExecutorchExportError("ExecuTorch INT8 calibration needs a non-empty finite float32 batch "
                                    f"(N, C, H, W); got shape {tuple(calibration.shape)}.")
    example = _example(example if example is not None else calibration)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        with torch.no_grad():
            graph = _export(model.eval(), example).module()
            prepared = prepare_pt2e(graph, quantizer)
            for i in range(0, len(calibration), 256):
                prepared(calibration[i:i + 256])
            converted = convert_pt2e(prepared)
            program = _export(converted, example)
    except Exception as e:
        raise _failed("PT2E quantization", e) from None
    return _lower_and_write(program, path, metadata, {
        "precision": "int8",
        "quantizer": f"PT2E XNNPACKQuantizer symmetric per-channel, {len(calibration)} calibration images"})
