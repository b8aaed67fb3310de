"""A run's CPU timing quiet, then beside one busy-loop process per core: the two side by side, with the spread.

Why: a busy machine used to decide "What to ship" (issue 20: a busy run ranked onnx-int8-qat-cpu at 1.90x FP32
throughput where the quiet run measured 0.92x), because variants were timed one after another, minutes apart. The
validate stage now times them together in rotated rounds (docs/timing.md); this shows, on one machine, what load
still does to the figures and whether the recommendation holds. It times the run's onnxruntime CPU files (the rows
the CPU target is judged on) with the validate stage's own code (:func:`pipeline.measure.compare.latency`, so the same
rounds, medians and spreads), recomputes the CPU recommendation from the run's report.json with the new figures
(:func:`pipeline.report.recommend.recommend`, the tie rule included), and prints a Markdown table. Not a test: it asserts
nothing; the figures depend on the machine. Writes nothing but ``--out`` and ``--json``.

    python -m benchmarks.contention artifacts/edgenet                 # the default run's timing budget
    python -m benchmarks.contention artifacts/edgenet --quick         # a few short rounds: checks the script only
    python -m benchmarks.contention artifacts/edgenet --out quiet-vs-loaded.md --json quiet-vs-loaded.json

Inputs are random images of the model's shape (timing does not depend on pixel values for these models); the
busy loops are ``python -c "while True: pass"``, one per core (``--busy N`` for another count), started a second
before the loaded phase and killed after it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUSY = "while True: pass"


@contextlib.contextmanager
def busy_loops(n: int):
    """``n`` CPU-bound processes beside this one, killed (each by its own id) when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]
    try:
        time.sleep(1.0)  # let them reach the scheduler before anything is timed
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _rows_to_time(report: dict, run: Path) -> list:
    """The variant rows the CPU target is judged on, whose file this run has: onnxruntime, CPU, default optimizations."""
    from pipeline import variants
    from pipeline.measure.runners import build

    names = {r["name"] for r in report["variants"]}
    return [v for v in variants.VARIANTS if v.name in names and v.backend == "onnxruntime" and v.provider == "cpu"
            and v.ort_optimization != "basic" and v.file and (run / "export" / v.file).is_file()]


def phase(run: Path, report: dict, cfg, label: str) -> dict:
    """Time the run's CPU files together (the validate stage's rounds) and recompute the CPU recommendation."""
    import numpy as np

    from pipeline.measure.runners import build
    from pipeline.report import recommend
    from pipeline.store.paths import RunDir
    from pipeline.measure.compare import latency

    rd = RunDir(run)
    todo = _rows_to_time(report, run)
    images = np.random.default_rng(0).standard_normal((max(cfg.batches), 1, 28, 28)).astype(np.float32)
    with contextlib.ExitStack() as active:
        runners = {v.name: active.enter_context(build(v, rd, threads=cfg.threads)) for v in todo}
        lat, session = latency(runners, images, cfg)
    rows = []
    for r in report["variants"]:
        if r["name"] in lat:
            rows.append({**copy.deepcopy(r), "latency": lat[r["name"]]})
    rec = recommend.recommend({"model": report["model"], "variants": rows})["cpu"]
    print(f"{label}: {len(rows)} files timed in {session['seconds']:.0f} s; CPU pick `{rec['variant']}`", file=sys.stderr)
    return {"label": label, "rows": rows, "session": session, "recommended": rec}


def _fmt(x, spec=".3f", none="-"):
    return none if x is None else format(x, spec)


