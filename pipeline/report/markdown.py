"""report.md: the report for people, rendered from report.json alone, one function per section.

:func:`render_markdown` is the sections of :data:`SECTIONS` in order; each takes the report and returns its lines,
so a section can be read, changed or tested on its own. The report must be complete (``recommended`` present:
:func:`pipeline.report.assemble.complete` fills it in for reports written before it existed); nothing here
recomputes what report.json already says. The HTML page (:mod:`pipeline.report.html`) is drawn from this text.
"""
from __future__ import annotations

from runtime.bench import METHOD, NOISY_SPREAD_PCT

from . import ladder, on_devices, recommend
from .figures import plotted
from pipeline import targets, variants


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _fmt_diff(v: dict) -> str:
    """max |logit diff|; null (the variant's logits were NaN/inf) is spelled out, never drawn as a number."""
    if v.get("max_abs_diff") is None:
        return f"NaN/inf logits ({v['nonfinite']} images)" if v.get("nonfinite") else "NaN/inf"
    return f"{v['max_abs_diff']:.2e}"


def _fmt_sqnr(db: float | None) -> str:
    return "-" if db is None else f"{db:.1f}"


def _basic(report: dict) -> bool:
    """Whether some row is a TensorRT-targeted INT8 file run with Q/DQ as written (footnote ¹)."""
    return any(v.get("ort_optimization") == "basic" for v in report["variants"])


def _header(report: dict) -> list[str]:
    """The title, the model, how it was trained and its test accuracy."""
    t = report["train"]
    return [
        f"# Report: {report['model']}",
        "",
        f"Model **{report['model']}**: {report.get('params', '?'):,} parameters, "
        f"{report.get('macs_per_image', 0) / 1e6:.2f} M MACs per image.",
        f"Trained {t['epochs']} epochs in {t['seconds']:.0f} s on {t.get('device', '?')}; kept epoch "
        f"{t.get('best_epoch', '?')} by validation accuracy {100 * t['val_accuracy']:.2f} % "
        f"(validation split of {t.get('val_images', '?')} images held out of the training set).",
        f"Test accuracy (10,000 images, reported only, never used for selection): **{100 * t['test_accuracy']:.2f} %**.",
        *_training_throughput(t),
        "",
    ]


def _training_throughput(t: dict) -> list[str]:
    """The training loop's cost, as the variants' table gives inference's (absent in older reports)."""
    tp = t.get("throughput")
    if not tp:
        return []
    world = t.get("world_size") or 1
    frac = tp.get("fraction_of_peak")
    return [f"Training throughput: {tp['images_per_s']:,.0f} images/s"
            + (f" over {world} DDP processes" if world > 1 else "")
            + f", {tp['gflops']:.2f} GFLOP/s"
            + (f" = {100 * frac:.1f} % of the measured CPU peak" if frac is not None else "")
            + f" (training counted as {tp.get('macs_factor', 3)} x the forward MACs per image: the forward and "
            "the backward's two products; validation passes excluded)."]


