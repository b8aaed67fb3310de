"""The report: assembled from what the validate stage measured, then written for programs and people.

:func:`assemble` builds one dict; :func:`write_all` writes it as report.json (checked against the contract
in :mod:`pipeline.schema` first), report.md, a self-contained report.html and the figures. The JSON is a
contract later stages and external checks read (see docs/report.md, "Report contract"). The markdown, HTML
and figures derive everything from the JSON, so ``pipeline report`` can rebuild them from the file alone.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from runtime.bench import METHOD, NOISY_SPREAD_PCT, ROUNDS_METHOD, SPREAD

from . import ladder, recommend, variants
from .devices import report as device_report
from .layout import atomic_write, strict_json

if TYPE_CHECKING:
    from .config import RunConfig


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


def _recommended(report: dict) -> dict:
    """report.json's per-target recommendation; recomputed from the rows for reports written before it existed."""
    rec = report.get("recommended")
    return recommend.recommend(report) if rec is None else rec


def _plotted(target, rows: list[dict], small: str) -> list[dict]:
    """The rows drawn in a target's accuracy-versus-latency figure: its measurements timed at the small batch."""
    return [r for r in rows if target.measures(r) and recommend.figures(r, small, small)[0] is not None]


def _what_to_ship(report: dict) -> list[str]:
    """The "What to ship" section: per target, the file, the variant, its figures and why; then the commands."""
    recs = device_report.ship(report, _recommended(report))  # a device's measured rows win for its target
    small, big = recommend.batches(report["variants"])
    titles = {t.key: t.title for t in recommend.TARGETS}
    lines = ["## What to ship", "", *_untrusted(report),
             f"Per target, the fastest variant measured on it here (lowest p50 at batch {small}, the median over the "
             f"timing rounds; throughput at batch {big} shown too) whose logits are finite and whose accuracy keeps "
             "its tolerance or budget (a variant without one may lose none). It wins only when faster by more than "
             "the noise (the larger spread of the rounds); a variant within the noise ties, and the tie is broken by "
             "the smaller file, then the higher accuracy. Where a target is not measured here, the file to build from "
             "and the command that measures it on the device."
             + (" The TensorRT-targeted INT8 files run with Q/DQ as written (¹) are not CPU measurements."
                if any(v.get("ort_optimization") == "basic" for v in report["variants"]) else ""), "",
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
    plotted = [t for t in recommend.TARGETS if _plotted(t, report["variants"], small)]
    if plotted:
        lines += ["", "Accuracy against latency, with the Pareto front (no other variant both faster and more "
                  "accurate): " + "; ".join(f"{t.title}: `{recommend.plot_name(t.key)}`" for t in plotted) + "."]
    return lines + [""]


def _untrusted(report: dict) -> list[str]:
    """A warning paragraph when the timing sessions say the figures are not to be trusted, and why."""
    timing = report.get("timing") or {}
    if timing.get("trusted", True):
        return []
    return ["**Timing figures not to be trusted**: " + "; ".join(timing.get("untrusted", [])) + ". The rounds' "
            "spread widens the noise a winner must beat, so a busy machine tends to give ties rather than a wrong winner, "
            "but rerun on a quiet machine before quoting a speed figure.", ""]


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


def _sensitivity(sens: dict) -> list[str]:
    """The INT8 sensitivity ranking (pipeline.sensitivity) and, under --int8-budget, the layers kept in FP32."""
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
        *_training_throughput(t),
        "",
        *_what_to_ship(report),
        *device_report.markdown(report),
        "## Variants",
        "",
        f"Accuracy over the full test set; agreement and max |logit diff| against `{variants.REFERENCE}`.",
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
            f"`{v['name']}`", v["backend"], v["provider"] + ("¹" if v.get("ort_optimization") == "basic" else "")
            + ("²" if v.get("measured_in") else ""),
            v["precision"], _fmt_bytes(v.get("size_bytes")),
            f"{100 * v['accuracy']:.2f} %", f"{v.get('accuracy_delta', 0):+.2f}", str(len(v.get("flips", []))),
            f"{v['agreement']:.4f}", _fmt_diff(v),
            f"{s.get('p50_ms', float('nan')):.3f}", f"{s.get('p99_ms', float('nan')):.3f}",
            f"{b.get('throughput_per_s', float('nan')):,.0f}",
        ]) + " |")
    if any(v.get("ort_optimization") == "basic" for v in report["variants"]):
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
    lines += ["", "## Latency by batch size", "",
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
    ratios = report.get("speedup_vs_torch")
    if ratios:
        lines += ["", "Speed relative to torch eager, measured in the same run: " + "; ".join(
            f"`{k}` {r['throughput_ratio']:.1f}x throughput at batch {big}, p50 {r['p50_ratio']:.1f}x lower at batch {small}"
            for k, r in ratios.items()) + "."]
    lines += _int8_speed(report, small, big)
    budgets = [(v["name"], v["accuracy_delta"], v["budget_pp"]) for v in report["variants"] if v.get("budget_pp") is not None]
    if budgets:
        lines += ["", f"Accuracy budgets (drop vs `{variants.REFERENCE}`, percentage points): " + "; ".join(
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
            cells = [_fmt_sqnr(q["variants"][n][i]["sqnr_db"]) if i < len(q["variants"][n]) else "-" for n in names]
            lines.append(f"| {row['layer']} | {row['op']} | " + " | ".join(cells) + " |")
    if q and q.get("sensitivity"):
        lines += _sensitivity(q["sensitivity"])
    lines += _timing(report)
    lines += [""] + ladder.markdown(report.get("ladder") or {})
    env = report["environment"]
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", f"Timing method: {METHOD}.", ""]
    return "\n".join(lines)


def write(report: dict, json_path: Path, md_path: Path) -> None:
    """Write report.json, after checking that what is about to be written honours the report contract.

    The check runs on the strict-JSON text itself, so it sees exactly what a reader will; a report the
    pipeline builds that fails it is our bug, so it raises :class:`RuntimeError` (with a traceback),
    not a user error, and nothing is written.
    """
    from .schema import SchemaError, check_report, strict_loads

    text = strict_json(report)
    try:
        check_report(strict_loads(text), "the report about to be written")
    except SchemaError as e:
        raise RuntimeError(f"bug: {e}") from None
    atomic_write(json_path, text)
    atomic_write(md_path, render_markdown(report))


def assemble(cfg: RunConfig, ckpt: dict, rows: list[dict], skipped: list[dict], logits: dict, labels, *,
             params: int, macs: int, peak_gflops: float, environment: dict, history: list | None,
             quantization: dict | None, qat_torch: dict | None = None, timing: dict | None = None) -> dict:
    """The report dict (docs/report.md, "Report contract") from what the validate stage measured.

    ``rows`` are the variants' figures (the reference first), ``logits`` each run variant's test-set logits
    (name -> (N, 10)), ``timing`` how they were timed (:func:`timing_record`), ``labels`` the test labels; ``ckpt`` is the loaded checkpoint (training summary,
    config, class names). ``peak_gflops`` is the CPU's measured float32 peak (GFLOP/s) and ``environment``
    the machine and versions; ``history`` and ``quantization`` are the training curves and per-layer SQNR
    (None when absent); ``qat_torch`` the QAT model's accuracy before export (the accuracy ladder's simulated
    rung, :mod:`pipeline.ladder`). Adds to each INT8 row its speed against the FP32 row of its backend and
    provider (``vs_fp32``), to each row its efficiency (GFLOP/s at the largest timed batch, and that as a
    fraction of the peak); adds speed ratios against the reference, the per-target recommendation
    (:mod:`pipeline.recommend`) and the CPU recommendation's confusion matrix. Measures nothing and writes nothing.
    """
    import numpy as np

    from . import efficiency

    batches = cfg.validate.batches
    big, small = str(batches[-1]), str(batches[0])
    for row in rows:
        row["efficiency"] = efficiency.achieved(macs, row["latency"][big]["throughput_per_s"], peak_gflops)
    ref = next(r for r in rows if r["name"] == variants.REFERENCE)
    speed = {r["name"]: _ratios(r, ref, small, big) for r in rows if r is not ref}
    for row in rows:
        fp32 = _fp32_of(row, rows)
        if row["precision"] == "int8" and fp32 is not None:
            row["vs_fp32"] = {"against": fp32["name"], **_ratios(row, fp32, small, big)}
    summary = ckpt.get("summary", {})
    rep = {
        "model": cfg.model,
        "params": params,
        "macs_per_image": macs,
        "cpu_peak_gflops": round(peak_gflops, 1),
        "cpu_peak_method": efficiency.PEAK_METHOD,
        "train": {"epochs": summary.get("epochs"), "seconds": summary.get("seconds"),
                  "val_accuracy": summary.get("val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
                  "best_epoch": summary.get("best_epoch"), "device": summary.get("device"),
                  "train_images": summary.get("train_images"), "val_images": summary.get("val_images"),
                  "world_size": summary.get("world_size", 1), "throughput": summary.get("throughput"),
                  "config": ckpt["train_config"], "history": history},
        "variants": rows,
        "speedup_vs_torch": speed,
        "skipped": skipped,
        "quantization": quantization,
        "ladder": ladder.build(rows, skipped, qat_torch),
        "quick": cfg.quick,
        "environment": environment,
        "timing": timing,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rep["recommended"] = recommend.recommend(rep)
    # the confusion matrix is the CPU recommendation's (measured on this CPU: its logits exist); the reference
    # stands in if the CPU pick is a file to build elsewhere
    chosen = rep["recommended"]["cpu"]["variant"]
    chosen = chosen if chosen in logits else variants.REFERENCE
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (labels, logits[chosen].argmax(1)), 1)
    rep["confusion"] = {"variant": chosen, "classes": ckpt["classes"], "matrix": matrix.tolist()}
    return rep


def timing_record(cfg, sessions: list[dict]) -> dict:
    """report.json's ``timing``: the rounds' settings (``cfg``, a :class:`~pipeline.config.ValidateConfig`), the
    spread's definition, every timing session (:func:`pipeline.validate.timing_session`) and whether to trust them."""
    why = [f"{s['where']}: {reason}" for s in sessions for reason in s["untrusted"]]
    return {"method": ROUNDS_METHOD, "spread": SPREAD, "rounds": cfg.rounds, "burst_calls": cfg.iterations,
            "burst_seconds": cfg.max_seconds, "warmup_calls": cfg.warmup, "sessions": sessions, "trusted": not why,
            "untrusted": why}


def _ratios(row: dict, base: dict, small: str, big: str) -> dict:
    """How many times ``base``'s throughput (at ``big``) and how many times lower than its p50 (at ``small``)."""
    return {"throughput_ratio": row["latency"][big]["throughput_per_s"] / base["latency"][big]["throughput_per_s"],
            "p50_ratio": base["latency"][small]["p50_ms"] / row["latency"][small]["p50_ms"]}


def _fp32_of(row: dict, rows: list[dict]) -> dict | None:
    """The FP32 row an INT8 row is timed against: same backend and provider (onnx-fp32 for onnxruntime CPU)."""
    return next((r for r in rows if r["precision"] == "fp32" and r["backend"] == row["backend"]
                 and r["provider"] == row["provider"]), None)


def _int8_speed(report: dict, small: str, big: str) -> list[str]:
    """The sentence giving each INT8 row's speed against FP32, naming the CPU's int8 features."""
    rows = [v for v in report["variants"] if v.get("vs_fp32")]
    if not rows:
        return []
    flags = report["environment"].get("cpu_flags")
    flags = ", ".join(map(str, flags)) if isinstance(flags, list) else flags  # free-form, like all of environment
    where = f"{report['environment'].get('cpu', 'this CPU')}" + (f", {flags}" if flags else "")
    return ["", f"INT8 speed against FP32 on the same backend and provider ({where}): " + "; ".join(
        f"`{v['name']}` {v['vs_fp32']['throughput_ratio']:.2f}x FP32 throughput at batch {big}, "
        f"{v['vs_fp32']['p50_ratio']:.2f}x at batch {small} (p50)"
        + (" (Q/DQ as written, not a deployment figure)" if v.get("ort_optimization") == "basic" else "")
        for v in rows) + "."]


def figures(report: dict, folder: Path) -> dict[str, Path]:
    """Draw every figure of the report from the JSON alone; return title -> PNG path."""
    from . import plots

    figs = {}
    rows = report["variants"]
    figs["Latency and throughput by batch size"] = plots.latency_vs_batch(rows, folder / "latency.png")
    figs["Test accuracy per variant"] = plots.accuracy_per_variant(rows, folder / "accuracy.png")
    recs = _recommended(report)
    small, _ = recommend.batches(rows)
    for t in recommend.TARGETS:
        measured = _plotted(t, rows, small)
        if not measured:
            continue
        points = [(r["name"], recommend.figures(r, small, small)[0], 100 * r["accuracy"]) for r in measured]
        chosen = recs.get(t.key, {})
        figs[f"Accuracy against latency, {t.title}"] = plots.accuracy_vs_latency(
            points, recommend.pareto(points), {r["name"] for r in measured if recommend.disqualified(r) is None},
            chosen.get("variant") if chosen.get("measured") else None, small, t.title,
            folder / PurePath(recommend.plot_name(t.key)).name)
    conf = report.get("confusion")
    if conf:
        figs[f"Confusion matrix of the CPU recommendation ({conf['variant']})"] = plots.confusion(
            conf["matrix"], conf["classes"], f"{conf['variant']} on 10,000 test images", folder / "confusion.png")
    hist = report["train"].get("history")
    if hist:
        figs["Training curves"] = plots.training_curves(hist, folder / "curves.png", report["train"].get("best_epoch") or 0)
    q = report.get("quantization")
    if q and q.get("variants"):
        figs["Per-layer quantization error (SQNR vs FP32)"] = plots.sqnr(q["variants"], folder / "sqnr.png")
    if q and (q.get("sensitivity") or {}).get("layers"):
        figs["INT8 sensitivity per layer (validation accuracy)"] = plots.sensitivity(q["sensitivity"],
                                                                                     folder / "sensitivity.png")
    return figs


def render_html(report: dict, figs: dict[str, Path]) -> str:
    """A self-contained page (figures inlined as base64 PNG) with the markdown's tables as HTML."""
    import base64
    import html

    md = render_markdown(report)
    body, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:]]
            body.append("\n".join(out + ["</table>"]))
            table.clear()

    def _inline(text):
        t = html.escape(text)
        import re

        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    body.append("<h2>Figures</h2>")
    for title, path in figs.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(f'<figure><figcaption>{html.escape(title)}</figcaption>'
                    f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f3f7}"
             "td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:0 3px}"
             "figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}"
             "figcaption{font-weight:600;margin-bottom:.4em}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Report: {html.escape(report['model'])}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_all(report: dict, run_dir: Path) -> list[Path]:
    """report.json, report.md, report.html and the figures under report/; returns the paths written."""
    json_path, md_path, html_path = run_dir / "report.json", run_dir / "report.md", run_dir / "report.html"
    report = device_report.attach(report, run_dir)  # the run's device recordings (pipeline.devices)
    write(report, json_path, md_path)
    figs = figures(report, run_dir / "report")
    atomic_write(html_path, render_html(report, figs))
    return [json_path, md_path, html_path, *figs.values()]
