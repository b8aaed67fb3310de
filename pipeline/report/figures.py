"""Every PNG the pipeline draws, rendered by matplotlib's Agg renderer.

Kept in one module so stages stay free of plotting code and matplotlib is
imported only when a figure is actually drawn. Figures are plain
``matplotlib.figure.Figure`` objects, never pyplot's: pyplot's backend and open
figures are process-wide, and ``pipeline.run`` in a notebook must leave the
user's inline backend and figures alone (``matplotlib.use("Agg")`` would switch
them away).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from pipeline.store.paths import RunDir, atomic_write


def _figure(**kwargs):
    """A figure outside pyplot: nothing to close, no backend chosen (savefig renders PNG with Agg)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(path, buf.getvalue())


def sample_grid(images, labels: Sequence[int], path: Path) -> Path:
    """A 3x3 grid of images (floats in 0..1, HxW) titled with their labels."""
    fig = _figure(figsize=(4.5, 4.8))
    axes = fig.subplots(3, 3)
    for ax, img, label in zip(axes.flat, images, labels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"label {int(label)}", fontsize=9)
        ax.axis("off")
    fig.suptitle("MNIST training samples")
    fig.tight_layout()
    return _save(fig, path)


def training_curves(history: list[dict], path: Path, best_epoch: int) -> Path:
    """Loss and accuracy per epoch, train vs validation; the kept epoch is marked."""
    epochs = [h["epoch"] for h in history]
    fig = _figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
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
    fig = _figure(figsize=(8, 3.6))
    ax = fig.subplots()
    names = list(per_variant)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        rows = per_variant[name]
        xs = [r["layer"] + i * width for r in rows]
        ax.bar(xs, [float("nan") if r["sqnr_db"] is None else r["sqnr_db"] for r in rows], width=width,
               label=name)  # null (infinite or undefined SQNR) draws no bar
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


