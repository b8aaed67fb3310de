"""Embedding API: classify digits with an exported ONNX model, no torch needed.

    from runtime import Classifier
    with Classifier("model-fp32.onnx") as clf:
        pred = clf.predict(images_uint8)   # (28, 28), (N, 28, 28), (N, 1, 28, 28), PIL image(s)
        pred.labels, pred.probabilities

Preprocessing (pixel scale, mean, std, layout) and labels come from the
model's ``metadata_props``; keyword arguments override them, and a model
without our metadata must get them explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError
from .metadata import ModelMetadata
from .onnxrt import OnnxrtRunner

CHUNK = 1024  # images per inference call


@dataclass(frozen=True)
class Prediction:
    labels: list[str]  # predicted class label per image
    indices: np.ndarray  # (N,) predicted class index
    probabilities: np.ndarray  # (N, C) softmax of the logits, float32
    logits: np.ndarray  # (N, C) raw model output

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Classifier:
    def __init__(self, model_path, provider: str = "cpu", threads: int = 0, *, mean=None, std=None,
                 classes=None, pixel_scale: float | None = None):
        self.path = Path(model_path)
        self.runner = OnnxrtRunner(self.path, provider=provider, threads=threads).activate()
        meta = ModelMetadata.from_props(self.runner.metadata_props())
        self.metadata = meta
        self.mean = np.asarray(mean if mean is not None else meta.mean or (), dtype=np.float32)
        self.std = np.asarray(std if std is not None else meta.std or (), dtype=np.float32)
        self.classes = tuple(str(c) for c in (classes if classes is not None else meta.classes or ()))
        self.pixel_scale = float(pixel_scale if pixel_scale is not None else meta.pixel_scale)
        missing = [n for n, v in (("mean", self.mean), ("std", self.std), ("classes", self.classes)) if len(v) == 0]
        if missing:
            self.close()
            raise RuntimeInputError(
                f"{self.path.name} has no preprocessing metadata for {', '.join(missing)}; pass them explicitly, "
                "e.g. Classifier(path, mean=[0.1307], std=[0.3081], classes=[str(i) for i in range(10)])."
            )
        if np.any(self.std <= 0):
            self.close()
            raise RuntimeInputError("std must be positive.")
        shape = meta.input_shape or tuple(self.runner.input_shape[1:])
        if not all(isinstance(d, int) for d in shape):
            shape = (1, 28, 28)
        self.image_shape = tuple(int(d) for d in shape)  # (C, H, W)
        self.input_name = meta.input_name or self.runner.input_names[0]

    # ------------------------------------------------------------------ input handling
    def _as_uint8_batch(self, images) -> np.ndarray:
        """Any accepted input form -> (N, C, H, W) float32 pixel values in 0..255."""
        c, h, w = self.image_shape
        if _is_pil(images):
            images = [images]
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise RuntimeInputError("empty batch: give at least one image.")
            if all(_is_pil(im) for im in images):
                from .preprocess import to_mnist_array

                images = np.stack([to_mnist_array(im) for im in images])
            else:
                images = np.stack([np.asarray(im) for im in images]) if all(
                    np.asarray(im).shape == np.asarray(images[0]).shape for im in images) else None
                if images is None:
                    raise RuntimeInputError("images in a list must all have the same shape.")
        arr = np.asarray(images)
        if arr.dtype == object or arr.dtype.kind not in "uif":
            raise RuntimeInputError(f"images must be uint8 (or real numbers in 0..255), got dtype {arr.dtype}.")
        if arr.size == 0:
            raise RuntimeInputError("empty batch: give at least one image.")
        if arr.shape == (h, w):
            arr = arr[None]
        if arr.ndim == 3 and arr.shape[1:] == (h, w) and c == 1:
            arr = arr[:, None]
        if arr.ndim != 4 or arr.shape[1:] != (c, h, w):
            raise RuntimeInputError(
                f"expected one {h}x{w} image or a batch shaped (N, {h}, {w}) or (N, {c}, {h}, {w}); got {arr.shape}.")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise RuntimeInputError("images contain NaN or infinite values.")
        if arr.min() < 0 or arr.max() > 255:
            raise RuntimeInputError(f"pixel values must be in 0..255 (got {arr.min():g}..{arr.max():g}); "
                                    "pass raw pixels, not normalized tensors.")
        return arr

    def preprocess(self, images) -> np.ndarray:
        """The exact tensor the model sees: (pixels * pixel_scale - mean) / std, float32 NCHW."""
        x = self._as_uint8_batch(images) * self.pixel_scale
        mean = self.mean.reshape(1, -1, 1, 1)
        std = self.std.reshape(1, -1, 1, 1)
        return ((x - mean) / std).astype(np.float32)

    def predict(self, images) -> Prediction:
        x = self.preprocess(images)
        outs = [next(iter(self.runner.infer({self.input_name: x[i : i + CHUNK]}).values()))
                for i in range(0, len(x), CHUNK)]
        logits = np.concatenate(outs).astype(np.float32)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise RuntimeInputError(f"the model returned {logits.shape}, which does not match "
                                    f"{len(self.classes)} classes.")
        idx = logits.argmax(axis=1)
        return Prediction([self.classes[i] for i in idx], idx, softmax(logits), logits)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.")
