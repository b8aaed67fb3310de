"""PyTorch or FP32 ONNX -> OpenVINO IR (``.xml`` + ``.bin``): FP32, and INT8 through NNCF post-training quantization.

Two traps the probe of issue 24 found, handled here:

- ``openvino.save_model`` compresses weights to FP16 unless told otherwise, so an "FP32" IR would not be FP32:
  every save passes ``compress_to_fp16=False``.
- NNCF's default ``fast_bias_correction=True`` cost 20 flipped images on the default model (99.59 %);
  ``fast_bias_correction=False`` gave 99.68 % with 1 flip, so INT8 uses it.

(BF16 is not a file: it is a runtime hint, ``INFERENCE_PRECISION_HINT=bf16``, set by
:class:`runtime.openvino.OpenvinoRunner` on CPUs that have it.)

The preprocessing contract (:func:`exporters.onnx.build_metadata`) goes into the IR's own ``rt_info`` under
:data:`runtime.openvino.RT_SECTION`, so the ``.xml`` alone tells an app how to preprocess; read it back with
:func:`runtime.openvino.read_metadata`. Both files are written atomically; the ``.bin`` is renamed into place
before the ``.xml`` that names it. Conversion failures raise :class:`OpenvinoExportError`, one paragraph naming
the runtime and, where OpenVINO says it, the operation it could not convert.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from runtime.openvino import INPUT_NAME, OUTPUT_NAME, RT_SECTION, install_hint

#: NNCF settings of the INT8 file (see the module docstring for why fast_bias_correction is off)
NNCF_OPTIONS = {"fast_bias_correction": False}


class OpenvinoExportError(Exception):
    """OpenVINO or NNCF could not convert the model (an operation it lacks, a missing package...)."""


def _ov():
    try:
        import openvino
    except ImportError:
        raise OpenvinoExportError(f"OpenVINO is not installed: {install_hint()}.") from None
    return openvino


def _failed(step: str, e: Exception) -> OpenvinoExportError:
    text = " ".join(str(e).split())
    op = re.search(r"(?:operation|op|Op)\w*[:\s]+['\"]?([A-Za-z_][\w.:]*)", text)
    named = f" (operation {op.group(1)})" if op else ""
    return OpenvinoExportError(f"OpenVINO {step} failed{named}: {type(e).__name__}: {text[:400]}")


def convert(source, example=None):
    """An ``openvino.Model`` with one input ``input`` (N, 1, 28, 28), dynamic batch, and one output ``logits``.

    ``source`` is an FP32 ONNX file (its dynamic batch axis is kept) or a torch ``nn.Module`` in eval mode
    (converted through torch.export with ``example``, default zeros(2, 1, 28, 28), and batch declared dynamic).
    """
    ov = _ov()
    try:
        if isinstance(source, (str, os.PathLike)):
            model = ov.convert_model(str(source))
        else:
            import torch

            example = example if example is not None else torch.zeros(2, 1, 28, 28)
            example = torch.as_tensor(example)
            model = ov.convert_model(source.eval(), example_input=example,
                                     input=[ov.PartialShape([-1, *example.shape[1:]])])
    except Exception as e:  # OpenVINO's OpConversionFailure/GeneralFailure, torch.export's many types
        raise _failed("conversion", e) from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise OpenvinoExportError(f"OpenVINO conversion gave {len(model.inputs)} inputs and {len(model.outputs)} "
                                  "outputs; the pipeline's models have one of each.")
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def save(model, path: Path, metadata: dict[str, str]) -> Path:
    """Write ``model`` to ``path`` (``.xml``, with its ``.bin`` beside) with ``metadata`` in its rt_info,
    weights as they are (never compressed to FP16); atomically. Returns ``path``."""
    from .atomic import scratch_path

    ov = _ov()
    path = Path(path)
    if path.suffix != ".xml":
        raise OpenvinoExportError(f"OpenVINO IR files end in .xml; got {path.name}.")
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_SECTION, str(key)])
    with scratch_path(path) as tmp:
        xml, binary = tmp.with_suffix(".xml"), tmp.with_suffix(".bin")
        try:
            ov.save_model(model, str(xml), compress_to_fp16=False)
            os.replace(binary, path.with_suffix(".bin"))
            os.replace(xml, path)
        finally:
            for leftover in (xml, binary):
                leftover.unlink(missing_ok=True)
    return path


def export_fp32(source, path: Path, metadata: dict[str, str], example=None) -> Path:
    """FP32 IR of ``source`` (FP32 ONNX path or torch module) at ``path``; returns ``path``."""
    return save(convert(source, example), path, {**metadata, "precision": "fp32"})


def layer_precisions(model) -> dict[str, str]:
    """The weighted layers (Convolution, GroupConvolution, MatMul) of an IR (an ``openvino.Model`` or a path) and
    the precision their weights are stored in, read from the graph itself: ``"int8"`` when the weight comes from an
    integer constant or a FakeQuantize (NNCF's quantized weights: Constant(i8) -> Convert -> Subtract -> Multiply),
    else ``"fp32"``. Keyed by the layer's name without OpenVINO's ``/WithoutBiases`` suffix, which for an IR
    converted from ONNX is the ONNX node's name."""
    ov = _ov()
    if not hasattr(model, "get_ordered_ops"):
        model = ov.Core().read_model(str(model))
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        node, kind = op.input(1).get_source_output().get_node(), "fp32"
        for _ in range(8):  # a weight reaches its layer through a few dequantizing/reshaping nodes
            t = node.get_type_name()
            if t in ("FakeQuantize", "FakeConvert"):
                kind = "int8"
                break
            if t == "Constant":
                kind = "fp32" if node.get_element_type().is_real() else "int8"
                break
            if node.get_input_size() == 0:
                break
            node = node.input(0).get_source_output().get_node()
        out[op.get_friendly_name().removesuffix("/WithoutBiases")] = kind
    return out


def export_int8(source, path: Path, metadata: dict[str, str], calibration, example=None,
                fp32_nodes: tuple[str, ...] = ()) -> Path:
    """INT8 IR by NNCF post-training quantization of ``source`` (FP32 ONNX path or torch module).

    ``calibration`` is a float32 array (N, 1, 28, 28), already preprocessed like the model's input; all N
    images calibrate (NNCF's ``subset_size`` = N), fed one at a time as NNCF expects (a batched item skews its
    per-tensor statistics and makes it warn). ``fp32_nodes``: ONNX node names of layers to keep in FP32 (the
    ``--int8-budget`` fallback), given to NNCF as an ``IgnoredScope`` (the IR's layers keep the ONNX names); the
    written graph is then checked to hold those layers' weights in FP32 and every other weighted layer's in INT8,
    and they are recorded in the rt_info as ``int8_fp32_nodes``. Returns ``path``.
    """
    import numpy as np

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0 or not np.isfinite(calibration).all():
        raise OpenvinoExportError("OpenVINO INT8 calibration needs a non-empty finite float32 batch (N, C, H, W); "
                                  f"got shape {calibration.shape}.")
    try:
        import nncf
    except ImportError:
        raise OpenvinoExportError(f"NNCF is not installed: {install_hint()}.") from None
    model = convert(source, example)
    batches = [calibration[i:i + 1] for i in range(len(calibration))]
    fp32_nodes = tuple(fp32_nodes)
    extra = {"ignored_scope": nncf.IgnoredScope(patterns=[f"{re.escape(n)}(/.*)?" for n in fp32_nodes])} \
        if fp32_nodes else {}
    try:
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), **NNCF_OPTIONS, **extra)
    except Exception as e:  # nncf raises its own and OpenVINO's types
        raise _failed("INT8 quantization (NNCF)", e) from None
    kept = {}
    if fp32_nodes:  # NNCF's output is untrusted: the layers asked for must be FP32 in the graph, the others INT8
        got = layer_precisions(quantized)
        wrong = [n for n in fp32_nodes if got.get(n) != "fp32"] + [n for n, k in got.items()
                                                                   if k != "int8" and n not in fp32_nodes]
        if wrong:
            raise OpenvinoExportError(f"OpenVINO INT8 (NNCF) with layers {', '.join(fp32_nodes)} kept in FP32 gave a "
                                      f"graph whose layers {', '.join(wrong)} are not in the precision asked for "
                                      f"(found {got}); not written.")
        kept = {"int8_fp32_nodes": json.dumps(list(fp32_nodes))}
    return save(quantized, path, {**metadata, "precision": "int8", **kept,
                                  "quantizer": f"nncf {nncf.__version__} PTQ, fast_bias_correction=False, "
                                               f"{len(calibration)} calibration images"
                                               + (f", FP32: {', '.join(fp32_nodes)}" if fp32_nodes else "")})
