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

from runtime import sidecar

from .atomic import atomic_path

EXAMPLE_BATCH = 256
MAX_BATCH = 1024  # Dim("batch", max=...) at export; the file's real bound is read back and recorded
INSTALL_HINT = "`pip install -e .[executorch]` (executorch==1.5.*)"


class ExecutorchExportError(Exception):
    """ExecuTorch could not export or lower the model (an operator XNNPACK or the portable kernels lack...)."""


def sidecar_path(pte: Path) -> Path:
    return sidecar.path(pte)


def read_sidecar(pte: Path) -> dict:
    """The sidecar of ``pte`` as a dict of strings (plus ``max_batch`` as an int); ValueError if unreadable."""
    data = sidecar.read(pte, "ExecuTorch")
    if not isinstance(data.get("max_batch"), int) or isinstance(data["max_batch"], bool):
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


def layer_precisions(pte) -> list[str]:
    """The weighted layers (convolutions and fully connected) of a ``.pte``'s XNNPACK delegate, in graph order, each
    as the precision its filter is stored in (``"fp32"``, ``"int8"``...), read from the file itself: the delegate's
    XNNPACK flatbuffer, decoded with ExecuTorch's own schema and ``flatc``. The XNNPACK graph keeps no layer names,
    so the i-th entry is the model's i-th weighted layer in graph order."""
    import re as _re
    import shutil
    import tempfile

    import executorch.backends.xnnpack.serialization as schema
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir._serialize._program import _extract_delegate_payload

    data = Path(pte).read_bytes() if not isinstance(pte, (bytes, bytearray)) else bytes(pte)
    out, i = [], 0
    while (payload := _extract_delegate_payload(data, "xnnpack", i)) is not None:
        i += 1
        head = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
        with tempfile.TemporaryDirectory(prefix="xnn-") as tmp:
            shutil.copy(Path(schema.__path__[0]) / "schema.fbs", Path(tmp) / "schema.fbs")
            (Path(tmp) / "graph.bin").write_bytes(payload[head.flatbuffer_offset:head.flatbuffer_offset
                                                          + head.flatbuffer_size])
            _flatc_decompile(tmp, str(Path(tmp) / "schema.fbs"), str(Path(tmp) / "graph.bin"), ["--raw-binary"])
            text = (Path(tmp) / "graph.json").read_text()
        graph = json.loads(_re.sub(r"(?<=[:\[,\s])-?(?:nan|inf)\b", "null", text))  # flatc writes bare nan/inf
        types = {}
        for value in graph["xvalues"]:
            v = value["xvalue_union"]
            t = v.get("tensor_value", v)
            types[t["id_out"]] = t["datatype"].removeprefix("xnn_datatype_")
        for node in graph["xnodes"]:
            kind = node["xnode_union_type"]
            if kind in ("XNNConv2d", "XNNDepthwiseConv2d", "XNNConvTranspose2d", "XNNFullyConnected"):
                dtype = types[node["xnode_union"]["filter_id"]]
                out.append("fp32" if dtype == "fp32" else "int8" if "int8" in dtype else dtype)
    return out


def export_int8(model, path: Path, metadata: dict[str, str], calibration, example=None,
                fp32_modules: tuple[str, ...] = ()) -> Path:
    """INT8 ``.pte``: PT2E static quantization with ``XNNPACKQuantizer`` (symmetric, per-channel weights),
    calibrated on ``calibration`` (float32 (N, 1, 28, 28), preprocessed), lowered to XNNPACK; returns ``path``.

    ``fp32_modules``: module paths (``"features.3"``) to keep in FP32 (the ``--int8-budget`` fallback), left
    unannotated through the quantizer's filter function (its ``set_module_name(name, None)`` is not supported in
    1.5: it asserts a config); recorded in the sidecar as ``int8_fp32_modules``."""
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
    fp32_modules = tuple(fp32_modules)
    if fp32_modules:
        from torchao.quantization.pt2e.quantizer import get_module_name_filter

        named = dict(model.named_modules())
        unknown = [m for m in fp32_modules if m not in named]
        if unknown:
            raise ExecutorchExportError(f"ExecuTorch INT8: the model has no module {', '.join(unknown)} to keep in FP32.")
        skip = [get_module_name_filter(m) for m in fp32_modules]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in skip))
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
        "quantizer": f"PT2E XNNPACKQuantizer symmetric per-channel, {len(calibration)} calibration images"
                     + (f", FP32: {', '.join(fp32_modules)}" if fp32_modules else ""),
        **({"int8_fp32_modules": list(fp32_modules)} if fp32_modules else {})})
