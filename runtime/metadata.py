"""The ``metadata_props`` keys our exported ONNX files carry, and their parsing.

An app that has only the ``.onnx`` file learns from these how to preprocess
(pixel scale, mean, std, layout), what the input is called and which label
each output index means. Read through onnxruntime's ``get_modelmeta()`` so
the ``onnx`` package is not needed at run time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

MODEL_NAME = "model_name"
INPUT_NAME = "input_name"
INPUT_SHAPE = "input_shape"  # per image, JSON list, e.g. [1, 28, 28]
INPUT_LAYOUT = "input_layout"  # NCHW
INPUT_DTYPE = "input_dtype"  # float32
PIXEL_SCALE = "pixel_scale"  # multiply uint8 pixels by this first (1/255)
MEAN = "normalization_mean"  # JSON list, one per channel, applied after pixel_scale
STD = "normalization_std"
CLASSES = "classes"  # JSON list of label strings, index = output position
OUTPUT_NAME = "output_name"
OUTPUT_KIND = "output_kind"  # logits
PRECISION = "precision"  # fp32 | fp16 | int8
CHECKPOINT_SHA256 = "checkpoint_sha256"
PRODUCER = "producer"

REQUIRED = (INPUT_SHAPE, MEAN, STD, CLASSES)


@dataclass(frozen=True)
class ModelMetadata:
    """Preprocessing and labels of a model; ``None`` fields were not in the file."""

    model_name: str | None = None
    input_name: str | None = None
    input_shape: tuple[int, ...] | None = None  # per image, e.g. (1, 28, 28)
    layout: str = "NCHW"
    pixel_scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    precision: str | None = None
    checkpoint_sha256: str | None = None

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        def js(key):
            return json.loads(props[key]) if key in props else None

        shape, mean, std, classes = js(INPUT_SHAPE), js(MEAN), js(STD), js(CLASSES)
        return cls(
            model_name=props.get(MODEL_NAME),
            input_name=props.get(INPUT_NAME),
            input_shape=tuple(int(d) for d in shape) if shape else None,
            layout=props.get(INPUT_LAYOUT, "NCHW"),
            pixel_scale=float(js(PIXEL_SCALE)) if PIXEL_SCALE in props else 1 / 255,
            mean=tuple(float(m) for m in mean) if mean is not None else None,
            std=tuple(float(s) for s in std) if std is not None else None,
            classes=tuple(str(c) for c in classes) if classes is not None else None,
            precision=props.get(PRECISION),
            checkpoint_sha256=props.get(CHECKPOINT_SHA256),
        )

    def missing(self) -> list[str]:
        """Names of the preprocessing facts this metadata lacks."""
        return [n for n, v in (("input_shape", self.input_shape), ("mean", self.mean), ("std", self.std),
                               ("classes", self.classes)) if v is None]
