"""Embedding API: classify digits with an exported ONNX model; needs numpy and onnxruntime, never torch.

    from runtime import Classifier
    with Classifier("model-fp32.onnx") as clf:
        pred = clf.predict(images)        # see below for the accepted forms
        pred.labels, pred.indices, pred.probabilities, pred.confidence

Preprocessing (pixel scale, mean, std, input shape) and the labels come from
the model's ``metadata_props`` (see :mod:`runtime.metadata`). Keyword
arguments override them; a model without our metadata must get ``mean``,
``std`` and ``classes`` explicitly, or the constructor raises
:class:`RuntimeInputError` naming what is missing.

``predict`` accepts raw pixels, white digit on black as in MNIST:

* one ``(28, 28)`` image, a batch ``(N, 28, 28)`` or ``(N, 1, 28, 28)``;
* a Pillow image or a list of them (any size or mode: converted
  MNIST-style by :func:`runtime.preprocess.to_mnist_array`);
* a list of arrays (each ``(28, 28)`` or ``(1, 28, 28)``), PIL images allowed among them.

Arrays should be ``uint8``. Other integer arrays and float arrays are
accepted when every value is finite and within 0..255: floats are pixel
intensities on the 0..255 scale, *not* 0..1 and not already normalized.
NaN/inf, values outside 0..255, another shape, bool/complex/object/string
dtypes and an empty batch raise :class:`RuntimeInputError` saying what was
expected. The model then sees ``(pixels * pixel_scale - mean) / std`` as
float32 NCHW, run in chunks of 1024 images (of the graph's batch size when
it is fixed, e.g. 1; N must then be a multiple of it).

The model must be an image classifier: one float input of rank 4 (NCHW) and
one output of shape (N, classes), or several outputs with ``output_name``
metadata naming the scores. Anything else (several or no inputs, integer or
string inputs, a rank-2 input, a rank-1 output) raises
:class:`RuntimeInputError` in the constructor, and a failure of onnxruntime
while running one raises it in ``predict``: never a raw onnxruntime error.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError
from .metadata import OUTPUT_KINDS, OUTPUT_NAME, ModelMetadata
from .onnxrt import OnnxrtRunner

CHUNK = 1024  # images per inference call
PROBABILITY_TOL = 1e-2  # a row of probabilities must sum to 1 within this (FP16 softmax rounds), each in 0..1
DEFAULT_IMAGE_SHAPE = (1, 28, 28)  # used for dynamic dims of a model without metadata
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class Prediction:
    """Result of :meth:`Classifier.predict` for N images and C classes."""

    labels: list[str]  # predicted label per image
    indices: np.ndarray  # (N,) int64, predicted class index
    probabilities: np.ndarray  # (N, C) float32: softmax of logits, exp of log-probabilities, or as output
    logits: np.ndarray  # (N, C) float32, raw model output (whatever its output_kind)

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float32: the probability of the predicted class."""
        return self.probabilities.max(axis=1)

    def __len__(self) -> int:
        return len(self.labels)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for any finite logits (max subtracted, computed in float64)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def to_probabilities(scores: np.ndarray, kind: str, model: str) -> np.ndarray:
    """(N, C) scores -> probabilities by the model's ``output_kind``: softmax only for logits, exp for
    log-probabilities, as they are for probabilities. Scores that are not what the kind says (a row that does not
    sum to 1) raise :class:`RuntimeInputError` instead of a silently wrong confidence."""
    if kind == "logits":
        return softmax(scores)
    if kind not in OUTPUT_KINDS:
        raise RuntimeInputError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}.")
    p = np.exp(scores.astype(np.float64)) if kind == "log_probabilities" else scores.astype(np.float64)
    sums = p.sum(axis=1)
    bad = (p.min(axis=1) < -PROBABILITY_TOL) | (p.max(axis=1) > 1 + PROBABILITY_TOL) | (np.abs(sums - 1) > PROBABILITY_TOL)
    if bad.any():
        i = int(np.argmax(bad))
        raise RuntimeInputError(
            f"{model} says its output holds {kind.replace('_', '-')}, but for {int(bad.sum())} of {len(p)} images they "
            f"are not (image {i}: they sum to {sums[i]:.4g}{' after exp' if kind != 'probabilities' else ''}): its "
            "output_kind metadata is wrong. Fix the metadata (or pass output_kind= to Classifier).")
    return p.astype(np.float32)


