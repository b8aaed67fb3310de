"""Kill `pipeline run all` at random moments, rerun after each kill, and check it ends where an uninterrupted run does.

    python -m tests.kill_resume --kills 10 --reference artifacts/edgenet/report.json [-- --quick ...]

Each round starts ``pipeline run all`` on the same folder and sends SIGKILL (every third round SIGINT) at a moment
drawn uniformly from the time the unfinished stages took in the reference run. After every kill, the folder's
manifest must verify (no recorded file missing, truncated or altered). Finally one rerun completes, its report's
accuracies must equal the reference's exactly, and ``pipeline verify`` must pass. Without ``--reference`` an
uninterrupted run is made first. Prints a table and writes ``kill_resume.json`` to ``--out``. Exit status 0 only if
everything held. (Latency figures differ between runs and are not compared.)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data", "train", "export", "quantize", "engines", "validate")


def default_sigint() -> None:
    """A job started in the background (``cmd &``) inherits SIGINT as *ignored*, and then Python installs no
    KeyboardInterrupt handler: undo that, so the SIGINT rounds test Ctrl-C and not an ignored signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pipeline(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"}, preexec_fn=default_sigint)


def _run_to_end(*args) -> tuple[int, str]:
    p = _pipeline(*args)
    out, _ = p.communicate()
    return p.returncode, out


def _figures(report: dict) -> dict:
    return {"train_test_accuracy": report["train"]["test_accuracy"], "val_accuracy": report["train"]["val_accuracy"],
            **{v["name"]: v["accuracy"] for v in report["variants"]}}


def _stage_seconds(run: Path) -> dict[str, float]:
    from pipeline.store import manifest

    return {k: float(v.get("seconds", 0)) for k, v in manifest.load(run / "stages.json").items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    ap.add_argument("--out", type=Path, default=Path("artifacts/kill-resume"))
    ap.add_argument("--reference", type=Path, help="report.json of an uninterrupted run with the same options")
    ap.add_argument("run_args", nargs="*", help="extra `pipeline run all` options, after --")
    a = ap.parse_args(argv)
    from pipeline.bundle import build as bundle
    from pipeline.store import manifest

    rng = random.Random(a.seed)
    model = next((a.run_args[i + 1] for i, x in enumerate(a.run_args[:-1]) if x in ("--model", "-m")), "edgenet")
    if a.reference is None:
        ref_art = a.out / "reference"
        print(f"reference: uninterrupted `pipeline run all {' '.join(a.run_args)}` in {ref_art}", flush=True)
        rc, out = _run_to_end("run", "all", *a.run_args, "--artifacts", ref_art)
        if rc != 0:
            print(out)
            return 1
        a.reference = ref_art / model / "report.json"
    reference = json.loads(a.reference.read_text())
    ref_seconds = _stage_seconds(a.reference.parent)
    art = a.out / "killed"
    run = art / model
    args = ("run", "all", *a.run_args, "--artifacts", art)

    rounds, ok = [], True
    for i in range(a.kills):
        done = _stage_seconds(run) if run.exists() else {}
        remaining = 6.0 + sum(s for st, s in ref_seconds.items() if st not in done)  # + process start
        at = rng.uniform(0.5, remaining)
        sig = signal.SIGINT if i % 3 == 2 else signal.SIGKILL
        p = _pipeline(*args)
        t0 = time.monotonic()
        try:
            out, _ = p.communicate(timeout=at)
            rounds.append({"round": i + 1, "at_s": round(at, 1), "signal": None, "exit": p.returncode,
                           "note": "finished before the kill moment"})
            print(f"round {i + 1}: finished before {at:.1f} s (exit {p.returncode})", flush=True)
            ok &= p.returncode == 0
            continue
        except subprocess.TimeoutExpired:
            p.send_signal(sig)
            out, _ = p.communicate()
        in_stage = next((st for line in reversed(out.splitlines()) for st in STAGES
                         if line.split("INFO", 1)[-1].strip().startswith(f"{st}: ") and "up to date" not in line), "?")
        problems = bundle.verify(run) if (run / "stages.json").is_file() else []
        leftovers = [str(x.relative_to(run)) for x in manifest.temp_leftovers(run)]
        rounds.append({"round": i + 1, "at_s": round(time.monotonic() - t0, 1), "signal": signal.Signals(sig).name,
                       "exit": p.returncode, "stage": in_stage, "finished_stages": list(_stage_seconds(run)),
                       "verify_problems": problems, "temp_leftovers": leftovers})
        print(f"round {i + 1}: {signal.Signals(sig).name} at {rounds[-1]['at_s']:.1f} s in {in_stage}; exit "
              f"{p.returncode}; finished stages: {', '.join(rounds[-1]['finished_stages']) or '-'}; verify: "
              f"{'ok' if not problems else problems}; temp files left: {len(leftovers)}", flush=True)
        ok &= not problems and p.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)

    rc, out = _run_to_end(*args)
    final = json.loads((run / "report.json").read_text()) if rc == 0 else None
    verify_rc, verify_out = _run_to_end("verify", run)
    same = final is not None and _figures(final) == _figures(reference)
    ok &= rc == 0 and verify_rc == 0 and same
    ok &= any(r["exit"] in (-signal.SIGKILL, 130) for r in rounds)  # a sweep that killed nothing proves nothing
    summary = {"run_args": list(a.run_args), "rounds": rounds, "final_exit": rc, "verify_exit": verify_rc,
               "reference": _figures(reference), "final": _figures(final) if final else None,
               "identical_accuracies": same, "ok": ok}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "kill_resume.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"final rerun: exit {rc}; `pipeline verify`: exit {verify_rc}; accuracies identical to the reference: {same}")
    if final:
        for k, v in _figures(reference).items():
            print(f"  {k:22s} reference {100 * v:.2f} %   after {len(rounds)} kills {100 * _figures(final)[k]:.2f} %")
    if not ok:
        print(out[-3000:] + verify_out[-2000:])
    print(f"{'PASS' if ok else 'FAIL'} ({a.out / 'kill_resume.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
