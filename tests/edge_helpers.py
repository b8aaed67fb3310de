"""Helpers of the edge-runtime tests (OpenVINO, ExecuTorch, LiteRT): the FP32 tolerance derived from the model,
and the INT8 acceptance figures."""
from __future__ import annotations

import math

import numpy as np

#: float32 unit roundoff
U32 = 2.0 ** -24
#: INT8 acceptance on the test images: argmax agreement with torch FP32, and accuracy drop in percentage points
#: (0.5 pp of 3,000 images is 15 images: the budget of a barely-trained test model, looser than the pipeline's
#: 0.15 pp on the default model)
INT8_AGREEMENT = 0.99
INT8_DROP_PP = 0.5


def fp32_atol(model, reference: np.ndarray) -> float:
    """The max |logit diff| two FP32 implementations of ``model`` may show: each of its L weighted layers sums
    up to K terms (K its largest fan-in) in an order the runtime picks, which changes a sum by about
    sqrt(K) * u * |sum| (random-walk rounding, u the float32 unit roundoff); over L layers the errors add, and the
    logits' magnitude sets the scale. Times 8 for headroom. A bf16 run (u = 2^-8) breaks it by orders of magnitude."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fan_in = max(int(np.prod(m.weight.shape[1:])) for m in layers)
    return 8 * len(layers) * math.sqrt(fan_in) * U32 * max(1.0, float(np.abs(reference).max()))


def run_all(runner, images: np.ndarray, step: int = 500) -> np.ndarray:
    return np.concatenate([runner.infer({"input": images[i:i + step]})["logits"] for i in range(0, len(images), step)])


def check_fp32(logits: np.ndarray, model, reference: np.ndarray) -> None:
    assert logits.shape == reference.shape and np.isfinite(logits).all()
    diff = float(np.abs(logits - reference).max())
    assert diff <= fp32_atol(model, reference), (diff, fp32_atol(model, reference))
    assert (logits.argmax(1) == reference.argmax(1)).all()


def check_int8(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    assert logits.shape == reference.shape and np.isfinite(logits).all()
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    drop_pp = 100 * float((reference.argmax(1) == labels).mean() - (logits.argmax(1) == labels).mean())
    assert agreement >= INT8_AGREEMENT, agreement
    assert drop_pp <= INT8_DROP_PP, drop_pp
    # int8 is not float: some logit moves by more than the FP32 tolerance (a file that is not quantized fails here)
    assert float(np.abs(logits - reference).max()) > 1e-3
    return {"agreement": agreement, "drop_pp": drop_pp}
