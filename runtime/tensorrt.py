"""TensorRT runner behind the common interface, through Polygraphy's ``TrtRunner`` (lazy imports).

Polygraphy owns the device buffers, the CUDA stream and its synchronization;
``infer`` takes and returns host numpy arrays. A timed call therefore spans the
host-to-device copy, ``execute_async_v3``, the device-to-host copy and the
stream synchronization (``LATENCY_INCLUDES``): Polygraphy's
``last_inference_time()`` spans the same, so it is no "copies excluded" figure
and is not reported. GPU compute alone is what ``trtexec --loadEngine=...``
reports as "GPU Compute Time", separately from "H2D Latency" and "D2H Latency".

The engine's optimization profile bounds the batch: :attr:`batch_range` is read
from the engine (profile 0, the one ``TrtRunner`` uses), and callers batch
within it (``pipeline.measure.compare.run_logits``). Polygraphy reuses its host
output buffers between calls; :class:`runtime.base.BaseRunner` copies every
output at the boundary, so results never alias them.

API facts (TensorRT 10.x/11.x ``ICudaEngine.num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_profile_shape(name, 0)``
-> (min, opt, max); Polygraphy 0.49 ``TrtRunner.engine`` after activation)
were read, never run here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .base import BaseRunner
from .errors import BackendUnavailable, RuntimeInputError

LATENCY_INCLUDES = "H2D copy + GPU compute (execute_async_v3) + D2H copy + stream sync, host wall clock"


def profile_batch_range(trt, engine, profile: int = 0) -> tuple[int, int]:
    """(min, max) batch every input of ``engine`` accepts under optimization profile ``profile``."""
    lo, hi = 1, None
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            continue
        mn, _opt, mx = engine.get_tensor_profile_shape(name, profile)
        lo, hi = max(lo, int(mn[0])), int(mx[0]) if hi is None else min(hi, int(mx[0]))
    if hi is None:
        raise RuntimeInputError("The engine has no input with an optimization profile.")
    return lo, hi


class TensorRTRunner(BaseRunner):
    backend = "tensorrt"
    provider = "cuda"
    latency_includes = LATENCY_INCLUDES

    def __init__(self, engine_path) -> None:
        super().__init__()
        self.path = Path(engine_path)
        self.name = f"tensorrt:{self.path.name}"
        self._runner = None

    def activate_impl(self) -> None:
        try:
            import tensorrt as trt
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        except ImportError:
            raise BackendUnavailable("Running engines needs polygraphy and TensorRT: `pip install polygraphy` and "
                                     "TensorRT 10.x/11.x (JetPack 6 on Jetson).") from None
        if not self.path.is_file():
            raise RuntimeInputError(f"TensorRT engine {self.path} does not exist.")
        self._runner = TrtRunner(EngineFromBytes(BytesFromPath(str(self.path))))
        self._runner.activate()
        self.batch_range = profile_batch_range(trt, self._runner.engine)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self._runner.infer(dict(feed)))  # BaseRunner.infer copies: Polygraphy reuses these buffers

    def deactivate_impl(self) -> None:
        self._runner.deactivate()
        self._runner = None
