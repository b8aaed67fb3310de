"""Which layers cost INT8 accuracy, measured on the task metric, and the fewest to keep in FP32 for a budget.

Per-layer SQNR (:func:`exporters.precision.per_layer_sqnr`) is a proxy, as are the KL/MSE/cosine scores other
tools rank layers by: a layer can lose many dB and no prediction, or a few dB and many. Here every quantizable
layer (the Conv, Gemm and MatMul nodes onnxruntime's quantizer would quantize) is quantized in two more ways,
with the same calibration images and method as the full INT8 file, and each result is scored on labelled
images (accuracy, and the SQNR of the logits against the FP32 file's):

- **only this layer left in FP32** (``nodes_to_exclude`` = its nodes): the accuracy this layer alone recovers;
- **only this layer quantized** (every other layer excluded): the accuracy this layer alone loses.

A *layer* is a PyTorch module: the torch.onnx (dynamo) exporter names each weight initializer by its parameter
path (``features.3.weight``, ``3.weight`` in a bare ``nn.Sequential``; a BatchNorm it folds into the Conv keeps
the Conv's name), so the module path is read from the weight a node consumes, following Transpose, Reshape,
Identity, Cast and DequantizeLinear back to the initializer. A module called twice owns both its nodes and is
kept in FP32 or quantized as one. A weight with no ``.weight`` name (a graph built another way) leaves the
module path unknown (None) and the node stands alone under its ONNX name.

:func:`fewest_fp32_layers` turns the ranking into a mixed-precision choice for an accuracy budget (greedy by
sensitivity, each step measured, then pruned). Everything here takes paths and arrays; the pipeline chooses
the images (the validation split, never the test set) and words the errors.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .atomic import scratch_path
from .precision import QuantizationError

log = logging.getLogger(__name__)

#: the node types onnxruntime's QDQ quantizer gives quantized weights: the layers this analysis ranks
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
#: nodes followed back from a layer's weight input to the initializer that names it
WEIGHT_PATH_OPS = ("Transpose", "Reshape", "Identity", "Cast", "DequantizeLinear", "Unsqueeze", "Squeeze")


class NothingToQuantize(QuantizationError):
    """The model has no Conv, Gemm or MatMul node: INT8 would quantize nothing."""

    def __init__(self, path: Path, ops: list[str]):
        self.path, self.ops = path, ops
        super().__init__(f"{Path(path).name} has no Conv, Gemm or MatMul node, the layers INT8 quantizes "
                         f"(its graph holds only {', '.join(ops) or 'no nodes'}).")


class BudgetUnreachable(QuantizationError):
    """Only keeping every layer in FP32 (the FP32 model itself) meets the budget."""

    def __init__(self, budget_pp: float, steps: list[dict]):
        self.budget_pp, self.steps = budget_pp, steps
        best = min((s["drop_pp"] for s in steps), default=None)
        super().__init__(f"no mixed-precision choice meets an accuracy budget of {budget_pp:g} points: "
                         + (f"the smallest drop measured, with up to every layer but one in FP32, is {best:.2f} "
                            "points" if best is not None else "the model has a single quantizable layer")
                         + ", so only the FP32 model itself meets it.")


@dataclass(frozen=True)
class Layer:
    """One quantizable PyTorch module and the ONNX nodes it became."""

    module: str | None  # PyTorch module path ("features.3", "3"); None when the weight's name gives none
    nodes: tuple[str, ...]  # ONNX node names (what nodes_to_exclude and TensorRT's layer names use)
    op: str  # ONNX op of its first node

    @property
    def label(self) -> str:
        return self.module if self.module is not None else self.nodes[0]


@dataclass(frozen=True)
class Score:
    accuracy: float  # fraction of the labelled images classified right
    sqnr_db: float | None  # SQNR of the logits against the FP32 file's (dB); None when infinite or undefined

    def drop_pp(self, reference: "Score") -> float:
        """Accuracy lost against ``reference``, in percentage points (positive = worse)."""
        return 100 * (reference.accuracy - self.accuracy)

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "sqnr_db": self.sqnr_db}


def layers(fp32: Path) -> list[Layer]:
    """The quantizable layers of an FP32 ONNX file in graph order, grouped by PyTorch module.

    Raises :class:`NothingToQuantize` when there is none."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found: dict[str, list] = {}
    for i, n in enumerate(graph.node):
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        name = n.name or f"{n.op_type}_{i}"
        module = next((m for m in (_module_of(t, inits, producer) for t in n.input[1:2]) if m), None)
        found.setdefault(module if module is not None else f"\0{name}", [module, [], n.op_type])[1].append(name)
    if not found:
        raise NothingToQuantize(fp32, sorted({n.op_type for n in graph.node}))
    return [Layer(module, tuple(nodes), op) for module, nodes, op in found.values()]


