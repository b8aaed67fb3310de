"""The variant table (pipeline/variants.py): consistent, cheap to import, and the only place a variant is added."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from pipeline import variants
from pipeline.measure.runners import RUNNERS
from pipeline.targets import BUNDLE, TARGETS
from pipeline.variants import BROWSER, REFERENCE, VARIANTS, Variant
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
    # a bundle holds each file once, and its runner runs it on the CPU: bench.py on onnxruntime (the python and js
    # targets), on OpenVINO (the openvino target), the mobile check on ExecuTorch or LiteRT (the android target)
    assert len({v.file for v in bundled}) == len(bundled)
    runs = {"python": {"onnxruntime"}, "js": {"onnxruntime"}, "openvino": {"openvino"},
            "mobile": {"executorch", "litert"}}
    for v in bundled:
        assert v.file and v.provider == "cpu", v.name
        assert all(v.backend in runs[BUNDLE[t].runner] for t in v.bundle), v.name


def test_every_file_has_one_recipe_a_stage_registers():
    """Each row's recipe has a handler (registered by the export or quantize stage); every ONNX file a row runs is
    made by the first row naming it, which has a recipe; engines are built from such a file, by the engines stage."""
    from pipeline.stages.recipes import RECIPES

    makers = {}
    for v in VARIANTS:
        if v.recipe is not None:
            assert v.recipe in RECIPES and v.file and v.source is None, v.name
            makers.setdefault(v.file, v)
    assert {r.stage for r in RECIPES.values()} == {"export", "quantize"}
    assert {v.recipe for v in makers.values()} == set(RECIPES)  # no handler left without a row
    for v in VARIANTS:
        if v.source:
            assert v.source in makers and v.recipe is None, v.name
        elif v.file:
            assert v.file in makers, v.name
            assert makers[v.file].quant == v.quant, v.name  # built when the row's own --quant switch says so


def test_by_name_is_a_live_view_of_the_table(monkeypatch):
    extra = replace(variants.BY_NAME["onnx-fp32"], name="onnx-fp32-b")
    monkeypatch.setattr(variants, "VARIANTS", VARIANTS + (extra,))
    assert variants.BY_NAME["onnx-fp32-b"] is extra and list(variants.BY_NAME)[-1] == "onnx-fp32-b"
    assert len(variants.BY_NAME) == len(VARIANTS) + 1 and "nope" not in variants.BY_NAME


def test_adding_one_row_is_enough_for_export_validate_report_and_bundle(quick_copy, data_root, tmp_path, monkeypatch):
    """One new row with an existing recipe, and nothing else in the code: the export stage writes its file (the
    stage's key covers the rows it makes, so it reruns), validate runs and judges it, the report shows it, the
    bundle ships it."""
    from pipeline.measure import efficiency
    from pipeline import stages
    from pipeline.config import build_config

    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)  # the CPU probe (seconds) is not under test

    row = Variant("onnx-fp32-basic", "onnxruntime", "cpu", "fp32", "model-fp32-basic.onnx", atol=1e-4,
                  recipe="fp32", ort_optimization="basic", bundle=TARGETS)
    monkeypatch.setattr(variants, "VARIANTS", VARIANTS + (row,))
    run = quick_copy / "edgenet"
    assert not (run / "export" / row.file).exists()

    cfg = build_config(model="edgenet", artifacts=quick_copy, data_root=data_root, force=False, quick=True)
    cfg = replace(cfg, validate=replace(cfg.validate, batches=(1, 8), warmup=0, iterations=2, max_seconds=0.01))
    did = stages.run(cfg)
    assert did["export"] == "ran" and did["quantize"] == "skipped" and did["validate"] == "ran"
    # the recipe's handler wrote it: the FP32 export, byte for byte (same model, same metadata)
    assert (run / "export" / row.file).read_bytes() == (run / "export" / "model-fp32.onnx").read_bytes()
    record = json.loads((run / "stages.json").read_text())
    assert f"export/{row.file}" in record["export"]["outputs"]
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
