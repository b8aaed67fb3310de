"""The JSON sidecar beside a model file whose format has no free-form metadata (ExecuTorch ``.pte``, LiteRT
``.tflite``): the preprocessing contract (:func:`exporters.onnx.build_metadata`'s dict) and what the exporter
learned of the file (its batch bound, its I/O dtype). One place says where it lives (``<file>.json``) and how it is
read, for the exporters, the runners and the bundles. Standard library only."""
from __future__ import annotations

import json
from pathlib import Path


def path(model: str | Path) -> Path:
    """``<model>.json``: e.g. ``model-int8.pte.json`` beside ``model-int8.pte``."""
    return Path(f"{model}.json")


def read(model: str | Path, runtime: str) -> dict:
    """The sidecar of ``model`` as a dict; ValueError naming ``runtime`` and the file when it is missing, not JSON or
    not a JSON object (it is untrusted input: a damaged or foreign file)."""
    side = path(model)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{runtime} sidecar {side} is missing or not JSON ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{runtime} sidecar {side} is not a JSON object.")
    return data
