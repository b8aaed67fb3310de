"""ExecuTorch ``.pte`` (XNNPACK) behind the runtime's runner interface.

It lives in ``pipeline`` (not ``runtime``) because ExecuTorch's Python runtime (``executorch.runtime``) takes and
returns torch tensors, so it needs torch; ``runtime`` must never import torch. On a phone the same file runs from
the C++/Java/Kotlin runtime instead.

A ``.pte`` holds an upper bound for its batch axis (see :mod:`exporters.executorch`); :attr:`batch_range` is read
from the loaded program itself (not the sidecar, which could be from another file), and a larger batch is refused
here with a :class:`RuntimeInputError` naming the bound, before ExecuTorch would fail with a bare error code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.base import BaseRunner
from runtime.errors import BackendUnavailable, RuntimeInputError

INSTALL_HINT = "`pip install -e .[executorch]` (executorch==1.5.*)"


class ExecutorchRunner(BaseRunner):
    """Runs the ``forward`` method of a ``.pte`` with ExecuTorch's Python runtime on the CPU."""

    backend = "executorch"
    provider = "cpu"

    def __init__(self, path: str | Path, input_name: str = "input", output_name: str = "logits") -> None:
        super().__init__()
        self.path = Path(path)
        self.input_name, self.output_name = input_name, output_name
        self.name = f"executorch-xnnpack:{self.path.name}"
        self.method = None

    def activate_impl(self) -> None:
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise BackendUnavailable(f"ExecuTorch is not installed: {INSTALL_HINT}.") from None
        if not self.path.is_file() or self.path.stat().st_size == 0:
            raise RuntimeInputError(f"ExecuTorch: {self.path} is missing or empty.")
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
            meta = self.method.metadata
            if meta.num_inputs() != 1:
                raise ValueError(f"forward takes {meta.num_inputs()} inputs, not 1")
            self.batch_range = (1, int(meta.input_tensor_meta(0).sizes()[0]))
        except Exception as e:  # a foreign or damaged file: ExecuTorch raises RuntimeError with an error code
            self.method = None
            raise RuntimeInputError(f"ExecuTorch could not load {self.path}: {' '.join(str(e).split())[:300]}") from None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if set(feed) != {self.input_name}:
            raise RuntimeInputError(f"ExecuTorch {self.path.name} takes input '{self.input_name}', got {sorted(feed)}.")
        x = np.ascontiguousarray(feed[self.input_name])
        low, high = self.batch_range
        if x.ndim == 0 or not low <= x.shape[0] <= high:
            raise RuntimeInputError(
                f"ExecuTorch: {self.path.name} accepts batches of {low} to {high} images (the bound its export "
                f"fixed), got {x.shape[0] if x.ndim else 'a scalar'}; split the batch or re-export with a larger "
                "example batch.")
        try:
            outs = self.method.execute([torch.from_numpy(x)])
        except Exception as e:  # wrong dtype or shape: RuntimeError with an ExecuTorch error code
            raise RuntimeInputError(f"ExecuTorch could not run {self.path} on {x.dtype}{list(x.shape)}: "
                                    f"{' '.join(str(e).split())[:300]}") from None
        return {self.output_name: outs[0].numpy()}

    def deactivate_impl(self) -> None:
        self.method = None
        self.batch_range = None
