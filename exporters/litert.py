"""PyTorch -> LiteRT ``.tflite`` (FP32, and INT8 through PT2E) with litert-torch, in the LiteRT venv.

litert-torch cannot live in the project's environment (its pins would downgrade pydantic; see
:mod:`runtime.litert_venv`), so this module exports the model here with ``torch.export`` (dynamic batch) to a
``.pt2`` file, writes the calibration batch as ``.npy``, and runs :mod:`exporters.litert_convert` by path with
the venv's python (same torch release, so the ``.pt2`` loads there). The ``.tflite`` it writes is untrusted
converter output: it is checked (FlatBuffer identifier ``TFL3``, and loaded by the LiteRT runner on the example
batch, which must give finite (N, 10) logits) before it is renamed into place, with its sidecar
``<file>.tflite.json`` (the preprocessing contract, plus ``batch``: ``"dynamic"`` or the fixed batch the file was
converted at when a dynamic batch failed, as it does through ``nn.Flatten``).

INT8 files have int8 input and output tensors (recorded in the sidecar as ``io_dtype``); the runner (de)quantizes.
Failures raise :class:`LitertExportError`, one paragraph naming LiteRT and the converter's own words.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from runtime import litert_venv
from runtime.errors import BackendUnavailable
from runtime.litert import LitertRunner, sidecar_path

from .atomic import atomic_path

FIXED_BATCH = 1  # the batch of a file whose dynamic batch failed; the runner then resizes or loops
TIMEOUT_S = 1800


class LitertExportError(Exception):
    """litert-torch could not convert the model, or the LiteRT venv could not be made."""


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def venv_python(venv: Path | None = None, create: bool = True, log=None) -> Path:
    """The LiteRT venv's python, created on first use when ``create`` (minutes); LitertExportError if not there."""
    try:
        if create:
            return litert_venv.ensure_venv(venv, torch_version=_torch_version(), log=log)
        python = litert_venv.ready(venv, torch_version=_torch_version())
    except BackendUnavailable as e:
        raise LitertExportError(str(e)) from None
    if python is None:
        raise LitertExportError(f"LiteRT: no LiteRT venv with torch {_torch_version()}; {litert_venv.INSTALL_HINT}.")
    return python


def _export(model, path: Path, metadata: dict[str, str], precision: str, calibration, example,
            venv: Path | None, create_venv: bool) -> Path:
    import numpy as np
    import torch

    python = venv_python(venv, create_venv)
    path = Path(path)
    example = torch.as_tensor(example if example is not None else torch.zeros(2, 1, 28, 28), dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="litert-") as tmp:
        tmp = Path(tmp)
        try:
            program = torch.export.export(model.eval(), (example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1),),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        except Exception as e:
            raise LitertExportError(f"LiteRT: torch.export failed before conversion: {type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:300]}") from None
        torch.export.save(program, tmp / "model.pt2")
        cmd = [str(python), str(Path(__file__).with_name("litert_convert.py")), "--program", str(tmp / "model.pt2"),
               "--out", str(tmp / "model.tflite"), "--precision", precision, "--batch", str(FIXED_BATCH)]
        if precision == "int8":
            calibration = np.ascontiguousarray(calibration, dtype=np.float32)
            if calibration.ndim != 4 or len(calibration) == 0 or not np.isfinite(calibration).all():
                raise LitertExportError("LiteRT INT8 calibration needs a non-empty finite float32 batch (N, C, H, W); "
                                        f"got shape {calibration.shape}.")
            np.save(tmp / "calibration.npy", calibration)
            cmd += ["--calibration", str(tmp / "calibration.npy")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise LitertExportError(f"LiteRT: litert-torch took over {TIMEOUT_S} s converting the model and was "
                                    "stopped.") from None
        result = _answer(done)
        if not result.get("ok"):
            raise LitertExportError(f"LiteRT: litert-torch could not convert the model ({precision}): "
                                    f"{result.get('error')}")
        converted = tmp / "model.tflite"
        io_dtype = _check(converted, example, venv)
        side = {**metadata, "precision": precision, "batch": result["batch"], "io_dtype": io_dtype,
                **({"dynamic_batch_error": str(result["dynamic_failed"])[:300]} if result.get("dynamic_failed") else {}),
                "converter": "litert-torch 0.10 (PT2EQuantizer symmetric per-channel)" if precision == "int8"
                else "litert-torch 0.10"}
        if precision == "int8":
            side["calibration_images"] = str(len(calibration))
        with atomic_path(sidecar_path(path)) as t:
            t.write_text(json.dumps(side, indent=1))
        with atomic_path(path) as t:
            t.write_bytes(converted.read_bytes())
    return path


def _answer(done: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in (done.stdout or "").splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        tail = " | ".join((done.stderr or "").strip().splitlines()[-3:])[:400]
        return {"ok": False, "error": f"the converter exited with status {done.returncode} and no answer ({tail})"}
    return result


def _check(tflite: Path, example, venv) -> str:
    """Load the converter's file with the runner and run the example batch: finite (N, 10) logits, or refused."""
    import numpy as np

    x = np.asarray(example, dtype=np.float32)
    try:
        with LitertRunner(tflite, venv=venv, mode="worker") as runner:
            y = runner.infer({"input": x})["logits"]
            io_dtype = runner.info["input"]["dtype"]
    except Exception as e:  # RuntimeInputError / BackendUnavailable from the runner: the output is unusable
        op = re.search(r"find op for (?:builtin|custom) (?:opcode|code) '([^']+)'", str(e))
        if op:  # name the operator, not the temp file (gone once this returns)
            raise LitertExportError(f"LiteRT: litert-torch lowered the model to operator {op.group(1)}, which the LiteRT "
                                    "interpreter has no kernel for, so the .tflite could not run. Replace that "
                                    "operation in the model, or deploy it with another runtime.") from None
        raise LitertExportError(f"LiteRT: litert-torch wrote a file the LiteRT interpreter cannot run: {e}") from None
    if y.shape != (len(x), 10) or not np.isfinite(y).all():
        raise LitertExportError(f"LiteRT: the converted file gives {'non-finite' if y.shape == (len(x), 10) else 'shape'}"
                                f" {list(y.shape)} logits on the example batch; refused.")
    return io_dtype


def export_fp32(model, path: Path, metadata: dict[str, str], example=None, venv: Path | None = None,
                create_venv: bool = True) -> Path:
    """FP32 ``.tflite`` of the eval-mode ``model`` at ``path`` with its sidecar; returns ``path``."""
    return _export(model, path, metadata, "fp32", None, example, venv, create_venv)


def export_int8(model, path: Path, metadata: dict[str, str], calibration, example=None, venv: Path | None = None,
                create_venv: bool = True) -> Path:
    """INT8 ``.tflite`` (PT2E, litert-torch's symmetric per-channel quantizer) calibrated on ``calibration``
    (float32 (N, 1, 28, 28), preprocessed); int8 input/output tensors. Returns ``path``."""
    return _export(model, path, metadata, "int8", calibration, example, venv, create_venv)