def _floats(name: str, value, model: str) -> tuple[float, ...]:
    vals = np.atleast_1d(np.asarray(value, dtype=object)).ravel()
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise RuntimeInputError(f"{name} for {model} must be a number or a list of numbers, got {value!r}.") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise RuntimeInputError(f"{name} for {model} must be finite numbers, got {value!r}.")
    return out


class Classifier:
    """An exported digit classifier behind onnxruntime; a context manager (``with`` closes the session).

    ``provider`` is "cpu" or "cuda"; ``threads`` sets onnxruntime's intra-op
    threads (0 = its default). ``mean``, ``std``, ``classes``,
    ``pixel_scale`` and ``output_kind`` (logits, probabilities or
    log_probabilities: how scores become probabilities) override the model's
    metadata. ``time_limit`` (seconds per inference call, None = none) stops
    a model that runs longer (:class:`runtime.watchdog.RunTimeout`); Ctrl-C
    always stops a run in progress.

    Attributes: ``classes`` (tuple of labels, index = output position),
    ``metadata`` (the :class:`ModelMetadata` in effect, overrides applied),
    ``file_metadata`` (as read from the file), ``image_shape`` (C, H, W),
    ``runner`` (the :class:`OnnxrtRunner`).
    """

    def __init__(self, model_path, provider: str = "cpu", threads: int = 0, *, mean=None, std=None,
                 classes=None, pixel_scale: float | None = None, output_kind: str | None = None,
                 time_limit: float | None = None) -> None:
        self.path = Path(model_path)
        self.runner = OnnxrtRunner(self.path, provider=provider, threads=threads, time_limit=time_limit)
        self.runner.activate()
        try:
            self._configure(mean, std, classes, pixel_scale, output_kind)
        except BaseException:
            self.runner.deactivate()
            raise

    def _check_graph(self, props: dict) -> None:
        """Refuse, at construction, a model that is not a single-input float image classifier, naming what
        is wrong, so that no raw onnxruntime error surfaces later in ``predict``. Sets ``fixed_batch`` (the
        graph's static batch size, or None) and ``output_name``."""
        name = self.path.name
        inputs, outputs = self.runner.session.get_inputs(), self.runner.session.get_outputs()
        if len(inputs) != 1:
            listed = ", ".join(f"'{i.name}' {i.type} {i.shape}" for i in inputs) or "none"
            raise RuntimeInputError(f"{name} has {len(inputs)} inputs ({listed}); Classifier needs an image "
                                    "classifier with exactly one input.")
        inp = inputs[0]
        if inp.type not in _ORT_FLOAT:
            raise RuntimeInputError(f"{name} takes {inp.type} input; Classifier feeds float tensors "
                                    "(normalized NCHW images).")
        if len(inp.shape) != 4:
            raise RuntimeInputError(f"{name} takes a rank-{len(inp.shape)} input {list(inp.shape)}; expected NCHW "
                                    "images.")
        names = [o.name for o in outputs]
        if props.get(OUTPUT_NAME) in names:
            self.output_name = props[OUTPUT_NAME]
        elif len(outputs) == 1:
            self.output_name = names[0]
        else:
            raise RuntimeInputError(f"{name} has {len(outputs)} outputs ({', '.join(names)}) and no '{OUTPUT_NAME}' "
                                    "metadata naming the one with the class scores.")
        out_shape = next(o.shape for o in outputs if o.name == self.output_name)
        if out_shape is not None and len(out_shape) != 2:
            raise RuntimeInputError(f"{name} outputs '{self.output_name}' of shape {list(out_shape)}; a classifier "
                                    "outputs (N, classes) scores.")
        batch = inp.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def _configure(self, mean, std, classes, pixel_scale, output_kind) -> None:
        name = self.path.name
        props = self.runner.metadata_props()
        self._check_graph(props)
        try:
            file_meta = ModelMetadata.from_props(props)
        except (ValueError, TypeError) as e:
            raise RuntimeInputError(f"{name} has malformed preprocessing metadata ({e}).") from None
        self.file_metadata = file_meta

        mean = file_meta.mean if mean is None else _floats("mean", mean, name)
        std = file_meta.std if std is None else _floats("std", std, name)
        if classes is not None:
            if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
                raise RuntimeInputError(f"classes must be a list of labels, got {classes!r}.")
            classes = tuple(str(c) for c in classes)
            if not classes:
                raise RuntimeInputError("classes must not be empty.")
        else:
            classes = file_meta.classes
        missing = [n for n, v in (("mean", mean), ("std", std), ("classes", classes)) if v is None]
        if missing:
            raise RuntimeInputError(
                f"{name} has no preprocessing metadata (missing: {', '.join(missing)}); pass "
                f"{', '.join(m + '=...' for m in missing)} to Classifier, "
                "e.g. mean=[0.1307], std=[0.3081], classes=[str(i) for i in range(10)].")
        scale = float(file_meta.pixel_scale)
        if pixel_scale is not None:
            given = _floats("pixel_scale", pixel_scale, name)
            if len(given) != 1:
                raise RuntimeInputError(f"pixel_scale must be one number, got {pixel_scale!r}.")
            scale = given[0]
        if not (math.isfinite(scale) and scale > 0):
            raise RuntimeInputError(f"pixel_scale must be a positive number, got {scale!r}.")
        if any(s <= 0 for s in std):
            raise RuntimeInputError(f"std must be positive, got {list(std)}.")
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise RuntimeInputError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}, got {output_kind!r}.")
        self.output_kind = output_kind or file_meta.output_kind

        # Per-image input shape: metadata, else the graph's static dims.
        inp = self.runner.session.get_inputs()[0]
        graph = list(inp.shape)
        graph_dims = tuple(d if isinstance(d, int) and d > 0 else None for d in graph[1:])
        if file_meta.input_shape is not None:
            shape = tuple(file_meta.input_shape)
            if len(shape) != 3 or any(g is not None and g != s for g, s in zip(graph_dims, shape)):
                raise RuntimeInputError(f"{name}: metadata input_shape {list(shape)} does not match the graph's "
                                        f"input {graph}.")
        else:
            shape = tuple(g if g is not None else d for g, d in zip(graph_dims, DEFAULT_IMAGE_SHAPE))
        self.image_shape = tuple(int(d) for d in shape)  # (C, H, W)
        c = self.image_shape[0]
        for label, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, c):
                raise RuntimeInputError(f"{label} has {len(v)} values but the model takes {c} channel(s).")

        self.input_name = inp.name
        self.input_dtype = _ORT_FLOAT[inp.type]
        out_shape = next(o.shape for o in self.runner.session.get_outputs() if o.name == self.output_name)
        if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(classes):
            raise RuntimeInputError(f"{name} outputs {out_shape[1]} scores but {len(classes)} classes were given.")

        self.classes = classes
        self.pixel_scale = scale
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        self.metadata = dataclasses.replace(file_meta, input_shape=self.image_shape, input_name=self.input_name,
                                            pixel_scale=scale, mean=tuple(mean), std=tuple(std), classes=classes,
                                            output_kind=self.output_kind)

    # ------------------------------------------------------------------ input handling
    def _item(self, item) -> np.ndarray:
        if _is_pil(item):
            from .preprocess import to_mnist_array

            if self.image_shape != DEFAULT_IMAGE_SHAPE:
                raise RuntimeInputError(f"PIL images are converted to 28x28 grayscale, but this model takes "
                                        f"{self.image_shape}; pass arrays instead.")
            item = to_mnist_array(item)
        arr = np.asarray(item)
        c, h, w = self.image_shape
        return arr[None] if c == 1 and arr.shape == (h, w) else arr  # (28, 28) and (1, 28, 28) mix

    def _pixels(self, images) -> np.ndarray:
        """Any accepted input form -> validated (N, C, H, W) array of pixel values in 0..255 (dtype kept)."""
        c, h, w = self.image_shape
        if isinstance(images, (str, bytes, Path)):
            raise RuntimeInputError("predict takes pixels, not file names: use runtime.preprocess.load_image(path).")
        if _is_pil(images):
            images = [images]
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise RuntimeInputError("empty batch: give at least one image.")
            items = [self._item(im) for im in images]
            shapes = sorted({a.shape for a in items})
            if len(shapes) > 1:
                raise RuntimeInputError(f"images in a list must all have the same shape; got {shapes}.")
            arr = np.stack(items)
        else:
            arr = np.asarray(images)
        if arr.dtype.kind not in "uif":
            raise RuntimeInputError(f"images must be uint8 pixels (or real numbers in 0..255); got dtype {arr.dtype}.")
        if arr.shape == (h, w) and c == 1:
            arr = arr[None]
        if arr.ndim == 3 and arr.shape[1:] == (h, w) and c == 1:
            arr = arr[:, None]
        if arr.ndim >= 1 and arr.shape[0] == 0:
            raise RuntimeInputError("empty batch: give at least one image.")
        if arr.ndim != 4 or arr.shape[1:] != (c, h, w):
            hint = ""
            if arr.ndim >= 3 and 3 in (arr.shape[-1], arr.shape[-3]) and c == 1:
                hint = " Colour images: pass PIL images (converted MNIST-style) or convert to grayscale first."
            elif arr.ndim >= 3 and arr.shape[-1] == c and arr.shape[-3:-1] == (h, w):
                hint = " That looks channels-last (NHWC); the model takes channels-first."
            forms = f"one {h}x{w} image or a batch shaped (N, {h}, {w}) or (N, {c}, {h}, {w})" if c == 1 \
                else f"one ({c}, {h}, {w}) image or a batch (N, {c}, {h}, {w})"
            raise RuntimeInputError(f"expected {forms}; got shape {arr.shape}.{hint}")
        if arr.shape == (c, h, w):
            arr = arr[None]
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise RuntimeInputError("images contain NaN or infinite values.")
            lo, hi = arr.min(), arr.max()
            if lo < 0 or hi > 255:
                raise RuntimeInputError(f"pixel values must be in 0..255 (got {lo:g}..{hi:g}); "
                                        "pass raw pixels, not normalized tensors.")
            if arr.dtype.kind == "f" and 0 < hi <= 1:
                warnings.warn("float images with values in 0..1: Classifier expects pixels on the 0..255 scale "
                              "(multiply by 255), so these look almost black.", stacklevel=3)
        return arr

    def preprocess(self, images) -> np.ndarray:
        """The exact tensor the model sees: ``(pixels * pixel_scale - mean) / std``, NCHW (float32 unless the
        model takes another float type)."""
        return self._normalize(self._pixels(images))

    def _normalize(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * np.float32(self.pixel_scale)
        return ((x - self.mean) / self.std).astype(self.input_dtype, copy=False)

    def predict(self, images) -> Prediction:
        """Classify one image or a batch (forms in the module docstring)."""
        if not self.runner.is_active:
            raise RuntimeError(f"Classifier for {self.path.name} is closed.")
        pixels = self._pixels(images)
        n = len(pixels)
        step = self.fixed_batch or CHUNK
        if self.fixed_batch and n % step:
            raise RuntimeInputError(f"{self.path.name} takes exactly {step} images per call (its batch size is "
                                    f"fixed in the graph); got {n}: give a multiple of {step}.")
        chunks = []
        for i in range(0, n, step):
            x = self._normalize(pixels[i : i + step])
            out = np.asarray(self.runner.infer({self.input_name: x})[self.output_name])
            if out.ndim != 2 or out.shape[0] != len(x):
                raise RuntimeInputError(f"{self.path.name} returned shape {list(out.shape)} for {len(x)} images; "
                                        "a classifier returns (N, classes) scores.")
            chunks.append(out.astype(np.float32, copy=False))
        logits = np.concatenate(chunks)
        if logits.shape[1] != len(self.classes):
            raise RuntimeInputError(f"{self.path.name} returned {logits.shape[1]} scores per image but there are "
                                    f"{len(self.classes)} classes.")
        broken = ~np.isfinite(logits).all(axis=1)
        if broken.any():  # the input was checked finite above, so the model is at fault: never a silent label
            raise RuntimeInputError(
                f"{self.path.name} returned NaN or infinite scores for {int(broken.sum())} of {n} images, so no "
                "label can be given: the model file is broken (its input was finite). Re-export it, or use another "
                "model.")
        idx = logits.argmax(axis=1).astype(np.int64)
        probabilities = to_probabilities(logits, self.output_kind, self.path.name)
        return Prediction([self.classes[i] for i in idx], idx, probabilities, logits)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the onnxruntime session (idempotent)."""
        self.runner.deactivate()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({str(self.path)!r}, provider={self.runner.provider!r}, classes={len(self.classes)})"


def _is_pil(obj) -> bool:
    """True for a Pillow image, without importing Pillow."""
    return any(t.__module__.startswith("PIL.") and t.__name__ == "Image" for t in type(obj).__mro__)
