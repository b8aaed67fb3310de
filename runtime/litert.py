"""LiteRT (formerly TFLite) runner: a ``.tflite`` file on ai-edge-litert's Interpreter (its built-in XNNPACK), torch-free.

Where ai-edge-litert is installed in this process's environment (the project's ``[litert]`` extra, a bundle, a
device) the interpreter runs here. Where it is not, or with ``mode="worker"``, the runner starts
:mod:`runtime.litert_worker` with the LiteRT converter venv's python (:mod:`runtime.litert_venv`) and exchanges
arrays with it over a pipe. That costs one copy of the batch each way plus a pipe round trip per call (measured
on this host under load: about +0.24 ms per batch-1 call and +6 ms per batch of 256, see docs/runtimes.md), which
:attr:`LitertRunner.latency_includes` records beside every timing.

INT8 files have int8 input/output tensors; the worker (de)quantizes with the tensors' scale and zero point, so
``infer`` takes and returns float32 like every runner.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Mapping

import numpy as np

from .base import BaseRunner
from . import litert_venv, sidecar
from .errors import BackendUnavailable, RuntimeInputError
from .litert_worker import recv_array, send_array

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODES = ("auto", "inprocess", "worker")


def sidecar_path(tflite: Path) -> Path:
    return sidecar.path(tflite)


def read_sidecar(tflite: Path) -> dict:
    """The preprocessing contract written beside a ``.tflite`` (``<file>.tflite.json``); ValueError if unreadable."""
    return sidecar.read(tflite, "LiteRT")


def check_tflite_file(path: Path) -> None:
    """A ``.tflite`` is a FlatBuffer whose identifier (bytes 4..8) is ``TFL3``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise RuntimeInputError(f"LiteRT: cannot read {path} ({e.strerror or type(e).__name__}).") from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise RuntimeInputError(f"LiteRT: {path} is not a .tflite file (no TFL3 FlatBuffer identifier).")


def inprocess_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


class LitertRunner(BaseRunner):
    """Runs a ``.tflite`` file; ``mode`` is ``inprocess`` (ai-edge-litert importable here), ``worker`` (a process
    in the LiteRT venv) or ``auto`` (in process when possible). ``venv`` is the LiteRT venv (default
    :func:`runtime.litert_venv.default_dir`); it must exist already: the runner never installs anything."""

    backend = "litert"
    provider = "cpu"

    def __init__(self, path: str | Path, threads: int = 0, mode: str = "auto", venv: Path | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise RuntimeInputError(f"LiteRT mode must be one of {', '.join(MODES)}, got '{mode}'.")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 1024:
            raise RuntimeInputError(f"threads must be an integer from 0 (LiteRT's default) to 1024, got {threads!r}.")
        self.path, self.threads, self.mode, self.venv = Path(path), threads, mode, venv
        self.name = f"litert-cpu:{self.path.name}"
        self.model = self.proc = None
        self.info: dict = {}

    @property
    def latency_includes(self) -> str:
        if self.proc is not None:
            return "CPU compute + (de)quantize + pipe to and from the LiteRT worker process, host wall clock"
        return "CPU compute + (de)quantize + output copy, host wall clock"

    def activate_impl(self) -> None:
        check_tflite_file(self.path)
        if self.mode == "inprocess" or (self.mode == "auto" and inprocess_available()):
            from .litert_worker import TfliteModel

            try:
                self.model = TfliteModel(str(self.path), self.threads)
            except ImportError:
                raise BackendUnavailable("LiteRT: ai-edge-litert is not installed here: `pip install "
                                         "'ai-edge-litert==2.3.*'`, or use mode='worker'.") from None
            except Exception as e:
                raise RuntimeInputError(f"LiteRT could not load {self.path}: {' '.join(str(e).split())[:300]}") from None
            self.info = self.model.info()
            return
        python = litert_venv.ready(self.venv)
        if python is None:
            raise BackendUnavailable(f"LiteRT: no LiteRT venv at {self.venv or litert_venv.default_dir()}; "
                                     f"{litert_venv.INSTALL_HINT}.")
        worker = Path(__file__).with_name("litert_worker.py")
        self.proc = subprocess.Popen([str(python), str(worker), str(self.path), str(self.threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        line = self.proc.stdout.readline()
        try:
            hello = json.loads(line)
        except ValueError:
            hello = {"ok": False, "error": f"the worker exited (status {self.proc.poll()}) without answering"}
        if not isinstance(hello, dict) or not hello.get("ok"):
            self._stop()
            raise RuntimeInputError(f"LiteRT could not load {self.path}: {str(hello.get('error'))[:400]}")
        self.info = hello["info"]

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feed) != {INPUT_NAME}:
            raise RuntimeInputError(f"LiteRT {self.path.name} takes input '{INPUT_NAME}', got {sorted(feed)}.")
        x = np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32)
        if x.ndim != 4 or len(x) == 0:
            raise RuntimeInputError(f"LiteRT {self.path.name} takes a batch (N, C, H, W), got shape {list(x.shape)}.")
        if self.model is not None:
            try:
                y = self.model.infer(x)
            except Exception as e:
                raise RuntimeInputError(f"LiteRT could not run {self.path} on float32{list(x.shape)}: "
                                        f"{' '.join(str(e).split())[:300]}") from None
        else:
            y = self._ask(x)
        if y.ndim != 2 or len(y) != len(x):
            raise RuntimeInputError(f"LiteRT {self.path.name} returned shape {list(y.shape)} for a batch of {len(x)}.")
        return {OUTPUT_NAME: y}

    def _ask(self, x: np.ndarray) -> np.ndarray:
        try:
            send_array(self.proc.stdin, x)
            status = self.proc.stdout.read(1)
            if status == b"K":
                return recv_array(self.proc.stdout)
            if status == b"E":
                error = json.loads(self.proc.stdout.readline()).get("error")
                raise RuntimeInputError(f"LiteRT could not run {self.path} on float32{list(x.shape)}: {error}")
        except (BrokenPipeError, ValueError, OSError):
            pass
        code = self.proc.poll()
        self._stop()
        self.is_active = False
        raise RuntimeInputError(f"LiteRT: the worker running {self.path} died (exit status {code}) on a batch of "
                                f"{len(x)}; the file may be damaged.")

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def deactivate_impl(self) -> None:
        self._stop()
        self.model = None


__all__ = ["LitertRunner", "read_sidecar", "check_tflite_file", "sidecar_path", "inprocess_available"]