def sensitivity(result: dict, path: Path) -> Path:
    """Per-layer INT8 sensitivity (quantize/sensitivity.json), most sensitive on top: the validation accuracy a
    layer recovers when it alone stays FP32, and the accuracy it loses when it alone is quantized (points)."""
    rows = result["layers"]
    fig = _figure(figsize=(8, 1.2 + 0.38 * len(rows)))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    ax.barh([y + 0.2 for y in ys], [r["recovered_pp"] for r in rows], height=0.4,
            label="recovered with only this layer in FP32")
    ax.barh([y - 0.2 for y in ys], [r["alone_drop_pp"] for r in rows], height=0.4,
            label="lost with only this layer in INT8")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r['rank']}. {r['module'] or r['nodes'][0]} ({r['op']})" for r in rows], fontsize=8)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel(f"validation accuracy (points, {result['images']:,} images)")
    ax.set_title(f"INT8 sensitivity per layer ({result['variant']})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def latency_vs_batch(variants: list[dict], path: Path) -> Path:
    """Median latency per image (ms) against batch size, one line per variant (log-log)."""
    fig = _figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    for v in variants:
        lat = sorted(((int(b), s) for b, s in v.get("latency", {}).items()), key=lambda t: t[0])
        if not lat:
            continue
        bs = [b for b, _ in lat]
        ax1.plot(bs, [s["p50_ms"] for _, s in lat], "o-", label=v["name"])
        ax2.plot(bs, [s["throughput_per_s"] for _, s in lat], "o-", label=v["name"])
    for ax, label in ((ax1, "p50 latency per call (ms)"), (ax2, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_per_variant(variants: list[dict], path: Path) -> Path:
    """Test accuracy (%) of each variant, zoomed to where the differences are."""
    names = [v["name"] for v in variants]
    accs = [100 * v["accuracy"] for v in variants]
    fig = _figure(figsize=(8, 3.4))
    ax = fig.subplots()
    bars = ax.bar(names, accs, color="#4c78a8")
    for bar, a in zip(bars, accs):
        ax.text(bar.get_x() + bar.get_width() / 2, a, f"{a:.2f}", ha="center", va="bottom", fontsize=8)
    lo = min(accs) if accs else 0
    ax.set_ylim(max(0, lo - 0.5), min(100, max(accs, default=100) + 0.2))
    ax.set_ylabel("test accuracy (%), 10,000 images")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Confusion matrix (rows: true label, columns: predicted), counts annotated off the diagonal."""
    import numpy as np

    m = np.asarray(matrix)
    fig = _figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    im = ax.imshow(np.log1p(m), cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_latency(points: list[tuple[str, float, float]], front: list[str], qualifying: set[str],
                        chosen: str | None, batch: str, title: str, path: Path) -> Path:
    """Test accuracy (%) against p50 latency (ms, at ``batch``) of one target's variants, one point each.

    ``front`` (names, by latency) is the Pareto front, joined by a step line; variants outside ``qualifying``
    (over budget, NaN, parity broken) are hollow; ``chosen``, the recommendation, is ringed."""
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    by_name = {n: (x, y) for n, x, y in points}
    for name, x, y in points:
        ok = name in qualifying
        ax.plot([x], [y], "o", markersize=7, color="#4c78a8", markerfacecolor="#4c78a8" if ok else "none",
                label=None)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if front:
        ax.step([by_name[n][0] for n in front], [by_name[n][1] for n in front], "--", where="post", color="#e45756",
                label="Pareto front")
    if chosen in by_name:
        ax.plot(*by_name[chosen], "o", markersize=15, markerfacecolor="none", markeredgecolor="#54a24b",
                markeredgewidth=2, label=f"recommended: {chosen}")
    ax.plot([], [], "o", color="#4c78a8", markerfacecolor="none", label="off budget or tolerance, or not finite")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {batch} (ms, log scale)")
    ax.set_ylabel("test accuracy (%), 10,000 images")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- the report's figures, from report.json alone

def plotted(target, rows: list[dict], small: str) -> list[dict]:
    """The rows drawn in a target's accuracy-versus-latency figure: its measurements timed at the small batch."""
    from . import recommend

    return [r for r in rows if target.measures(r) and recommend.figures(r, small, small)[0] is not None]


def draw_report(report: dict, run: RunDir) -> dict[str, Path]:
    """Draw every figure of a complete report (``recommended`` present) from the JSON alone; return title -> PNG
    path. The accuracy-versus-latency figures mark report.json's recommendation, never one recomputed here."""
    from pipeline import targets

    from . import recommend

    figs = {}
    rows = report["variants"]
    figs["Latency and throughput by batch size"] = latency_vs_batch(rows, run.report_figure("latency"))
    figs["Test accuracy per variant"] = accuracy_per_variant(rows, run.report_figure("accuracy"))
    recs = report["recommended"] or {}
    small, _ = recommend.batches(rows)
    for t in targets.DEPLOY:
        measured = plotted(t, rows, small)
        if not measured:
            continue
        points = [(r["name"], recommend.figures(r, small, small)[0], 100 * r["accuracy"]) for r in measured]
        chosen = recs.get(t.key, {})
        figs[f"Accuracy against latency, {t.title}"] = accuracy_vs_latency(
            points, recommend.pareto(points), {r["name"] for r in measured if recommend.disqualified(r) is None},
            chosen.get("variant") if chosen.get("measured") else None, small, t.title,
            run.report_figure(recommend.pareto_figure(t.key)))
    conf = report.get("confusion")
    if conf:
        figs[f"Confusion matrix of the CPU recommendation ({conf['variant']})"] = confusion(
            conf["matrix"], conf["classes"], f"{conf['variant']} on 10,000 test images", run.report_figure("confusion"))
    hist = report["train"].get("history")
    if hist:
        figs["Training curves"] = training_curves(hist, run.report_figure("curves"), report["train"].get("best_epoch") or 0)
    q = report.get("quantization")
    if q and q.get("variants"):
        figs["Per-layer quantization error (SQNR vs FP32)"] = sqnr(q["variants"], run.report_figure("sqnr"))
    if q and (q.get("sensitivity") or {}).get("layers"):
        figs["INT8 sensitivity per layer (validation accuracy)"] = sensitivity(q["sensitivity"],
                                                                               run.report_figure("sensitivity"))
    return figs
