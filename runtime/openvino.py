"""OpenVINO runner: an IR file (``.xml`` + ``.bin``) on OpenVINO's CPU plugin, torch-free.

The CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on CPUs with BF16 (AVX-512 BF16, AMX), so an
"FP32" model silently runs in bfloat16 there (max logit diff 0.05 on the default model). This runner always sets
the hint: ``f32`` for the ``fp32`` and ``int8`` precisions (an INT8 IR's quantized layers are int8 whatever the
hint; the hint decides only the layers left in float), ``bf16`` for ``bf16``, which is refused on a CPU whose
OpenVINO ``OPTIMIZATION_CAPABILITIES`` lack BF16 (it would quietly run f32 there and be mislabelled).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .base import BaseRunner
from .errors import BackendUnavailable, RuntimeInputError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: the rt_info section of an IR that holds the preprocessing contract (the keys of runtime.metadata)
RT_SECTION = "edge_export_pipeline"
#: precision name -> INFERENCE_PRECISION_HINT
PRECISIONS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
MAX_THREADS = 1024
#: how OpenVINO names each hint when read back from a compiled model
_TYPE_NAMES = {"f32": "'float32'", "bf16": "'bfloat16'"}


def install_hint() -> str:
    return "`pip install -e .[openvino]` (openvino==2026.4.*, nncf==3.4.*)"


def _ov():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"OpenVINO is not installed: {install_hint()}.") from None
    return openvino


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (False without OpenVINO)."""
    try:
        return "BF16" in _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except BackendUnavailable:
        return False


def check_ir_file(path: Path) -> None:
    """An IR is an ``.xml`` with its ``.bin`` beside it; both must be non-empty files."""
    path = Path(path)
    if path.suffix != ".xml":
        raise RuntimeInputError(f"OpenVINO: {path} is not an IR file (.xml).")
    for part in (path, path.with_suffix(".bin")):
        if not part.is_file() or part.stat().st_size == 0:
            raise RuntimeInputError(f"OpenVINO: {part} is missing or empty (an IR needs its .xml and .bin).")


def read_metadata(path: Path) -> dict[str, str]:
    """The preprocessing contract in an IR's rt_info (empty when it has none). Reads the ``.xml`` and ``.bin``."""
    check_ir_file(path)
    try:
        model = _ov().Core().read_model(str(path))
    except BackendUnavailable:
        raise
    except Exception as e:
        raise RuntimeInputError(f"OpenVINO could not read {path}: {' '.join(str(e).split())[:300]}") from None
    return _section(model)


def _section(model) -> dict[str, str]:
    info = model.get_rt_info()
    if RT_SECTION not in list(info.keys()):
        return {}
    section = info[RT_SECTION]
    section = section if isinstance(section, dict) else {}
    return {str(k): str(getattr(v, "value", v)) for k, v in section.items()}


class OpenvinoRunner(BaseRunner):
    """Runs an OpenVINO IR on the CPU plugin with an explicit inference precision (see the module docstring).

    ``threads`` is ``INFERENCE_NUM_THREADS`` (0 = OpenVINO's default). Any batch size is accepted (the IR's
    batch axis is dynamic).
    """

    backend = "openvino"
    provider = "cpu"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int = 0) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise RuntimeInputError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got '{precision}'.")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
            raise RuntimeInputError(f"threads must be an integer from 0 (OpenVINO's default) to {MAX_THREADS}, "
                                    f"got {threads!r}.")
        self.path, self.precision, self.threads = Path(path), precision, threads
        self.name = f"openvino-cpu-{precision}:{self.path.name}"
        self.compiled = self.request = None
        self.metadata: dict[str, str] = {}

    def activate_impl(self) -> None:
        ov = _ov()
        check_ir_file(self.path)
        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailable("OpenVINO: this CPU has no BF16 (OPTIMIZATION_CAPABILITIES lacks it), so a bf16 "
                                     "row would run f32 and be mislabelled.")
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            model = core.read_model(str(self.path))
            self.metadata = _section(model)
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise RuntimeInputError(f"OpenVINO could not load {self.path}: {' '.join(str(e).split())[:300]}") from None
        got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))  # e.g. "<Type: 'float32'>"
        if _TYPE_NAMES[PRECISIONS[self.precision]] not in got:
            raise BackendUnavailable(f"OpenVINO compiled {self.path.name} with precision {got}, not the "
                                     f"{PRECISIONS[self.precision]} asked for.")
        self.request = self.compiled.create_infer_request()

    @property
    def input_names(self) -> list[str]:
        return [next(iter(i.get_names()), f"input{n}") for n, i in enumerate(self.compiled.inputs)]

    @property
    def output_names(self) -> list[str]:
        return [next(iter(o.get_names()), f"output{n}") for n, o in enumerate(self.compiled.outputs)]

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.input_names
        if set(feed) != set(names):
            raise RuntimeInputError(f"OpenVINO {self.path.name} takes inputs {names}, got {sorted(feed)}.")
        try:
            results = self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        except Exception as e:  # OpenVINO's GeneralFailure and friends: the feed does not fit the model
            shapes = ", ".join(f"{k} {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', ()))}" for k, v in feed.items())
            raise RuntimeInputError(f"OpenVINO could not run {self.path} on {shapes}: "
                                    f"{' '.join(str(e).split())[:300]}") from None
        return {name: results[port] for name, port in zip(self.output_names, self.compiled.outputs)}

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None

