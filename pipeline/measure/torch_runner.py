"""PyTorch eager behind the runtime's runner interface, so torch is compared and timed like any backend.

It lives in ``pipeline`` (not ``runtime``) because ``runtime`` must never import torch.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from runtime.base import BaseRunner


class TorchRunner(BaseRunner):
    backend = "torch"

    def __init__(self, model, device: str = "cpu", input_name: str = "input", output_name: str = "logits"):
        super().__init__()
        self.model, self.device = model, device
        self.provider = "cuda" if str(device).startswith("cuda") else "cpu"
        self.input_name, self.output_name = input_name, output_name
        self.name = f"torch-{self.provider}"

    def activate_impl(self) -> None:
        self.model = self.model.to(self.device).eval()

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(feed[self.input_name])).to(self.device))
        return {self.output_name: out.float().cpu().numpy()}

    def synchronize(self) -> None:
        if self.provider == "cuda":
            import torch

            torch.cuda.synchronize()
