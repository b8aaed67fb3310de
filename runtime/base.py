"""One runner interface for every backend (after Polygraphy's ``BaseRunner``).

Subclasses implement the ``*_impl`` hooks; callers use ``activate`` /
``infer`` / ``deactivate`` or a ``with`` block. ``infer`` takes and returns
numpy arrays keyed by tensor name, so comparing backends needs no framework.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class BaseRunner:
    name: str = "runner"
    backend: str = "?"  # onnxruntime | tensorrt | torch
    provider: str = "cpu"  # cpu | cuda

    def __init__(self) -> None:
        self.is_active = False

    # hooks -----------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

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
        return self.infer_impl(feed)

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "BaseRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()
