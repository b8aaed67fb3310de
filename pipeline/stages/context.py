"""Per-run state the stages share: the config, the artifact layout, lazily loaded data."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import PipelineError
from pipeline.store.paths import RunDir, sha256_file


class Context:
    """Per-run state shared by the stages: config, layout, lazily loaded data."""

    def __init__(self, cfg: RunConfig, progress=None, group=None):
        self.cfg = cfg
        self.rd = RunDir.for_model(cfg.artifacts, cfg.model)
        self.progress = progress
        self.group = group  # rank 0's pipeline.training.distributed.Group in a DDP run (the train stage trains with it)
        self._splits = None

    @property
    def splits(self):
        if self._splits is None:
            from pipeline.dataset import load_splits

            self._splits = load_splits(self.cfg.data)
        return self._splits

    def sha(self, path: Path) -> str:
        if not path.is_file():
            raise PipelineError(f"{path} is missing; rerun the stage that writes it (or use --force).")
        return sha256_file(path)