def _module_of(tensor: str, inits: set[str], producer: dict) -> str | None:
    for _ in range(4):  # a weight reaches its layer through at most a few reshaping nodes
        if tensor in inits:
            return tensor[: -len(".weight")] if tensor.endswith(".weight") and len(tensor) > 7 else None
        node = producer.get(tensor)
        if node is None or node.op_type not in WEIGHT_PATH_OPS:
            return None
        tensor = node.input[0]
    return None


class Scorer:
    """Runs ONNX files with onnxruntime on labelled images and scores their logits against the FP32 file's.

    ``optimization`` is the variant's onnxruntime graph optimization ("all", or "basic" for the files made
    for TensorRT, whose Q/DQ must run as written: see :mod:`pipeline.variants`)."""

    def __init__(self, fp32: Path, images: np.ndarray, labels: np.ndarray, optimization: str = "all",
                 batch: int = 1000):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels, self.optimization, self.batch = np.asarray(labels), optimization, batch
        self.reference = self.logits(fp32)
        self.fp32 = Score(float(np.mean(self.reference.argmax(1) == self.labels)), None)

    def logits(self, path: Path) -> np.ndarray:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                         "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[self.optimization]
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([np.array(sess.run(None, {name: self.images[i : i + self.batch]})[0], copy=True)
                               for i in range(0, len(self.images), self.batch)])

    def score(self, path: Path) -> Score:
        from .precision import sqnr_db

        out = self.logits(path)
        db = sqnr_db(self.reference, out)
        return Score(float(np.mean(out.argmax(1) == self.labels)), round(db, 2) if math.isfinite(db) else None)


class Study:
    """One model quantized many ways (same calibration images and method), each result scored.

    Use as a context manager: the pre-processed model, the calibration ranges (measured once) and each trial
    file live in scratch files beside ``beside`` and are removed at the end."""

    def __init__(self, fp32: Path, beside: Path, calibration: np.ndarray, method: str, scorer: Scorer, *,
                 for_tensorrt: bool):
        self.fp32, self.beside, self.calibration, self.method = Path(fp32), Path(beside), calibration, method
        self.scorer, self.for_tensorrt = scorer, for_tensorrt
        self.layers = layers(self.fp32)
        self._stack = contextlib.ExitStack()
        self._prepared: Path | None = None
        self._ranges: Path | None = None

    def __enter__(self) -> "Study":
        from .precision import prepare

        self._prepared = prepare(self.fp32, self._stack.enter_context(scratch_path(self.beside.with_suffix(".pre"))))
        self._ranges = self._stack.enter_context(scratch_path(self.beside.with_suffix(".ranges")))
        self._ranges.unlink()  # onnxruntime calibrates when the cache file is absent, and writes it
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def score(self, fp32_layers: list[Layer] | tuple[Layer, ...] = ()) -> Score:
        """Quantize with ``fp32_layers`` left in float; score the result."""
        from .precision import _ort_quantize

        with self._trial() as out:
            _ort_quantize(self.fp32, out, self.calibration, self.method, for_tensorrt=self.for_tensorrt,
                          exclude=nodes_of(fp32_layers), prepared=self._prepared, calibration_cache=self._ranges)
            return self.scorer.score(out)

    @contextlib.contextmanager
    def _trial(self) -> Iterator[Path]:
        with scratch_path(self.beside.with_suffix(".trial.onnx")) as out:
            yield out

    def analyse(self) -> dict:
        """Every layer left alone in FP32 and quantized alone; the layers ranked (see :func:`rank`).

        Returns ``{"fp32": Score, "int8": Score, "layers": [row...]}`` with rows as :func:`rank` gives them."""
        int8 = self.score()
        rows = []
        for layer in self.layers:
            others = [other for other in self.layers if other is not layer]
            rows.append({"layer": layer, "fp32_only": self.score([layer]),
                         "int8_only": self.score(others) if others else int8})
        return {"fp32": self.scorer.fp32, "int8": int8, "layers": rank(rows, self.scorer.fp32, int8)}


