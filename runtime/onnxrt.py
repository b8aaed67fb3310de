"""onnxruntime runner: CPU or CUDA execution provider behind the common interface."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .base import BaseRunner
from .errors import BackendUnavailable, RuntimeInputError
from .modelfile import check_onnx_file
from .watchdog import raise_stopped, watch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: onnxruntime.GraphOptimizationLevel member per accepted ``optimization`` name
MAX_THREADS = 1024  # more intra-op threads than this is a typo; onnxruntime would try to start them all
OPTIMIZATIONS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                 "disabled": "ORT_DISABLE_ALL"}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (CUDA), not both."
        ) from None
    return onnxruntime


def check_time_limit(value) -> float | None:
    """None, or a finite number of seconds above 0: a NaN or infinite budget would never stop anything."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise RuntimeInputError(f"time_limit must be a finite number of seconds above 0 (or None), got {value!r}.")
    return float(value)


class OnnxrtRunner(BaseRunner):
    """Runs an ONNX file with one onnxruntime execution provider.

    ``threads`` sets intra-op threads (0 = onnxruntime's default: one per
    physical core). ``optimization`` is onnxruntime's graph optimization
    level, by default ``all``, as an app embedding the model would have it;
    ``basic`` executes QuantizeLinear/DequantizeLinear as written instead of
    fusing them into integer kernels (exact QDQ semantics: on x86 CPUs without
    VNNI the fused int8 kernels can saturate).

    Every run can be stopped (:mod:`runtime.watchdog`): Ctrl-C and SIGTERM end a run in progress, and
    ``time_limit`` (seconds per ``infer`` call, None = none) stops a model that runs longer with
    :class:`runtime.watchdog.RunTimeout`, so a model that never returns cannot hang its caller.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 0, optimization: str = "all",
                 time_limit: float | None = None) -> None:
        super().__init__()
        self.time_limit = check_time_limit(time_limit)
        if provider not in PROVIDERS:
            raise RuntimeInputError(f"provider must be one of {', '.join(PROVIDERS)}, got '{provider}'.")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
            raise RuntimeInputError(f"threads must be an integer from 0 (onnxruntime's default) to {MAX_THREADS}, "
                                    f"got {threads!r}.")
        if optimization not in OPTIMIZATIONS:
            raise RuntimeInputError(f"optimization must be one of {', '.join(OPTIMIZATIONS)}, got '{optimization}'.")
        self.optimization = optimization
        self.path = Path(path)
        self.provider = provider
        self.threads = threads
        self.name = f"onnxruntime-{provider}:{self.path.name}"
        self.session = None

    def activate_impl(self) -> None:
        ort = _ort()
        check_onnx_file(self.path)  # missing, empty, or external data leading out of its folder
        wanted = PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {wanted} here (available: {', '.join(ort.get_available_providers())}). "
                "For CUDA install onnxruntime-gpu instead of onnxruntime and make sure a GPU is visible."
            )
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 4  # fatal only: every error reaches us as an exception, worded by us, not also as a C++ log line
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATIONS[self.optimization])
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=[wanted])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise RuntimeInputError(f"onnxruntime could not load {self.path}: {str(e).strip()[:300]}") from None
        if self.session.get_providers()[0] != wanted:
            raise BackendUnavailable(f"onnxruntime fell back from {wanted} to {self.session.get_providers()[0]}.")

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def input_shape(self) -> list:
        return list(self.session.get_inputs()[0].shape)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def metadata_props(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        options = self._run_options()
        try:
            with watch(options, self.time_limit) as run:
                outs = self.session.run(None, dict(feed), options)
        except Exception as e:  # onnxruntime's own Fail/InvalidArgument/RuntimeException: the model or the feed
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise_stopped(run, str(self.path))  # Ctrl-C, SIGTERM or the time budget, not a broken model
            shapes = ", ".join(f"{k} {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', ()))}" for k, v in feed.items())
            raise RuntimeInputError(f"onnxruntime could not run {self.path} on {shapes}: "
                                    f"{str(e).strip()[:300]}") from None
        return dict(zip(self.output_names, outs))

    def _run_options(self):
        options = _ort().RunOptions()
        options.log_severity_level = 4  # a stopped run is reported by us, not also as a C++ log line
        return options

    def deactivate_impl(self) -> None:
        self.session = None

    def synchronize(self) -> None:
        """Nothing to wait for: ``session.run`` returns host numpy arrays, so for the CUDA provider
        the device work and the copy back have finished when it returns (copies are in the timing)."""