def _what_to_ship(report: dict) -> list[str]:
    """Per target, report.json's recommendation: the file, the variant, its figures and why; then the commands."""
    recs = on_devices.ship(report, report["recommended"] or {})  # a current device's measured rows win for its target
    small, big = recommend.batches(report["variants"])
    titles = {t.key: t.title for t in targets.DEPLOY}
    lines = ["## What to ship", "", *_untrusted(report),
             f"Per target, the fastest variant measured on it here (lowest p50 at batch {small}, the median over the "
             f"timing rounds; throughput at batch {big} shown too) whose logits are finite and whose accuracy keeps "
             "its tolerance or budget (a variant without one may lose none). It wins only when faster by more than "
             "the noise (the larger spread of the rounds); a variant within the noise ties, and the tie is broken by "
             "the smaller file, then the higher accuracy. Where a target is not measured here, the file to build from "
             "and the command that measures it on the device."
             + (" The TensorRT-targeted INT8 files run with Q/DQ as written (¹) are not CPU measurements."
                if _basic(report) else ""), "",
             f"| target | file | variant | measured here | p50 @{small} (ms) | spread | throughput @{big} (img/s) | "
             "accuracy | decided by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in recs.items():
        p50, thr, acc, sp = r.get("p50_ms"), r.get("throughput"), r.get("accuracy"), r.get("spread_pct")
        verdict = r.get("verdict") or {}
        lines.append("| " + " | ".join([
            titles.get(key, key), f"`{r['file']}`", f"`{r['variant']}`", "yes" if r["measured"] else "no",
            "-" if p50 is None else f"{p50:.3f}", "-" if sp is None else f"{sp:.1f} %",
            "-" if thr is None else f"{thr:,.0f}", "-" if acc is None else f"{100 * acc:.2f} %",
            verdict.get("sentence", "-").replace("|", "/")]) + " |")
    lines.append("")
    for key, r in recs.items():
        lines.append(f"- **{titles.get(key, key)}**: `{r['file']}`: {r['reason']}"
                     + (f" Measure on the device: `{r['command']}`." if r.get("command") else ""))
    drawn = [t for t in targets.DEPLOY if plotted(t, report["variants"], small)]
    if drawn:
        lines += ["", "Accuracy against latency, with the Pareto front (no other variant both faster and more "
                  "accurate): " + "; ".join(f"{t.title}: `{recommend.plot_name(t.key)}`" for t in drawn) + "."]
    return lines + [""]


def _untrusted(report: dict) -> list[str]:
    """A warning paragraph when the timing sessions say the figures are not to be trusted, and why."""
    timing = report.get("timing") or {}
    if timing.get("trusted", True):
        return []
    return ["**Timing figures not to be trusted**: " + "; ".join(timing.get("untrusted", [])) + ". The rounds' "
            "spread widens the noise a winner must beat, so a busy machine tends to give ties rather than a wrong winner, "
            "but rerun on a quiet machine before quoting a speed figure.", ""]


def _variants(report: dict) -> list[str]:
    """The variants' table (accuracy, parity, size, batch latency and throughput) and its footnotes."""
    small, big = recommend.batches(report["variants"])
    head = ["variant", "backend", "provider", "precision", "size", "accuracy", "delta (pp)", "flips",
            "agreement", "max abs diff", f"p50 @{small} (ms)", f"p99 @{small} (ms)", f"throughput @{big} (img/s)"]
    lines = ["## Variants", "",
             f"Accuracy over the full test set; agreement and max |logit diff| against `{variants.REFERENCE}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in report["variants"]:
        lat = v.get("latency", {})
        s, b = lat.get(small, {}), lat.get(big, {})
        lines.append("| " + " | ".join([
            f"`{v['name']}`", v["backend"], v["provider"] + ("¹" if v.get("ort_optimization") == "basic" else "")
            + ("²" if v.get("measured_in") else ""),
            v["precision"], _fmt_bytes(v.get("size_bytes")),
            f"{100 * v['accuracy']:.2f} %", f"{v.get('accuracy_delta', 0):+.2f}", str(len(v.get("flips", []))),
            f"{v['agreement']:.4f}", _fmt_diff(v),
            f"{s.get('p50_ms', float('nan')):.3f}", f"{s.get('p99_ms', float('nan')):.3f}",
            f"{b.get('throughput_per_s', float('nan')):,.0f}",
        ]) + " |")
    if _basic(report):
        lines += ["", "¹ TensorRT-targeted INT8 file run with onnxruntime's basic graph optimizations: Q/DQ executed as "
                  "written (what TensorRT computes), because onnxruntime's fused x86 int8 kernels saturate on CPUs "
                  "without VNNI. Its CPU latency is therefore not a deployment figure; use `onnx-int8-cpu` or "
                  "`onnx-int8-qat-cpu` on CPUs."]
    where = sorted({v["measured_in"] for v in report["variants"] if v.get("measured_in")})
    if where:
        lines += ["", "² Measured in " + "; ".join(where) + ": the page ran all 10,000 test images through the web "
                  "bundle's classifier.js (the JS normalization included) and timed single awaited runs with "
                  "performance.now(); the first and last batch sizes only. Figures from this host's browser, not a "
                  "phone's."]
    return lines


def _latency(report: dict) -> list[str]:
    """Every batch size's figures per variant, what one timed call spans, and the TensorRT engines' precisions."""
    lines = ["", "## Latency by batch size", "",
             "p50 and img/s: medians over the timing rounds; spread: (max - min) / median of the rounds' p50s; p90, "
             "p99, mean and CV over all timed calls.", "",
             "| variant | batch | p50 ms | spread | p90 ms | p99 ms | mean ms | CV | img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        for bsz, st in sorted(v.get("latency", {}).items(), key=lambda kv: int(kv[0])):
            sp = st.get("spread_pct")
            lines.append(f"| `{v['name']}` | {bsz} | {st['p50_ms']:.3f} | {'-' if sp is None else f'{sp:.1f} %'} | "
                         f"{st['p90_ms']:.3f} | {st['p99_ms']:.3f} | {st['mean_ms']:.3f} | {st['cv']:.2f} | "
                         f"{st['throughput_per_s']:,.0f} |")
    spans: dict[str, list[str]] = {}  # what one timed call includes, per variant (trtexec names H2D/compute/D2H apart)
    for v in report["variants"]:
        inc = next((st["includes"] for st in v.get("latency", {}).values() if st.get("includes")), None)
        if inc:
            spans.setdefault(inc, []).append(f"`{v['name']}`")
    if spans:
        lines += ["", "Each timed call spans: " + "; ".join(f"{', '.join(n)}: {inc}" for inc, n in spans.items()) + "."]
    built = [v for v in report["variants"] if (v.get("engine") or {}).get("layer_precisions")]
    if built:
        lines += ["", "TensorRT layers by precision, read from each built engine: " + "; ".join(
            f"`{v['name']}` {v['engine']['layer_precisions'].get('by_precision')}" for v in built) + "."]
    return lines


def _speed(report: dict) -> list[str]:
    """Speed against torch eager, and each INT8 row's against FP32 (naming the CPU's int8 features)."""
    small, big = recommend.batches(report["variants"])
    lines = []
    ratios = report.get("speedup_vs_torch")
    if ratios:
        lines += ["", "Speed relative to torch eager, measured in the same run: " + "; ".join(
            f"`{k}` {r['throughput_ratio']:.1f}x throughput at batch {big}, p50 {r['p50_ratio']:.1f}x lower at batch {small}"
            for k, r in ratios.items()) + "."]
    against = report.get("speedup_vs_onnx_fp32")
    if against:
        lines += ["", f"Speed relative to onnxruntime FP32 (`{variants.BASELINE}`), timed in the same interleaved rounds: "
                  + "; ".join(f"`{k}` {r['throughput_ratio']:.2f}x its throughput at batch {big}, "
                              f"{r['p50_ratio']:.2f}x its speed at batch {small} (p50)"
                              for k, r in against.items() if k != variants.REFERENCE) + "."]
    rows = [v for v in report["variants"] if v.get("vs_fp32")]
    if rows:
        flags = report["environment"].get("cpu_flags")
        flags = ", ".join(map(str, flags)) if isinstance(flags, list) else flags  # free-form, like all of environment
        where = f"{report['environment'].get('cpu', 'this CPU')}" + (f", {flags}" if flags else "")
        lines += ["", f"INT8 speed against FP32 on the same backend and provider ({where}): " + "; ".join(
            f"`{v['name']}` {v['vs_fp32']['throughput_ratio']:.2f}x FP32 throughput at batch {big}, "
            f"{v['vs_fp32']['p50_ratio']:.2f}x at batch {small} (p50)"
            + (" (Q/DQ as written, not a deployment figure)" if v.get("ort_optimization") == "basic" else "")
            for v in rows) + "."]
    return lines


def _budgets_and_skipped(report: dict) -> list[str]:
    """Each declared accuracy budget against the drop measured, and the variants not run here with the reason."""
    lines = []
    budgets = [(v["name"], v["accuracy_delta"], v["budget_pp"]) for v in report["variants"] if v.get("budget_pp") is not None]
    if budgets:
        lines += ["", f"Accuracy budgets (drop vs `{variants.REFERENCE}`, percentage points): " + "; ".join(
            f"`{n}` {d:+.2f} pp vs budget -{b:.2f} ({'within' if d >= -b - 1e-9 else 'OVER'})" for n, d, b in budgets) + "."]
    if report.get("skipped"):
        lines += ["", "Skipped variants:"] + [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]]
    return lines


def _quantization(report: dict) -> list[str]:
    """Per-layer SQNR against the FP32 model, then the INT8 sensitivity ranking (both absent without INT8 files)."""
    q = report.get("quantization")
    lines = []
    if q and q.get("variants"):
        names = list(q["variants"])
        lines += ["", "## Per-layer quantization error", "",
                  f"SQNR (dB) of each compute layer's output against the FP32 model, on {q['images']} images from the "
                  "training split; cumulative, so a sharp drop marks the layer that costs accuracy. "
                  "QAT also moves the weights, so its SQNR against the original FP32 model is lower by design.", "",
                  "| layer | op | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|---|" + "---|" * len(names)]
        first = q["variants"][names[0]]
        for i, row in enumerate(first):
            cells = [_fmt_sqnr(q["variants"][n][i]["sqnr_db"]) if i < len(q["variants"][n]) else "-" for n in names]
            lines.append(f"| {row['layer']} | {row['op']} | " + " | ".join(cells) + " |")
    if q and q.get("sensitivity"):
        lines += _sensitivity(q["sensitivity"])
    return lines


def _sensitivity(sens: dict) -> list[str]:
    """The INT8 sensitivity ranking (pipeline.measure.budget) and, under --int8-budget, the layers kept in FP32."""
    fp32, int8 = sens.get("fp32_accuracy"), sens.get("int8_accuracy")
    lines = ["", "## INT8 sensitivity per layer", "",
             f"Each layer of `{sens['variant']}` measured on {sens['images']:,} images of the validation split (never "
             "the test set) with only it left in FP32, and with only it quantized; accuracy, and the SQNR of the "
             "logits against the FP32 ONNX. Ranked " + sens["ranking"] + "."
             + (f" FP32 {100 * fp32:.2f} %, all layers INT8 {100 * int8:.2f} %." if None not in (fp32, int8) else ""),
             "", "| rank | layer (PyTorch) | ONNX nodes | op | only it FP32: acc | SQNR (dB) | recovered (pp) | "
             "only it INT8: acc | SQNR (dB) | lost (pp) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sens["layers"]:
        a, b = r["fp32_only"], r["int8_only"]
        lines.append(f"| {r['rank']} | `{r['module'] or '?'}` | " + ", ".join(f"`{n}`" for n in r["nodes"])
                     + f" | {r['op']} | {100 * a['accuracy']:.2f} % | {_fmt_sqnr(a['sqnr_db'])} | "
                     f"{r['recovered_pp']:+.2f} | {100 * b['accuracy']:.2f} % | {_fmt_sqnr(b['sqnr_db'])} | "
                     f"{r['alone_drop_pp']:+.2f} |")
    for name, f in sens.get("fallback", {}).items():
        head = (f"- `{name}`, `--int8-budget {f['budget_pp']:g}`: all layers INT8 lose {f['int8_drop_pp']:.2f} points "
                "of validation accuracy")
        if f.get("drop_pp") is None:
            lines.append(head + "; no mixed-precision file met the budget, so none was written.")
        elif not f["fp32_layers"]:
            lines.append(head + ", within the budget: every layer stays INT8.")
        else:
            lines.append(head + f"; keeping {', '.join(f'`{x}`' for x in f['fp32_layers'])} in FP32 brings that to "
                         f"{f['drop_pp']:.2f}. onnxruntime `nodes_to_exclude={f['onnxruntime_nodes_to_exclude']}`; "
                         f"TensorRT `--layerPrecisions={f['tensorrt_layer_precisions']}`; PyTorch modules "
                         f"{f['torch_modules']}.")
    return lines


def _timing(report: dict) -> list[str]:
    """How the latency figures were taken: rounds, the spread's definition, and each session's contention signals."""
    timing = report.get("timing")
    if not timing:
        return []
    lines = ["", "## Timing", "",
             f"{timing['method']}: {timing['rounds']} rounds, bursts of at most {timing['burst_calls']} calls or "
             f"{timing['burst_seconds']:g} s, after {timing['warmup_calls']} warm-up calls per variant and batch size. "
             f"Spread: {timing['spread']}; over {NOISY_SPREAD_PCT:g} % the figures are flagged.", "",
             "| timed in | variants | seconds | load (1 min) / cores | others' CPU | steal | verdict |",
             "|---|---|---|---|---|---|---|"]
    for ses in timing["sessions"]:
        load = ses.get("load_1min")
        lines.append("| " + " | ".join([
            ses["where"], ", ".join(f"`{n}`" for n in ses["variants"]), f"{ses['seconds']:.1f}",
            ("-" if load is None else f"{load:.2f}") + f" / {ses['cores']}",
            "-" if ses.get("others_cpu_pct") is None else f"{ses['others_cpu_pct']:.0f} %",
            "-" if ses.get("steal_pct") is None else f"{ses['steal_pct']:.1f} %",
            ("NOT to be trusted: " + "; ".join(ses["untrusted"])) if ses["untrusted"] else "quiet"]).replace("\n", " ")
                     + " |")
    return lines


def _ladder(report: dict) -> list[str]:
    """The accuracy ladders (:mod:`pipeline.report.ladder`)."""
    return [""] + ladder.markdown(report.get("ladder") or {})


def _environment(report: dict) -> list[str]:
    """The machine and versions, and how latency was timed."""
    return (["## Environment", ""] + [f"- {k}: {v}" for k, v in report["environment"].items()]
            + ["", f"Timing method: {METHOD}.", ""])


#: report.md, top to bottom
SECTIONS = (_header, _what_to_ship, on_devices.markdown, _variants, _latency, _speed, _budgets_and_skipped,
            _quantization, _timing, _ladder, _environment)


def render_markdown(report: dict) -> str:
    """report.md's text: each section of :data:`SECTIONS` in order, from a complete report."""
    return "\n".join(line for section in SECTIONS for line in section(report))
