"""pipeline/stages/quantize.py on the quick run: the INT8 (PTQ, QAT, CPU) files it writes and records, their
per-layer SQNR, its calibration images, and its bad inputs. The ONNX transforms it calls are tested in
tests/exporters/test_precision.py, the Q/DQ rules in tests/exporters/test_qdq.py."""
import json

import numpy as np
import onnx
import pytest

from exporters.qdq import check_qdq
from pipeline.config import QuantConfig
from pipeline.errors import PipelineError
from pipeline.stages.quantize import calibration_images
from tests.helpers import invoke


def test_int8_files_pass_the_qdq_rules_and_are_small(quick_run):
    d = quick_run["dir"] / "export"
    fp32_size = (d / "model-fp32.onnx").stat().st_size
    for name in ("model-int8-ptq.onnx", "model-int8-qat.onnx"):
        assert check_qdq(d / name) == [], name
        assert (d / name).stat().st_size <= 0.35 * fp32_size, name
        props = {p.key: p.value for p in onnx.load(str(d / name)).metadata_props}
        assert props["precision"] == "int8" and props["quantization"]


def test_export_and_quantize_leave_only_the_files_they_record(quick_run):
    """onnxruntime writes its quantized model to a file before the rules are checked: that file is scratch,
    not an artifact, and must not stay beside the INT8 files (nor any temp file)."""
    run = quick_run["dir"]
    record = json.loads((run / "stages.json").read_text())
    recorded = {rel for info in record.values() if isinstance(info, dict) for rel in info["outputs"]}
    on_disk = {str(p.relative_to(run)) for folder in ("export", "quantize") for p in (run / folder).rglob("*")
               if p.is_file()}
    assert "export/model-int8-ptq.onnx" in on_disk
    assert on_disk <= recorded, sorted(on_disk - recorded)


def test_per_layer_sqnr_is_reported(quick_run):
    q = quick_run["report"]["quantization"]
    assert set(q["variants"]) == {"onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"}
    layers = q["variants"]["onnx-int8-ptq"]
    assert [r["op"] for r in layers] == ["Conv"] * 7 + ["Gemm"]
    assert all(10 < r["sqnr_db"] < 80 for r in layers)
    assert (quick_run["dir"] / "quantize" / "sqnr.png").stat().st_size > 1000
    assert "Per-layer quantization error" in (quick_run["dir"] / "report.md").read_text()


def test_calibration_never_reads_the_test_set_and_is_seeded(data_root):
    from pipeline.config import DataConfig
    from pipeline.data import load_splits

    s = load_splits(DataConfig(root=data_root, val_size=1000, max_train=1000))
    a = calibration_images(s.train_x, QuantConfig(calib_size=100))
    b = calibration_images(s.train_x, QuantConfig(calib_size=100))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, calibration_images(s.train_x, QuantConfig(calib_size=100, calib_seed=1)))
    train_rows = {r.tobytes() for r in s.train_x.numpy()}
    assert all(r.tobytes() in train_rows for r in a)


def test_quantize_without_a_trained_checkpoint(tmp_path, data_root):
    from pipeline import stages
    from pipeline.config import build_config
    from pipeline.stages import quantize as quantize_stage

    cfg = build_config(model="edgenet", artifacts=tmp_path, data_root=data_root, force=False, quick=True)
    ctx = stages.Context(cfg)
    (ctx.rd.root / "data").mkdir(parents=True)
    ctx.rd.data_summary.write_text("{}")
    with pytest.raises(PipelineError, match=r"Checkpoint .*model\.pt does not exist; run `pipeline run train` first"):
        quantize_stage.run(ctx)


def test_quant_none_skips_int8_and_says_so(quick_copy, data_root):
    r = invoke("run", "all", "--quick", "--quant", "none", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    rep = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    assert {s["name"] for s in rep["skipped"]} >= {"onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"}
    assert not any(v["name"].startswith("onnx-int8") for v in rep["variants"])