def rank(rows: list[dict], fp32: Score, int8: Score) -> list[dict]:
    """The ranking rule, most sensitive first: the accuracy a layer recovers when it alone is left in FP32
    (points, higher first); ties (common: on a few thousand images one image is 0.02 points) broken by the
    accuracy it loses when it alone is quantized (higher first), then by the logit SQNR it recovers when left
    in FP32 (higher first). Recovery comes first because it is what the fallback acts on: keeping the top
    layer in FP32 is the first thing tried. Adds ``rank`` (1 = most sensitive), ``recovered_pp`` and
    ``alone_drop_pp`` to each row."""
    for r in rows:
        r["recovered_pp"] = round(100 * (r["fp32_only"].accuracy - int8.accuracy), 4)
        r["alone_drop_pp"] = round(r["int8_only"].drop_pp(fp32), 4)
    rows = sorted(rows, key=lambda r: (-r["recovered_pp"], -r["alone_drop_pp"],
                                       -(math.inf if r["fp32_only"].sqnr_db is None else r["fp32_only"].sqnr_db)))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def nodes_of(fp32_layers) -> tuple[str, ...]:
    return tuple(n for layer in fp32_layers for n in layer.nodes)


def fewest_fp32_layers(study: Study, order: list[Layer], budget_pp: float) -> tuple[list[Layer], Score, list[dict]]:
    """The fewest layers to keep in FP32 so that the accuracy drop against FP32 is at most ``budget_pp`` points.

    Greedy by sensitivity: keep ``order[0]`` in FP32, measure, add ``order[1]``, measure... until the drop is
    within the budget; then each layer kept before the last is tried back in INT8 (least sensitive first) and
    stays INT8 when the budget still holds, so no single kept layer is superfluous. Every choice is measured,
    never predicted from the per-layer numbers (sensitivities do not add up). Returns the layers kept in FP32
    (in ``order``), the score of that file and every measured step (``{"fp32_layers": [...], "accuracy",
    "drop_pp"}``). Raises :class:`BudgetUnreachable` when even every layer but one in FP32 misses it."""
    fp32 = study.scorer.fp32
    steps: list[dict] = []

    def trial(kept: list[Layer]) -> Score:
        s = study.score(kept)
        steps.append({"fp32_layers": [layer.label for layer in kept], "accuracy": s.accuracy,
                      "drop_pp": round(s.drop_pp(fp32), 4)})
        log.info("sensitivity: %s in FP32: accuracy %.2f %%, drop %.2f points (budget %g)",
                 ", ".join(steps[-1]["fp32_layers"]), 100 * s.accuracy, steps[-1]["drop_pp"], budget_pp)
        return s

    kept: list[Layer] = []
    score = None
    for layer in order[:-1]:  # all of them in FP32 is the FP32 model, not a mixed-precision one
        kept.append(layer)
        score = trial(kept)
        if score.drop_pp(fp32) <= budget_pp + 1e-9:
            break
    else:
        raise BudgetUnreachable(budget_pp, steps)
    for layer in reversed(kept[:-1]):
        fewer = [k for k in kept if k is not layer]
        s = trial(fewer)
        if s.drop_pp(fp32) <= budget_pp + 1e-9:
            kept, score = fewer, s
    return kept, score, steps
