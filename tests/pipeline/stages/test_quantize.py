"""INT8 (PTQ, QAT, CPU) and FP16 variants on the quick run, and the quantize stage's bad inputs."""
import json

import numpy as np
import onnx
import pytest

from exporters import precision
from exporters.qdq import check_qdq
from pipeline.config import QuantConfig
from pipeline.errors import PipelineError
from pipeline.stages.quantize import calibration_images
from tests.helpers import invoke, snapshot

INT8_TRT = ("onnx-int8-ptq", "onnx-int8-qat")


def _rows(quick_run):
    return {v["name"]: v for v in quick_run["report"]["variants"]}


def test_every_variant_is_validated_like_fp32(quick_run):
    rows = _rows(quick_run)
    assert set(rows) == {"torch-fp32", "onnx-fp32", "onnx-fp16", "onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"}
    for name, row in rows.items():
        assert {"accuracy", "agreement", "max_abs_diff", "accuracy_delta", "flips", "latency"} <= set(row), name
        assert len(row["flips"]) == round((1 - row["agreement"]) * 10000)
    # reduced precision stays close to the reference even after a 2-epoch quick training
    assert rows["onnx-fp16"]["agreement"] > 0.999
    for name in ("onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"):
        assert rows[name]["agreement"] > 0.98, name


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


def test_fp16_model_keeps_fp32_io_and_halves_the_file(quick_run):
    d = quick_run["dir"] / "export"
    m = onnx.load(str(d / "model-fp16.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert (d / "model-fp16.onnx").stat().st_size < 0.6 * (d / "model-fp32.onnx").stat().st_size


def test_per_layer_sqnr_is_reported(quick_run):
    q = quick_run["report"]["quantization"]
    assert set(q["variants"]) == {"onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu"}
    layers = q["variants"]["onnx-int8-ptq"]
    assert [r["op"] for r in layers] == ["Conv"] * 7 + ["Gemm"]
    assert all(10 < r["sqnr_db"] < 80 for r in layers)
    assert (quick_run["dir"] / "quantize" / "sqnr.png").stat().st_size > 1000
    assert "Per-layer quantization error" in (quick_run["dir"] / "report.md").read_text()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_give_conforming_qdq(quick_run, data_root, tmp_path, method):
    from pipeline.config import DataConfig
    from pipeline.data import load_splits

    splits = load_splits(DataConfig(root=data_root, val_size=1000, max_train=4000))
    images = calibration_images(splits.train_x, QuantConfig(calib_size=64))
    fp32 = quick_run["dir"] / "export" / "model-fp32.onnx"
    out = precision.ptq(fp32, tmp_path / "m.onnx", images, method, {})
    assert check_qdq(out) == []
    layers = precision.per_layer_sqnr(quick_run["dir"] / "export" / "model-fp32.onnx", out, images[:16])
    assert len(layers) == 8


def _activation_scales(path):
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i).tolist() for i in m.graph.initializer}
    return {n.name: init.get(n.input[1]) for n in m.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("method", [
    "percentile",
    pytest.param("entropy", marks=pytest.mark.xfail(strict=True, reason=(
        "onnxruntime 1.31's quantize_static runs its entropy calibrator with 128 histogram bins and 128 quantized "
        "bins, so the KL search has one candidate, the full range: MinMax's scales (README, Limits)"))),
])
def test_calibration_method_changes_the_activation_scales(quick_run, data_root, tmp_path, method):
    from pipeline.config import DataConfig
    from pipeline.data import load_splits

    splits = load_splits(DataConfig(root=data_root, val_size=1000, max_train=4000))
    images = calibration_images(splits.train_x, QuantConfig(calib_size=64))
    fp32 = quick_run["dir"] / "export" / "model-fp32.onnx"
    chosen = precision.ptq(fp32, tmp_path / "m.onnx", images, method, {})
    minmax = precision.ptq(fp32, tmp_path / "minmax.onnx", images, "minmax", {})
    assert _activation_scales(chosen) != _activation_scales(minmax)


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


def test_sqnr_math():
    ref = np.ones(100, dtype=np.float32)
    assert precision.sqnr_db(ref, ref) == float("inf")
    assert precision.sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)


def test_calib_size_larger_than_split_fails_cleanly(quick_copy, data_root):
    before = snapshot(quick_copy)
    r = invoke("run", "all", "--quick", "--calib-size", "100000", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 2 and "larger than the training split" in r.output and "Traceback" not in r.output
    after = snapshot(quick_copy)
    assert {k: v for k, v in after.items() if k in before} == before


def test_unknown_calibration_method_and_quant_mode(tmp_path, data_root):
    for args, msg in ((["--calib-method", "magic"], "--calib-method must be one of minmax, entropy, percentile"),
                      (["--quant", "int4"], "--quant must be one of none, ptq, qat, both")):
        r = invoke("run", "all", "--artifacts", tmp_path, "--data-root", data_root, *args)
        assert r.exit_code == 2 and msg in r.output


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


def test_untraceable_user_model_fails_with_a_paragraph(tmp_path, data_root):
    r = invoke("run", "all", "--quick", "--model", "tests.fixtures.user_models:DataDependent",
               "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Could not export" in r.output
    assert (tmp_path / "tests.fixtures.user_models__DataDependent" / "train" / "model.pt").is_file()


def test_check_qdq_command(quick_run, tmp_path):
    d = quick_run["dir"] / "export"
    r = invoke("check-qdq", d / "model-int8-ptq.onnx")
    assert r.exit_code == 0 and "conforms" in r.output
    r = invoke("check-qdq", d / "model-fp32.onnx")
    assert r.exit_code == 2 and "no Q/DQ" in r.output
    junk = tmp_path / "x.onnx"
    junk.write_bytes(b"\x89PNG\r\n")
    r = invoke("check-qdq", junk)
    assert r.exit_code == 2 and "not an ONNX model" in r.output
    r = invoke("check-qdq", d / "model-int8-cpu.onnx")  # uint8 activations: fine for CPU, not for TensorRT
    assert r.exit_code == 1, r.output
    assert "is uint8, expected int8" in r.output and "asymmetric quantization" in r.output
