"""Runs a ``.tflite`` file with ai-edge-litert's Interpreter: in this process, or as a worker process over a pipe.

Needs only numpy and ai-edge-litert (never torch, never the project): :class:`runtime.litert.LitertRunner` imports
:class:`TfliteModel` when ai-edge-litert is installed in its own environment, and otherwise starts this file by
path with the LiteRT venv's python (:mod:`runtime.litert_venv`) and talks to it over stdin/stdout:

- the worker first writes one JSON line: ``{"ok": true, "info": {...}}`` or ``{"ok": false, "error": "..."}``;
- then for each request (one array framed by :func:`send_array` on stdin) it answers ``b"K"`` + one framed
  array (the float32 logits), or ``b"E"`` + one JSON line with the error; end of stdin ends it.

Arrays are framed by hand (a JSON header line with dtype and shape, then the raw bytes), not with ``np.save``:
numpy's ``.npy`` reader uses ``np.fromfile`` on a real file object, which reads the descriptor directly and skips
what the buffered pipe already holds.

The worker moves file descriptor 1 aside before loading LiteRT, so a line the C++ runtime prints can never
corrupt the answers.

INT8 files made by PT2E have int8 input and output tensors: :meth:`TfliteModel.infer` quantizes the float input
with the input tensor's scale and zero point and dequantizes the output the same way, so every caller sees
float32 in and out. A file exported with a fixed batch (``nn.Flatten`` defeats LiteRT's dynamic batch) is
resized to the batch asked for when the interpreter can (and the output then has that batch), else run in
chunks of its own batch, the last one padded.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np


#: dtypes a frame may carry (a header naming another is refused, so a frame can never build objects)
DTYPES = ("float32", "int8", "uint8", "int32", "int64", "float64")


def send_array(stream, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    stream.write((json.dumps({"dtype": a.dtype.name, "shape": list(a.shape)}) + "\n").encode())
    stream.write(a.tobytes())
    stream.flush()


def recv_array(stream) -> np.ndarray:
    """One framed array; EOFError at a clean end of the stream, ValueError on a malformed frame."""
    line = stream.readline()
    if not line:
        raise EOFError
    header = json.loads(line)
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"bad array header {line[:200]!r}")
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ValueError("the stream ended inside an array")
        chunks.append(chunk)
        left -= len(chunk)
    return np.frombuffer(b"".join(chunks), dtype=dtype).reshape(shape)


def _interpreter_class():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


class TfliteModel:
    def __init__(self, path: str, threads: int = 0) -> None:
        Interpreter = _interpreter_class()
        self.path, self.threads = str(path), threads
        self.interp = Interpreter(model_path=self.path, num_threads=threads or None)
        self.interp.allocate_tensors()
        inputs, outputs = self.interp.get_input_details(), self.interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
        self.file_batch = int(inputs[0]["shape"][0])
        self.batch = self.file_batch
        self.resizable = True

    def _details(self):
        return self.interp.get_input_details()[0], self.interp.get_output_details()[0]

    def info(self) -> dict:
        i, o = self._details()

        def one(d):
            scale, zero = d.get("quantization", (0.0, 0))
            return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                    "shape_signature": [int(s) for s in d.get("shape_signature", d["shape"])],
                    "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero)}
        return {"input": one(i), "output": one(o), "file_batch": self.file_batch}

    def _resize(self, n: int) -> bool:
        if n == self.batch:
            return True
        if not self.resizable:
            return False
        i, _ = self._details()
        try:
            self.interp.resize_tensor_input(i["index"], [n, *i["shape"][1:]], strict=False)
            self.interp.allocate_tensors()
        except Exception:  # a reshape with a constant shape (Flatten at a fixed batch) cannot follow
            self.resizable = False
            self._back_to_file_batch()
            return False
        self.batch = n
        return True

    def _back_to_file_batch(self) -> None:
        i, _ = self._details()
        self.interp.resize_tensor_input(i["index"], [self.file_batch, *i["shape"][1:]], strict=False)
        self.interp.allocate_tensors()
        self.batch = self.file_batch

    def _run(self, x: np.ndarray) -> np.ndarray:
        i, o = self._details()
        if np.dtype(i["dtype"]) == np.int8:
            scale, zero = i["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        self.interp.set_tensor(i["index"], np.ascontiguousarray(x, dtype=i["dtype"]))
        self.interp.invoke()
        y = self.interp.get_tensor(o["index"])
        if np.dtype(o["dtype"]) == np.int8:
            scale, zero = o["quantization"]
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return np.array(y, dtype=np.float32, copy=True)

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        if self._resize(n):
            y = self._run(x)
            if len(y) == n:
                return y
            self.resizable = False  # it resized but the graph kept its own batch: chunk from now on
            self._back_to_file_batch()
        step, parts = self.file_batch, []
        for start in range(0, n, step):
            chunk = x[start:start + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            parts.append(self._run(chunk)[:step - pad])
        return np.concatenate(parts)


def _serve(path: str, threads: int) -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything LiteRT prints goes to stderr, never into the answers
    stdin = sys.stdin.buffer
    try:
        model = TfliteModel(path, threads)
    except Exception as e:
        out.write((json.dumps({"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
                   + "\n").encode())
        return 1
    out.write((json.dumps({"ok": True, "info": model.info()}) + "\n").encode())
    while True:
        try:
            x = recv_array(stdin)
        except (EOFError, ValueError):
            return 0
        try:
            y = model.infer(x)
        except Exception as e:
            out.write(b"E" + (json.dumps({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
                              + "\n").encode())
            continue
        out.write(b"K")
        send_array(out, y)


if __name__ == "__main__":  # python litert_worker.py MODEL.tflite [THREADS]
    sys.exit(_serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
