"""PyTorch -> ONNX with the model's preprocessing written into the file itself.

The exported graph has one input ``input`` (N, 1, 28, 28) float32, NCHW, with
a dynamic batch axis, and one output ``logits`` (N, 10). Weights are embedded
(no external-data file), ``onnx.checker`` must pass, and ``metadata_props``
carry what another app needs to preprocess correctly from the file alone
(see :mod:`runtime.metadata` for the keys).

The ONNX -> ONNX transforms of such a file (FP16, INT8, per-layer SQNR) are :mod:`exporters.precision`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(Exception):
    """torch.onnx could not export the model (unsupported op, data-dependent shape...)."""


def build_metadata(*, model_name: str, mean, std, classes, checkpoint_sha256: str, precision: str,
                   input_shape=(1, 28, 28), extra: dict | None = None) -> dict[str, str]:
    """The ``metadata_props`` every exported variant carries (all values are strings; lists as JSON)."""
    from runtime import metadata as md

    props = {
        md.MODEL_NAME: model_name,
        md.INPUT_NAME: INPUT_NAME,
        md.INPUT_SHAPE: json.dumps(list(input_shape)),
        md.INPUT_LAYOUT: "NCHW",
        md.INPUT_DTYPE: "float32",
        md.PIXEL_SCALE: json.dumps(1 / 255, allow_nan=False),
        md.MEAN: json.dumps([float(m) for m in mean], allow_nan=False),
        md.STD: json.dumps([float(s) for s in std], allow_nan=False),  # strict: a NaN here would break every reader
        md.CLASSES: json.dumps(list(classes)),
        md.OUTPUT_NAME: OUTPUT_NAME,
        md.OUTPUT_KIND: "logits",
        md.PRECISION: precision,
        md.CHECKPOINT_SHA256: checkpoint_sha256,
        md.PRODUCER: "edge-export-pipeline",
    }
    props.update({k: str(v) for k, v in (extra or {}).items()})
    return props


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, without loading external data."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def set_metadata(model_proto, props: dict[str, str]) -> None:
    """Add or overwrite ``metadata_props`` entries, keeping any others already there."""
    existing = {p.key: p for p in model_proto.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def torch_to_onnx_proto(model, opset: int, example=None):
    """Export with the dynamo exporter (torch.export), batch axis dynamic; return the ModelProto."""
    import torch

    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model = model.eval()  # exported (pt2e) graphs are switched with move_exported_model_to_eval instead
    example = example if example is not None else torch.zeros(2, 1, 28, 28)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, external_data=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
    except Exception as e:  # torch.export raises many types; all mean "not exportable"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {first}") from e
    return strip_debug_info(program.model_proto)


def strip_debug_info(model_proto):
    """Drop the per-node stack traces and doc strings the dynamo exporter records.

    They are useful while debugging an export but grow an INT8 file by ~15 %
    and carry local source paths into a file that gets shipped.
    """
    for node in model_proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for vi in list(model_proto.graph.value_info) + list(model_proto.graph.input) + list(model_proto.graph.output):
        del vi.metadata_props[:]
    for init in model_proto.graph.initializer:
        del init.metadata_props[:]
    return model_proto


def save_checked(model_proto, path: Path) -> Path:
    """Check the model (full shape inference) and write it atomically with weights embedded.

    A write the file system refuses raises the plain ``OSError``; the pipeline words it for its users."""
    import onnx

    from .atomic import atomic_path

    onnx.checker.check_model(model_proto, full_check=True)
    with atomic_path(Path(path)) as tmp:
        onnx.save_model(model_proto, str(tmp), save_as_external_data=False)
    return Path(path)


def export_fp32(model, path: Path, metadata: dict[str, str], opset: int = 18) -> Path:
    """Export ``model`` to an FP32 ONNX file at ``path``; return the path."""
    proto = torch_to_onnx_proto(model, opset)
    set_metadata(proto, metadata)
    return save_checked(proto, path)
