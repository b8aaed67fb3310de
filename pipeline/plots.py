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


def sqnr(per_variant: dict[str, list[dict]], path: Path) -> Path:
    """Per-layer SQNR (dB) of each INT8 variant against FP32; lower bars lose more accuracy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(per_variant)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        rows = per_variant[name]
        xs = [r["layer"] + i * width for r in rows]
        ax.bar(xs, [r["sqnr_db"] for r in rows], width=width, label=name)
    if names:
        rows = per_variant[names[0]]
        ax.set_xticks([r["layer"] + 0.4 - width / 2 for r in rows])
        ax.set_xticklabels([f"{r['layer']}:{r['op']}" for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_title("Per-layer quantization error (cumulative; higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
