"""Stage ``data``: load MNIST (offline IDX files via torchvision), split, and record what was loaded."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import stamp
from pipeline.store.paths import write_json
from .context import Context

log = logging.getLogger(__name__)


def key(ctx: Context) -> dict:
    return {k: v for k, v in stamp(ctx.cfg.data).items() if k != "root"}


def run(ctx: Context) -> list[Path]:
    from pipeline.report import figures as plots
    from pipeline.dataset import CLASSES, RAW_FILES

    s = ctx.splits
    summary = {
        "source": "torchvision.datasets.MNIST (LeCun & Cortes, CC BY-SA 3.0)",
        "raw_md5": {name: md5 for name, (_, md5) in RAW_FILES.items()},
        "train_images": len(s.train_y), "val_images": len(s.val_y), "test_images": len(s.test_y),
        "split_seed": ctx.cfg.data.split_seed, "mean": s.mean, "std": s.std, "classes": CLASSES,
    }
    log.info("data: %d train / %d validation / %d test images; mean %.4f std %.4f (from the training split)",
             len(s.train_y), len(s.val_y), len(s.test_y), s.mean, s.std)
    imgs = (s.train_x[:9, 0] * s.std + s.mean).numpy()
    return [write_json(ctx.rd.data_summary, summary),
            plots.sample_grid(imgs, s.train_y[:9].tolist(), ctx.rd.samples_png)]
