"""The quantize stage's INT8 sensitivity ranking and its fallback to an accuracy budget, for users.

The measuring is :mod:`exporters.sensitivity`; this module picks the images (the validation split: choosing
which layers stay in FP32 is model selection, so the test set, which the report quotes, is never used),
decides which PTQ files the budget applies to, lists the layers kept in FP32 in the form each tool accepts,
and words the errors. What it finds is ``quantize/sensitivity.json``, which the report reads.

The fallback applies to the files made by post-training quantization (``onnx-int8-ptq``, ``onnx-int8-cpu``):
onnxruntime's quantizer can leave any node in float. The QAT file is not re-quantized here: its INT8 weights
come from fine-tuning with every layer fake-quantized, and its accuracy budget is the QAT row's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError
from pipeline.store.paths import RunDir

if TYPE_CHECKING:
    import numpy as np

    from exporters.sensitivity import Layer, Study

    from pipeline.config import QuantConfig
    from pipeline.variants import Variant

log = logging.getLogger(__name__)

RANKING = ("most sensitive first: the validation accuracy a layer recovers when it alone is left in FP32 (points), "
           "then the accuracy it loses when it alone is quantized, then the logit SQNR it recovers in FP32")


def tool_lists(fp32_layers: list[Layer]) -> dict:
    """The layers kept in FP32 as each tool takes them: onnxruntime's ``quantize_static(nodes_to_exclude=...)``,
    TensorRT's per-layer precisions (TensorRT names a layer after its ONNX node: ``trtexec --layerPrecisions``
    with ``--precisionConstraints=obey``, Polygraphy ``--layer-precisions``), and PyTorch module paths (for
    torchao/ModelOpt configs that skip modules by name)."""
    from exporters.sensitivity import nodes_of

    nodes = list(nodes_of(fp32_layers))
    return {"onnxruntime_nodes_to_exclude": nodes,
            "tensorrt_layer_precisions": ",".join(f"{n}:fp32" for n in nodes),
            "torch_modules": [layer.module for layer in fp32_layers if layer.module is not None]}


class Sensitivity:
    """One quantize stage's analysis: the ranking (from the first PTQ file built) and each PTQ file's fallback.

    ``images``/``labels`` are the validation split; ``calibration`` and ``q`` are what the PTQ files are
    quantized with, so every trial is the file the stage would write, with some layers left in float."""

    def __init__(self, fp32: Path, scratch: Path, calibration: np.ndarray, images: np.ndarray, labels: np.ndarray,
                 q: QuantConfig, model: str):
        self.fp32, self.scratch, self.calibration, self.q, self.model = fp32, scratch, calibration, q, model
        self.images, self.labels = images, labels
        self.order: list[Layer] | None = None
        self.result: dict = {"images": int(len(images)), "source": "validation split", "ranking": RANKING,
                             "variant": None, "layers": [], "fallback": {}}

    @property
    def wanted(self) -> bool:
        return self.q.sensitivity or self.q.int8_budget is not None

    def _study(self, v: Variant) -> Study:
        from exporters.sensitivity import NothingToQuantize, Scorer, Study

        scorer = Scorer(self.fp32, self.images, self.labels, v.ort_optimization)
        try:
            return Study(self.fp32, self.scratch, self.calibration, self.q.calib_method, scorer,
                         for_tensorrt=v.tensorrt)
        except NothingToQuantize as e:
            raise PipelineError(
                f"Model {self.model} cannot be quantized to INT8: {e} INT8 stores the weights of convolution and "
                f"linear layers (nn.Conv2d, nn.Linear) in 8 bits, and this model has none. Run with --quant none to "
                "skip the INT8 variants; the FP32 and FP16 files are already written.") from None

    def fp32_layers(self, v: Variant) -> list[Layer]:
        """Rank the layers (once, with ``v``'s quantization) and return those ``v``'s file keeps in FP32:
        none without ``--int8-budget`` or within it; else the fewest that bring it back within it."""
        from exporters.sensitivity import BudgetUnreachable, fewest_fp32_layers

        if not self.wanted:
            return []
        with self._study(v) as study:
            fp32 = study.scorer.fp32
            if self.order is None:
                self._rank(study, v)
                int8 = self._int8
            else:
                int8 = study.score()
            budget = self.q.int8_budget
            if budget is None:
                return []
            entry = {"budget_pp": budget, "fp32_accuracy": fp32.accuracy, "int8_accuracy": int8.accuracy,
                     "int8_drop_pp": round(int8.drop_pp(fp32), 4), "fp32_layers": [], "steps": []}
            self.result["fallback"][v.name] = entry
            if int8.drop_pp(fp32) <= budget + 1e-9:
                entry.update(accuracy=int8.accuracy, drop_pp=entry["int8_drop_pp"], **tool_lists([]))
                log.info("quantize: %s changes validation accuracy by %+.2f points against FP32, within "
                         "--int8-budget %g: all layers INT8", v.name, -entry["int8_drop_pp"], budget)
                return []
            try:
                kept, score, steps = fewest_fp32_layers(study, self.order, budget)
            except BudgetUnreachable as e:
                entry["steps"] = e.steps
                raise PipelineError(
                    f"--int8-budget {budget:g}: {v.file} loses {entry['int8_drop_pp']:.2f} points of validation "
                    f"accuracy ({100 * int8.accuracy:.2f} % vs {100 * fp32.accuracy:.2f} % in FP32), and {e} "
                    f"Layers tried in FP32, most sensitive first: {', '.join(x.label for x in self.order)}. "
                    f"{v.file} was not written (no file calling itself INT8 would meet the budget). Allow a larger "
                    f"budget, or ship model-fp32.onnx; the sensitivity ranking is in "
                    f"{RunDir.relative().sensitivity_json.as_posix()}."
                ) from None
        entry.update(fp32_layers=[x.label for x in kept], accuracy=score.accuracy,
                     drop_pp=round(score.drop_pp(fp32), 4), steps=steps, **tool_lists(kept))
        log.info("quantize: %s kept %s in FP32 for --int8-budget %g: validation accuracy drop %.2f -> %.2f points",
                 v.name, ", ".join(entry["fp32_layers"]), budget, entry["int8_drop_pp"], entry["drop_pp"])
        return kept

    def _rank(self, study: Study, v: Variant) -> None:
        analysis = study.analyse()
        self._int8 = analysis["int8"]
        self.order = [r["layer"] for r in analysis["layers"]]
        self.result.update(
            variant=v.name, fp32_accuracy=analysis["fp32"].accuracy, int8_accuracy=self._int8.accuracy,
            int8_sqnr_db=self._int8.sqnr_db,
            layers=[{"rank": r["rank"], "module": r["layer"].module, "nodes": list(r["layer"].nodes),
                     "op": r["layer"].op, "fp32_only": r["fp32_only"].as_dict(),
                     "int8_only": r["int8_only"].as_dict(), "recovered_pp": r["recovered_pp"],
                     "alone_drop_pp": r["alone_drop_pp"]} for r in analysis["layers"]])
        top = analysis["layers"][0]
        log.info("quantize: INT8 sensitivity of %s on %d validation images: most sensitive %s (%s), recovering "
                 "%.2f points in FP32", v.name, len(self.images), top["layer"].label, ", ".join(top["layer"].nodes),
                 top["recovered_pp"])
