"""Which file to ship where: per deployment target, the fastest variant measured on it within its accuracy budget.

The smallest file is not the right one: on an AVX2 CPU the smallest (a TensorRT-targeted INT8 file, run with
Q/DQ as written) was the slowest variant there. So each target is judged on its own measurements. The targets
are one table, :data:`pipeline.targets.DEPLOY`: which report rows measure a target, which bundle ships its file,
which file to build from when nothing measured here qualifies, and the exact command that measures it on the device.

The rule, in :func:`recommend`:

- a row qualifies when its logits are all finite, it keeps its parity tolerance (``atol`` in
  :mod:`pipeline.variants`: agreement 1.0 and max |logit diff| within it) and its accuracy budget
  (``budget_pp``: the drop against the reference, in percentage points). A row with neither declared may not
  lose any accuracy (a budget of 0 pp): nobody said what loss is acceptable, so none is;
- "fastest" is the lowest p50 latency at the smallest timed batch (batch 1: what one request of an app
  waits for, the common edge case), the median over the interleaved timing rounds. It wins only when the others
  are slower by more than the noise: the larger of the two rows' spreads over the rounds (percent; the rule is
  :func:`runtime.bench.pick`, which ``pipeline bench`` uses too). A row within the noise of the fastest ties with
  it, and the tie is broken by the smaller file, then the higher accuracy, then the name; the report says so
  ("tie within noise (x % vs spread y %), broken by: smaller file"). Throughput at the largest timed batch is
  recorded and shown;
- a target with no qualifying row here gets its ``build_from`` file, ``measured`` false, and the command.

Everything is computed from report.json's rows alone (``pipeline report`` rebuilds it from the file), and
nothing is measured here.
"""
from __future__ import annotations

import math
from pathlib import Path, PurePath

from runtime.bench import Candidate, pick

from pipeline import variants
from pipeline import targets
from pipeline.store.paths import RunDir


def pareto_figure(key: str) -> str:
    """The name of a measured target's accuracy-versus-latency figure (:meth:`RunDir.report_figure` places it)."""
    return f"pareto-{key}"


def plot_name(key: str) -> str:
    """The accuracy-versus-latency figure of a measured target, relative to the run folder (as report.md cites it)."""
    return RunDir.relative().report_figure(pareto_figure(key)).as_posix()


def batches(rows: list[dict]) -> tuple[str, str]:
    """The smallest and largest timed batch sizes (as report.json's latency keys) over all rows."""
    sizes = sorted({int(b) for r in rows for b in r.get("latency", {})})
    return (str(sizes[0]), str(sizes[-1])) if sizes else ("1", "256")


def figures(row: dict, small: str, big: str) -> tuple[float | None, float | None]:
    """(p50 ms at the small batch, images/s at the big batch) of a row; None where not timed."""
    lat = row.get("latency", {})
    return (lat.get(small, {}).get("p50_ms"), lat.get(big, {}).get("throughput_per_s"))


def spread(row: dict, batch: str) -> float | None:
    """The spread (percent) of a row's p50 over its timing rounds at ``batch``; None when timed in one go."""
    return row.get("latency", {}).get(batch, {}).get("spread_pct")


def candidate(row: dict, batch: str) -> Candidate:
    """A report row as :func:`runtime.bench.pick` sees it: p50, spread and each round's p50 at ``batch``, file
    size, accuracy. The rows of one target were timed in the same rounds (one validate stage), so their rounds pair."""
    return Candidate(row["name"], figures(row, batch, batch)[0], spread(row, batch), row.get("size_bytes"),
                     row.get("accuracy"), tuple(row.get("latency", {}).get(batch, {}).get("round_p50_ms") or ()))


def disqualified(row: dict) -> str | None:
    """Why ``row`` may not be recommended (its accuracy promise is broken), or None when it may.

    Each test is written so that NaN fails it (``not x >= y``)."""
    if row.get("nonfinite"):
        return f"{row['nonfinite']} test images give NaN or infinite logits"
    v = variants.BY_NAME.get(row.get("name"))
    if v is not None and v.atol is not None:
        diff = row.get("max_abs_diff")
        if not row.get("agreement", 0) >= 1.0 or diff is None or not diff <= v.atol:
            return f"breaks its parity tolerance (max |logit diff| <= {v.atol:g}, agreement 1.0)"
        return None
    budget, delta = row.get("budget_pp"), row.get("accuracy_delta")
    if not isinstance(delta, (int, float)) or not math.isfinite(delta):
        return "no finite accuracy delta"
    if budget is None:  # nobody declared an acceptable loss, so none is
        return None if delta >= -1e-9 else f"lost accuracy ({delta:+.2f} pp) and declares no accuracy budget"
    if not delta >= -budget - 1e-9:
        return f"over its accuracy budget ({delta:+.2f} pp, budget -{budget:.2f} pp)"
    return None


