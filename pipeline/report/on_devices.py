"""The report's "Measured on devices" section and the device rows "What to ship" uses.

report.json gains ``devices``: ``{"measurements": [...], "recommended": {target: {...}}}`` (each measurement as
recorded, with ``stale``), attached by :func:`attach` whenever the report is written (the validate stage,
``pipeline report``, a new recording through :func:`pipeline.devices.refresh.refresh`). The markdown (and so the HTML, rendered from it)
gets one table per device (:func:`markdown`); :func:`ship` replaces a target's "What to ship" entry by the fastest
variant a current (not stale) device measured for it that equals the report, naming the device and the date.
Stale measurements are shown, marked, and never used.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import targets
from pipeline.store.devices import load_all


def attach(report: dict, run_dir: Path) -> dict:
    """``report`` with ``devices`` from the run's recordings (a copy; a folder without devices/ keeps what the
    report already says, so a copied report.json renders as it was)."""
    from pipeline.store.devices import problems
    from pipeline.store.paths import RunDir

    if not RunDir(Path(run_dir)).devices.is_dir():  # a copied report.json: its own measurements, checked again

        kept = [m for m in (report.get("devices") or {}).get("measurements") or []
                if isinstance(m, dict) and not problems({k: v for k, v in m.items() if k != "stale"})]
        measurements = [{**m, "stale": m.get("stale") is True} for m in kept]
    else:
        measurements = load_all(run_dir)
    out = {k: v for k, v in report.items() if k != "devices"}
    if measurements:
        out["devices"] = {"measurements": measurements, "recommended": recommended(report, measurements)}
    return out


def _fresh_for(measurements: list[dict], key: str) -> list[dict]:
    ms = [m for m in measurements if not m.get("stale") and targets.DEVICE.get(m.get("target")) == key]
    return sorted(ms, key=lambda m: m["measured_at"], reverse=True)


def recommended(report: dict, measurements: list[dict]) -> dict[str, dict]:
    """Per "What to ship" target, the entry from the most recent current device measurement that has a variant
    equal to the report (accuracy, flips, parity); the fastest such variant at the smallest timed batch wins,
    ties within the noise broken as in the report (:func:`runtime.bench.pick`)."""
    from runtime.bench import Candidate, pick

    rows = {r["name"]: r for r in report.get("variants", [])}
    out = {}
    for key in sorted(set(targets.DEVICE.values())):
        for m in _fresh_for(measurements, key):
            ok = {k: v for k, v in m["variants"].items() if v.get("equals_report") and v.get("latency_ms")}
            if not ok:
                continue
            small = str(min(int(b) for v in ok.values() for b in v["latency_ms"]))
            big = str(max(int(b) for v in ok.values() for b in v.get("throughput_ips", {}) or {small: 0}))
            timed = {k: v for k, v in ok.items() if small in v["latency_ms"]}
            if not timed:
                continue
            verdict = pick([Candidate(k, v["latency_ms"][small]["p50"], v["latency_ms"][small].get("spread_pct"),
                                      v.get("size_bytes"), v["accuracy"],
                                      tuple(v["latency_ms"][small].get("round_p50") or ())) for k, v in timed.items()])
            best = timed[verdict.winner]
            variant = best.get("variant", verdict.winner)
            file = _file_of(variant, rows)
            thr = (best.get("throughput_ips") or {}).get(big)
            date = m["measured_at"][:10]
            out[key] = {
                "variant": variant, "file": file, "measured": True, "device": m["name"], "measured_at": m["measured_at"],
                "backend": best.get("backend"), "p50_ms": best["latency_ms"][small]["p50"], "p50_batch": int(small),
                "throughput": thr, "throughput_batch": int(big) if thr is not None else None,
                "accuracy": best["accuracy"], "spread_pct": best["latency_ms"][small].get("spread_pct"),
                "verdict": verdict.as_dict(),
                "reason": (f"measured on the device {m['name']} ({m['source']}, {date}): fastest at batch {small} of "
                           f"its {len(timed)} variant(s) that equal the report ({verdict.sentence()}), p50 "
                           f"{best['latency_ms'][small]['p50']:.3f} ms" + (f", {thr:,.0f} images/s at batch {big}"
                                                                            if thr is not None else "") + "."),
            }
            break
    return out


def _file_of(variant: str, rows: dict) -> str:
    from . import recommend

    row = rows.get(variant)
    return recommend.file_of(row) if row is not None else variant


def ship(report: dict, recs: dict) -> dict:
    """"What to ship" entries with each target a current device measured replaced by that device's pick."""
    dev = (report.get("devices") or {}).get("recommended") or {}
    return {k: ({**r, **dev[k], "command": r.get("command")} if k in dev else r) for k, r in recs.items()}


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(report: dict) -> list[str]:
    """The "Measured on devices" section: one table per device (empty when none was measured)."""
    ms = (report.get("devices") or {}).get("measurements") or []
    if not ms:
        return []
    lines = ["## Measured on devices", "",
             "Figures the bundle's `bench.py` (or the demo page, for a browser) measured on the device itself and "
             "brought home with `pipeline device run` / `pipeline device add` (docs/devices.md). \"equals report\" "
             "is judged here from the report's rows: the same accuracy and flipped test images, and parity within "
             "the variant's tolerance (TensorRT engines: accuracy within 0.1 pp). A stale measurement was taken "
             "from models this run no longer has: shown, never used.", ""]
    for m in ms:
        d = m.get("device") or {}
        title = (f"### {_cell(m['name'])} ({m['target']}, {m['source']}, {m['measured_at']})"
                 + (" - STALE: measured another model; not used" if m.get("stale") else ""))
        facts = [f"{k}: {_cell(d[k])}" for k in ("host", "os", "cpu", "gpu", "jetpack", "user_agent") if d.get(k)]
        if d.get("runtimes"):
            facts.append("runtimes: " + ", ".join(f"{k} {v}" for k, v in sorted(d["runtimes"].items())))
        for k in ("nvpmodel", "jetson_clocks"):
            if d.get(k):
                facts.append(f"{k}: {_cell(str(d[k]).splitlines()[0][:120])}")
        batches = sorted({int(b) for v in m["variants"].values() for b in v.get("latency_ms", {})}) or [1]
        small, big = str(batches[0]), str(batches[-1])
        lines += [title, "", "; ".join(facts) + ".", "",
                  f"| variant | backend | accuracy | agreement | flips | max abs diff | p50 @{small} (ms) | "
                  f"p90 @{small} (ms) | p99 @{small} (ms) | throughput @{big} (img/s) | equals report |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in m["variants"].items():
            s = (v.get("latency_ms") or {}).get(small) or {}
            lines.append("| " + " | ".join([
                f"`{_cell(name)}`", _cell(v.get("backend", "-")), f"{100 * v['accuracy']:.2f} %",
                f"{v['agreement']:.4f}", str(len(v["flipped"])), _fmt(v.get("max_abs_logit_diff"), ".2e"),
                _fmt(s.get("p50"), ".3f"), _fmt(s.get("p90"), ".3f"), _fmt(s.get("p99"), ".3f"),
                _fmt((v.get("throughput_ips") or {}).get(big), ",.0f"),
                "yes" if v["equals_report"] else "NO"]) + " |")
        for name, v in m["variants"].items():
            if not v["equals_report"]:
                lines.append("")
                lines.append(f"`{_cell(name)}` does not equal the report on this device: "
                             + _cell("; ".join(v.get("failed_checks") or ["see its flipped images"]))
                             + f". Flipped test images: {', '.join(map(str, v['flipped'][:30]))}"
                             + (", ..." if len(v["flipped"]) > 30 else "") + ".")
        if m.get("timing_untrusted"):
            lines += ["", "Timing on this device not to be trusted: " + _cell("; ".join(m["timing_untrusted"])) + "."]
        lines.append("")
    return lines
