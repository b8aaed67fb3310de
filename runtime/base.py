"""One runner interface for every backend (after Polygraphy's ``BaseRunner``).

Subclasses implement the ``*_impl`` hooks; callers use ``activate`` /
``infer`` / ``deactivate`` or a ``with`` block. ``infer`` takes and returns
numpy arrays keyed by tensor name, so comparing backends needs no framework.
``infer`` returns arrays the caller owns: backends may reuse their output
buffers between calls (Polygraphy's ``TrtRunner`` does), so every output is
copied here, once, for every runner.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class BaseRunner:
    name: str = "runner"
    backend: str = "?"  # onnxruntime | tensorrt | torch
    provider: str = "cpu"  # cpu | cuda
    #: (min, max) batch the backend accepts; None = any. TensorRT reads it from the engine's profile.
    batch_range: tuple[int, int] | None = None

    def __init__(self) -> None:
        self.is_active = False

    # hooks -----------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    @property
    def latency_includes(self) -> str:
        """What one timed ``infer`` call spans, recorded beside every latency figure (trtexec's habit of
        naming H2D, compute and D2H apart)."""
        if self.provider == "cuda":
            return "H2D copy + GPU compute + D2H copy + sync, host wall clock"
        return "CPU compute + output copy, host wall clock"

    def synchronize(self) -> None:
        """Block until queued device work is done (no-op on CPU); timing calls it."""

    # public API ------------------------------------------------------
    def activate(self) -> "BaseRunner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: call activate() (or use a with block) before infer().")
        # np.array(copy=True): a runner's reused output buffer must never alias a result the caller keeps
        return {k: np.array(v, copy=True) for k, v in self.infer_impl(feed).items()}

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()
