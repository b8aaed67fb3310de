"""The ``metadata_props`` keys our exported ONNX files carry, and their parsing.

An app that has only the ``.onnx`` file learns from these how to preprocess
(pixel scale, mean, std, layout), what the input is called and which label
each output index means. Read through onnxruntime's ``get_modelmeta()`` so
the ``onnx`` package is not needed at run time.
"""
from __future__ import annotations

import json
import math
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
OUTPUT_KIND = "output_kind"  # one of OUTPUT_KINDS; absent = logits
#: what the scores output holds -> how it becomes probabilities (runtime.classifier.to_probabilities, and the JS twin
#: scoresToProbabilities in preprocess.mjs): softmax only for logits, or a model that already ends in softmax gets
#: it twice (0.96 shown as 0.22)
OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")
PRECISION = "precision"  # fp32 | fp16 | int8
CHECKPOINT_SHA256 = "checkpoint_sha256"
PRODUCER = "producer"

REQUIRED = (INPUT_SHAPE, MEAN, STD, CLASSES)


def number_list(key: str, value) -> tuple[float, ...]:
    """``mean`` and ``std`` as the file must hold them: a non-empty JSON list of finite numbers (not a string, a bare
    number, booleans or NaN). The JS runtimes' ``checkParams`` (preprocess.mjs) applies the very same rule."""
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{key} must be a non-empty list of finite numbers, got {json.dumps(value)[:80]}")
    return tuple(float(v) for v in value)


def label_list(value) -> tuple[str, ...]:
    """``classes``: a non-empty JSON list of labels (strings or numbers), one per output; a bare string is not one
    (it would split into characters)."""
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{CLASSES} must be a non-empty list of labels, got {json.dumps(value)[:80]}")
    return tuple(str(c) for c in value)


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
    output_kind: str = "logits"

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        def js(key):
            return json.loads(props[key]) if key in props else None

        shape, mean, std, classes = js(INPUT_SHAPE), js(MEAN), js(STD), js(CLASSES)
        kind = props.get(OUTPUT_KIND, "logits")
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"{OUTPUT_KIND} is {kind!r}, not one of {', '.join(OUTPUT_KINDS)}")
        return cls(
            model_name=props.get(MODEL_NAME),
            input_name=props.get(INPUT_NAME),
            input_shape=tuple(int(d) for d in shape) if shape else None,
            layout=props.get(INPUT_LAYOUT, "NCHW"),
            pixel_scale=float(js(PIXEL_SCALE)) if PIXEL_SCALE in props else 1 / 255,
            mean=number_list(MEAN, mean) if mean is not None else None,
            std=number_list(STD, std) if std is not None else None,
            classes=label_list(classes) if classes is not None else None,
            precision=props.get(PRECISION),
            checkpoint_sha256=props.get(CHECKPOINT_SHA256),
            output_kind=kind,
        )

    def missing(self) -> list[str]:
        """Names of the preprocessing facts this metadata lacks."""
        return [n for n, v in (("input_shape", self.input_shape), ("mean", self.mean), ("std", self.std),
                               ("classes", self.classes)) if v is None]
