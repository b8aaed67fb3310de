"""TensorRT runner behind the common interface, through Polygraphy's ``TrtRunner`` (lazy imports).

Polygraphy owns the device buffers, the CUDA stream and its synchronization;
``infer`` takes and returns host numpy arrays, so a timed call includes the
host-to-device and device-to-host copies. ``device_time_ms`` gives
Polygraphy's own measure of the last inference (enqueue to stream sync), so the
two figures, copies included and excluded, come from the same calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .base import BaseRunner
from .errors import BackendUnavailable, RuntimeInputError


class TensorRTRunner(BaseRunner):
    backend = "tensorrt"
    provider = "cuda"

    def __init__(self, engine_path) -> None:
        super().__init__()
        self.path = Path(engine_path)
        self.name = f"tensorrt:{self.path.name}"
        self._runner = None

    def activate_impl(self) -> None:
        try:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        except ImportError:
            raise BackendUnavailable("Running engines needs polygraphy and TensorRT: `pip install polygraphy` and "
                                     "TensorRT 10.x/11.x (JetPack 6 on Jetson).") from None
        if not self.path.is_file():
            raise RuntimeInputError(f"TensorRT engine {self.path} does not exist.")
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(self.path))))
        self._runner.activate()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._runner.infer(dict(feed)).items()}

    def device_time_ms(self) -> float:
        """Polygraphy's time of the last inference in ms (copies excluded)."""
        return 1000.0 * self._runner.last_inference_time()

    def deactivate_impl(self) -> None:
        self._runner.deactivate()
        self._runner = None
