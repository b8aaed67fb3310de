"""Every PNG the pipeline draws, with matplotlib's headless Agg backend.

Kept in one module so stages stay free of plotting code and matplotlib is
imported only when a figure is actually drawn.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from .layout import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def sample_grid(images, labels: Sequence[int], path: Path) -> Path:
    """A 3x3 grid of images (floats in 0..1, HxW) titled with their labels."""
    plt = _plt()
    fig, axes = plt.subplots(3, 3, figsize=(4.5, 4.8))
    for ax, img, label in zip(axes.flat, images, labels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"label {int(label)}", fontsize=9)
        ax.axis("off")
    fig.suptitle("MNIST training samples")
    fig.tight_layout()
    return _save(fig, path)


def training_curves(history: list[dict], path: Path, best_epoch: int) -> Path:
    """Loss and accuracy per epoch, train vs validation; the kept epoch is marked."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("cross-entropy loss"); ax1.legend()
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="validation")
    ax2.axvline(best_epoch, color="gray", linestyle="--", label=f"kept (epoch {best_epoch})")
    ax2.set_xlabel("epoch"); ax2.set_ylabel("accuracy (%)"); ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
