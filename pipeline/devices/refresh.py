"""After a device is recorded: the run's report rewritten with it, and the manifest told so."""
from __future__ import annotations

from pathlib import Path


def refresh(run_dir: Path) -> list[Path]:
    """Rewrite the run's report files with the current recordings, and re-record their SHA-256 in the run's
    manifest (stages.json) so `pipeline report`, `pipeline bundle` and later runs accept them. Under the run lock,
    so no stage writes the report meanwhile."""
    from pipeline.report import assemble
    from pipeline.stages import run_lock
    from pipeline.store import manifest
    from pipeline.store.paths import RunDir, sha256_file
    from pipeline.store.schema import load_report

    run = RunDir(Path(run_dir))
    with run_lock(run.root):
        data = load_report(run.report_json, f"The measurement is recorded in {run.devices}, and `pipeline report "
                                             f"{run.root}` shows it once the report is whole.")
        written = assemble.write_all(data, run.root)
        record = manifest.load(run.stages)
        changed = False
        for p in written:
            rel = run.relpath(p)
            for entry in record.values():
                if rel in entry.get("outputs", {}):
                    entry["outputs"][rel] = {"sha256": sha256_file(p), "size": Path(p).stat().st_size}
                    changed = True
        if changed:
            manifest.save(run.stages, record)
    return written
