"""The variant table (pipeline/variants.py): consistent, cheap to import, and the only place a variant is added."""
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from pipeline import variants
from pipeline.measure.runners import RUNNERS
from pipeline.variants import BROWSER, REFERENCE, TARGETS, VARIANTS, Variant
from tests.helpers import ROOT, invoke


def test_importing_the_table_loads_no_backend():
    """The runner factories the table names import their backend when called, never at import."""
    code = ("import sys, pipeline.variants; print(sorted(m for m in ('numpy', 'torch', 'onnx', 'onnxruntime', "
            "'tensorrt', 'polygraphy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_table_rows_are_consistent():
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names)) and names[0] == REFERENCE
    files = {v.file: v for v in VARIANTS if v.file and v.backend == "onnxruntime" and v.provider == "cpu"}
    for v in VARIANTS:
        assert v.backend in RUNNERS or v.backend == BROWSER, v.name
        assert set(v.bundle) <= set(TARGETS), v.name
        if v.backend == "tensorrt":  # an engine is built from a TensorRT-targeted ONNX file of its own precision
            src = files[v.source]
            assert src.tensorrt and src.precision == v.precision and src.quant == v.quant, v.name
        else:
            assert v.source is None, v.name
    bundled = [v for v in VARIANTS if v.bundle]
    # a bundle holds each file once, keyed by its stem in MANIFEST.json, and bench.py runs it on onnxruntime-CPU
    assert len({v.file for v in bundled}) == len(bundled)
    assert all(v.file and v.backend == "onnxruntime" and v.provider == "cpu" for v in bundled)


def test_by_name_is_a_live_view_of_the_table(monkeypatch):
    extra = replace(variants.BY_NAME["onnx-fp32"], name="onnx-fp32-b")
    monkeypatch.setattr(variants, "VARIANTS", VARIANTS + (extra,))
    assert variants.BY_NAME["onnx-fp32-b"] is extra and list(variants.BY_NAME)[-1] == "onnx-fp32-b"
    assert len(variants.BY_NAME) == len(VARIANTS) + 1 and "nope" not in variants.BY_NAME


def _record_output(run: Path, stage: str, rel: str) -> None:
    """Record ``rel`` as an output of ``stage`` in stages.json, as that stage would after writing it."""
    from pipeline.store.paths import sha256_file

    path = run / "stages.json"
    rec = json.loads(path.read_text())
    rec[stage]["outputs"][rel] = {"sha256": sha256_file(run / rel), "size": (run / rel).stat().st_size}
    path.write_text(json.dumps(rec, indent=2))


def test_adding_one_row_is_enough_for_validate_report_and_bundle(quick_copy, data_root, tmp_path, monkeypatch):
    """One new row, and nothing else in the code: validate runs and judges it, the report shows it, the
    bundle ships it. The only thing besides the row is its file, which the stage that would write it (here
    the test, copying the FP32 file as the export stage would) records in the run's manifest."""
    from pipeline.measure import efficiency
    from pipeline import stages
    from pipeline.config import build_config

    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)  # the CPU probe (seconds) is not under test

    row = Variant("onnx-fp32-basic", "onnxruntime", "cpu", "fp32", "model-fp32-basic.onnx", atol=1e-4,
                  ort_optimization="basic", bundle=TARGETS)
    monkeypatch.setattr(variants, "VARIANTS", VARIANTS + (row,))
    run = quick_copy / "edgenet"
    shutil.copy2(run / "export" / "model-fp32.onnx", run / "export" / row.file)
    _record_output(run, "export", f"export/{row.file}")

    cfg = build_config(model="edgenet", artifacts=quick_copy, data_root=data_root, force=False, quick=True)
    cfg = replace(cfg, validate=replace(cfg.validate, batches=(1, 8), warmup=0, iterations=2, max_seconds=0.01))
    assert stages.run(cfg)["validate"] == "ran"
    record = json.loads((run / "stages.json").read_text())
    assert record["validate"]["inputs"]["files"][row.name]  # the validate stage's key covers the new file

    rep = json.loads((run / "report.json").read_text())
    got = next(v for v in rep["variants"] if v["name"] == row.name)
    assert got["ort_optimization"] == "basic" and got["path"].endswith(row.file)
    assert got["agreement"] == 1.0 and got["max_abs_diff"] <= row.atol and set(got["latency"]) == {"1", "8"}
    assert row.name in rep["speedup_vs_torch"] and "efficiency" in got
    assert f"| `{row.name}` | onnxruntime | cpu¹ | fp32 |" in (run / "report.md").read_text()
    assert row.name in (run / "report.html").read_text()

    r = invoke("bundle", "--target", "cpu", "--artifacts", quick_copy, "--out", tmp_path / "b", "--data-root", data_root)
    assert r.exit_code == 0, r.output
    bundle = tmp_path / "b" / "edgenet-cpu-bundle"
    model = json.loads((bundle / "MANIFEST.json").read_text())["models"]["model-fp32-basic"]
    assert model["variant"] == row.name and model["ort_optimization"] == "basic" and model["atol"] == row.atol
    assert model["accuracy"] == got["accuracy"] and not model["tensorrt"]
    assert (bundle / "models" / row.file).read_bytes() == (run / "export" / row.file).read_bytes()


def test_bundle_targets_and_engines_come_from_the_table(quick_run, data_root, tmp_path, monkeypatch):
    """A row the table leaves out of a target is not shipped there, and only rows marked ``tensorrt`` get an
    engine on jetson/gpu (which the bundle's build scripts read from MANIFEST.json)."""
    changed = tuple(replace(v, bundle=("jetson", "gpu")) if v.name == "onnx-fp16" else
                    replace(v, tensorrt=False) if v.name == "onnx-int8-qat" else v for v in VARIANTS)
    monkeypatch.setattr(variants, "VARIANTS", changed)
    for target in ("cpu", "gpu"):
        r = invoke("bundle", "--target", target, "--artifacts", quick_run["artifacts"], "--out", tmp_path,
                   "--data-root", data_root)
        assert r.exit_code == 0, r.output
        models = json.loads((tmp_path / f"edgenet-{target}-bundle" / "MANIFEST.json").read_text())["models"]
        want = {Path(v.file).stem for v in changed if target in v.bundle}
        assert set(models) == want and ("model-fp16" in want) == (target == "gpu")
        assert {s for s, m in models.items() if m["tensorrt"]} == (
            {"model-fp32", "model-fp16", "model-int8-ptq"} if target == "gpu" else set())
