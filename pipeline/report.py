"""report.json (for programs) and report.md (for people), from one dict.

The JSON schema is a contract later stages and external checks read: see
the README's "Report" section. ``render_markdown`` derives everything from
the JSON, so ``pipeline report`` can rebuild the page from the file alone.
"""
from __future__ import annotations

from pathlib import Path

from runtime.bench import METHOD

from .layout import atomic_write, write_json


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def render_markdown(report: dict) -> str:
    t = report["train"]
    lines = [
        f"# Report: {report['model']}",
        "",
        f"Model **{report['model']}**: {report.get('params', '?'):,} parameters, "
        f"{report.get('macs_per_image', 0) / 1e6:.2f} M MACs per image.",
        f"Trained {t['epochs']} epochs in {t['seconds']:.0f} s on {t.get('device', '?')}; kept epoch "
        f"{t.get('best_epoch', '?')} by validation accuracy {100 * t['val_accuracy']:.2f} % "
        f"(validation split of {t.get('val_images', '?')} images held out of the training set).",
        f"Test accuracy (10,000 images, reported only, never used for selection): **{100 * t['test_accuracy']:.2f} %**.",
        "",
        "## Variants",
        "",
        "Accuracy over the full test set; agreement and max |logit diff| against `torch-fp32`.",
        "",
    ]
    batches = sorted({int(b) for v in report["variants"] for b in v.get("latency", {})})
    head = ["variant", "backend", "provider", "precision", "size", "accuracy", "delta (pp)", "flips",
            "agreement", "max abs diff"]
    small, big = (str(batches[0]), str(batches[-1])) if batches else ("1", "256")
    head += [f"p50 @{small} (ms)", f"p99 @{small} (ms)", f"throughput @{big} (img/s)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in report["variants"]:
        lat = v.get("latency", {})
        s, b = lat.get(small, {}), lat.get(big, {})
        lines.append("| " + " | ".join([
            f"`{v['name']}`", v["backend"], v["provider"], v["precision"], _fmt_bytes(v.get("size_bytes")),
            f"{100 * v['accuracy']:.2f} %", f"{v.get('accuracy_delta', 0):+.2f}", str(len(v.get("flips", []))),
            f"{v['agreement']:.4f}", f"{v['max_abs_diff']:.2e}",
            f"{s.get('p50_ms', float('nan')):.3f}", f"{s.get('p99_ms', float('nan')):.3f}",
            f"{b.get('throughput_per_s', float('nan')):,.0f}",
        ]) + " |")
    lines += ["", "## Latency by batch size", "", "| variant | batch | p50 ms | p90 ms | p99 ms | mean ms | CV | img/s |",
              "|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        for bsz, st in sorted(v.get("latency", {}).items(), key=lambda kv: int(kv[0])):
            lines.append(f"| `{v['name']}` | {bsz} | {st['p50_ms']:.3f} | {st['p90_ms']:.3f} | {st['p99_ms']:.3f} | "
                         f"{st['mean_ms']:.3f} | {st['cv']:.2f} | {st['throughput_per_s']:,.0f} |")
    ratios = report.get("speedup_vs_torch")
    if ratios:
        lines += ["", "Speed relative to torch eager, measured in the same run: " + "; ".join(
            f"`{k}` {r['throughput_ratio']:.1f}x throughput at batch {big}, p50 {r['p50_ratio']:.1f}x lower at batch {small}"
            for k, r in ratios.items()) + "."]
    budgets = [(v["name"], v["accuracy_delta"], v["budget_pp"]) for v in report["variants"] if v.get("budget_pp") is not None]
    if budgets:
        lines += ["", "Accuracy budgets (drop vs `torch-fp32`, percentage points): " + "; ".join(
            f"`{n}` {d:+.2f} pp vs budget -{b:.2f} ({'within' if d >= -b - 1e-9 else 'OVER'})" for n, d, b in budgets) + "."]
    if report.get("skipped"):
        lines += ["", "Skipped variants:"] + [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]]
    q = report.get("quantization")
    if q and q.get("variants"):
        names = list(q["variants"])
        lines += ["", "## Per-layer quantization error", "",
                  f"SQNR (dB) of each compute layer's output against the FP32 model, on {q['images']} images from the "
                  "training split; cumulative, so a sharp drop marks the layer that costs accuracy. "
                  "QAT also moves the weights, so its SQNR against the original FP32 model is lower by design.", "",
                  "| layer | op | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|---|" + "---|" * len(names)]
        first = q["variants"][names[0]]
        for i, row in enumerate(first):
            cells = [f"{q['variants'][n][i]['sqnr_db']:.1f}" if i < len(q["variants"][n]) else "-" for n in names]
            lines.append(f"| {row['layer']} | {row['op']} | " + " | ".join(cells) + " |")
    env = report["environment"]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", f"Timing method: {METHOD}.", ""]
    return "\n".join(lines)


def write(report: dict, json_path: Path, md_path: Path) -> None:
    write_json(json_path, report)
    atomic_write(md_path, render_markdown(report))
