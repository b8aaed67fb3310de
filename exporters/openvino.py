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


def export_int8(source, path: Path, metadata: dict[str, str], calibration, example=None) -> Path:
    """INT8 IR by NNCF post-training quantization of ``source`` (FP32 ONNX path or torch module).

    ``calibration`` is a float32 array (N, 1, 28, 28), already preprocessed like the model's input; all N
    images calibrate (NNCF's ``subset_size`` = N), fed one at a time as NNCF expects (a batched item skews its
    per-tensor statistics and makes it warn). Returns ``path``.
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
    try:
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), **NNCF_OPTIONS)
    except Exception as e:  # nncf raises its own and OpenVINO's types
        raise _failed("INT8 quantization (NNCF)", e) from None
    return save(quantized, path, {**metadata, "precision": "int8",
                                  "quantizer": f"nncf {nncf.__version__} PTQ, fast_bias_correction=False, "
                                               f"{len(calibration)} calibration images"})