def markdown(phases: list[dict], cfg, command: str, env: dict) -> str:
    """The phases side by side: p50 and its spread per file and batch, throughput against FP32, the CPU pick."""
    a, b = phases
    small, big = str(cfg.batches[0]), str(cfg.batches[-1])
    by_b = {r["name"]: r for r in b["rows"]}
    flags = env.get("cpu_flags")
    lines = [f"Command: `{command}`", "",
             f"CPU: {env.get('cpu', '?')}" + (f" ({', '.join(flags) if isinstance(flags, list) else flags})"
                                               if flags else "")
             + f", {a['session']['cores']} cores; commit {env.get('commit', '?')}; {cfg.rounds} rounds, bursts of at "
             f"most {cfg.iterations} calls or {cfg.max_seconds:g} s, batch sizes {', '.join(map(str, cfg.batches))}; "
             f"the loaded phase ran beside {env.get('busy')} busy-loop processes.", "",
             f"| variant | batch | {a['label']} p50 (ms) | spread | {b['label']} p50 (ms) | spread | "
             f"{b['label']} / {a['label']} |", "|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        other = by_b.get(r["name"])
        for bs in map(str, cfg.batches):
            x, y = r["latency"][bs], other["latency"][bs] if other else {}
            ratio = y["p50_ms"] / x["p50_ms"] if y and x["p50_ms"] > 0 else None
            lines.append(f"| `{r['name']}` | {bs} | {x['p50_ms']:.3f} | {_fmt(x.get('spread_pct'), '.1f')} % | "
                         f"{_fmt(y.get('p50_ms'))} | {_fmt(y.get('spread_pct'), '.1f')} % | {_fmt(ratio, '.2f')}x |")

    def vs_fp32(rows):
        fp32 = next((r for r in rows if r["name"] == "onnx-fp32"), None)
        return {r["name"]: (r["latency"][big]["throughput_per_s"],
                            r["latency"][big]["throughput_per_s"] / fp32["latency"][big]["throughput_per_s"]
                            if fp32 else None) for r in rows}

    ta, tb = vs_fp32(a["rows"]), vs_fp32(b["rows"])
    lines += ["", f"| variant | {a['label']} img/s @{big} | x FP32 | {b['label']} img/s @{big} | x FP32 |",
              "|---|---|---|---|---|"]
    for name, (thr, rel) in ta.items():
        thr_b, rel_b = tb.get(name, (None, None))
        lines.append(f"| `{name}` | {thr:,.0f} | {_fmt(rel, '.2f')}x | {_fmt(thr_b, ',.0f')} | {_fmt(rel_b, '.2f')}x |")
    lines += ["", f"What to ship on the CPU (p50 at batch {small}, the tie rule):"]
    for p in phases:
        rec = p["recommended"]
        lines.append(f"- {p['label']}: `{rec['variant']}`: {(rec.get('verdict') or {}).get('sentence', rec['reason'])}.")
    lines += ["", "Contention during each phase (load average at the end; other processes' and stolen CPU time over "
              "the timing):"]
    for p in phases:
        s = p["session"]
        lines.append(f"- {p['label']}: load {_fmt(s['load_1min'], '.2f')} on {s['cores']} cores, others "
                     f"{_fmt(s['others_cpu_pct'], '.0f')} %, steal {_fmt(s['steal_pct'], '.1f')} %: "
                     + ("; ".join(s["untrusted"]) if s["untrusted"] else "nothing says not to trust it") + ".")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[1])
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder (e.g. artifacts/edgenet) with report.json and export/")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy-loop processes in the loaded phase "
                                                                          "(default: one per core)")
    ap.add_argument("--quick", action="store_true", help="3 rounds of short bursts at batch 1 and 8: checks the "
                                                         "script on a --quick run's files, measures nothing worth quoting")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    ap.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = ap.parse_args(argv)

    from pipeline.config import QUICK, ValidateConfig
    from pipeline.measure.environment import cpu_flags, cpu_name

    report_path = args.run / "report.json"
    if not report_path.is_file():
        print(f"error: {report_path} does not exist; give a run folder such as artifacts/edgenet.", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    if not _rows_to_time(report, args.run):
        print(f"error: {args.run} has no onnxruntime CPU file to time.", file=sys.stderr)
        return 2
    cfg = ValidateConfig(**{**QUICK["validate"], "batches": (1, 8)}) if args.quick else ValidateConfig()
    phases = [phase(args.run, report, cfg, "quiet")]
    with busy_loops(args.busy):
        phases.append(phase(args.run, report, cfg, f"{args.busy} busy loops"))
    env = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "commit": _commit(), "busy": args.busy}
    command = "python -m benchmarks.contention " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(phases, cfg, command, env)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "command": command, "phases": phases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