def file_of(row: dict) -> str:
    """The file to ship for a row: a TensorRT engine's source ONNX file (engines are specific to one GPU and
    TensorRT version, so the device builds its own), else the row's own file."""
    v = variants.BY_NAME.get(row.get("name"))
    if v is not None and (v.source or v.file):
        return v.source or v.file
    return PurePath(str(row.get("path", ""))).name


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points (name, latency, accuracy) no other point beats: none is at least as fast and at
    least as accurate, and strictly better in one. Sorted by latency."""
    front = [p for p in points if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2])
                                          for q in points)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], -p[2]))]


def _folder(model: str, bundle: str) -> str:
    return RunDir.for_model(Path("artifacts"), model).bundle(Path(), bundle).name


def _command(t: targets.DeployTarget, name: str | None, model: str) -> str:
    """What measures target ``t``'s pick on the device: ``t``'s own command when its bundle ships variant ``name`` (or
    nothing was picked), else the command of the target whose bundle does (the CPU target's pick may be an OpenVINO or
    ExecuTorch file, which the openvino or android bundle carries, not the cpu one)."""
    v = variants.BY_NAME.get(name) if name else None
    if v is not None and t.bundle not in v.bundle:
        t = next((d for b in v.bundle for d in targets.DEPLOY if d.bundle == b), t)
    return t.command.format(model=model, folder=_folder(model, t.bundle))


def recommend(report: dict) -> dict[str, dict]:
    """``{target key: {variant, file, reason, measured, command, p50_ms?, throughput?, accuracy?, ...}}`` for every
    row of :data:`pipeline.targets.DEPLOY`, from report.json's ``model`` and ``variants`` alone."""
    rows = report["variants"]
    small, big = batches(rows)
    out = {}
    for t in targets.DEPLOY:
        command = _command(t, None, report["model"])
        measured = [r for r in rows if t.measures(r)]
        ok = [r for r in measured if disqualified(r) is None and figures(r, small, big)[0] is not None]
        if ok:
            verdict = pick([candidate(r, small) for r in ok])
            best = next(r for r in ok if r["name"] == verdict.winner)
            p50, thr = figures(best, small, big)
            noise = spread(best, small)
            rest = [r["name"] for r in ok if r is not best]
            out_of = [f"`{r['name']}` ({disqualified(r) or 'not timed at batch ' + small})"
                      for r in measured if r not in ok]
            figs = (f"p50 {p50:.3f} ms at batch {small}" + (f", spread {noise:.1f} %" if noise is not None else "")
                    + (f"; {thr:,.0f} images/s at batch {big}" if thr is not None else ""))
            within = "measured on this target here within their accuracy budget"
            if verdict.tie:
                head = (f"{verdict.sentence()}: of the variants {within}, "
                        f"{', '.join(f'`{n}`' for n in verdict.tied)} are within the noise of the fastest "
                        f"(`{verdict.fastest}`) at batch {small}; `{best['name']}`: {figs}")
            elif verdict.runner_up is None:
                head = f"the only variant {within.replace('their', 'its')} ({figs})"
            else:
                head = f"fastest at batch {small} of the variants {within} ({figs}), {verdict.sentence()}"
            reason = (head + (f" (also: {', '.join(f'`{n}`' for n in rest)})" if rest else "")
                      + (f"; left out: {', '.join(out_of)}" if out_of else "") + (f"; {t.proxy}" if t.proxy else "")
                      + ".")
            command = _command(t, best["name"], report["model"])
            out[t.key] = {"variant": best["name"], "file": file_of(best), "reason": reason, "measured": True,
                          "command": command, "p50_ms": p50, "p50_batch": int(small), "throughput": thr,
                          "throughput_batch": int(big), "accuracy": best["accuracy"], "spread_pct": noise,
                          "verdict": verdict.as_dict()}
        elif t.build_from not in variants.BY_NAME:  # a table edited without the target's starting row: nothing to say
            continue
        else:
            v = variants.BY_NAME[t.build_from]
            if measured:
                why = ("none of the variants measured on this target here stays within its accuracy budget ("
                       + ", ".join(f"`{r['name']}`: {disqualified(r) or 'not timed'}" for r in measured)
                       + f"); start from `{t.build_from}` and measure on the device")
            else:
                why = f"not measured here; build from `{t.build_from}`" + (f": {t.note}" if t.note else "")
            out[t.key] = {"variant": t.build_from, "file": v.file, "reason": why + ".", "measured": False,
                          "command": command}
    return out
