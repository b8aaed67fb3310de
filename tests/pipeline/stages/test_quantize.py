"""pipeline/stages/quantize.py on the quick run: the INT8 (PTQ, QAT, CPU) files it writes and records, their
per-layer SQNR, its calibration images, and its bad inputs. The ONNX transforms it calls are tested in
tests/exporters/test_precision.py, the Q/DQ rules in tests/exporters/test_qdq.py."""
import json

import numpy as np
import onnx
import pytest

from exporters.qdq import check_qdq
from pipeline import variants
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
    # grouped by --quant switch (ptq, qat, cpu), table order within one: the QAT file's CPU form follows the QAT file
    assert list(q["variants"]) == ["onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-qat-cpu", "onnx-int8-cpu"]
    layers = q["variants"]["onnx-int8-ptq"]
    assert [r["op"] for r in layers] == ["Conv"] * 5 + ["Gemm"]  # edgenet's five convs and its classifier
    assert all(10 < r["sqnr_db"] < 80 for r in layers)
    assert (quick_run["dir"] / "quantize" / "sqnr.png").stat().st_size > 1000
    assert "Per-layer quantization error" in (quick_run["dir"] / "report.md").read_text()


def test_calibration_never_reads_the_test_set_and_is_seeded(data_root):
    from pipeline.config import DataConfig
    from pipeline.dataset import load_splits

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


def test_a_recipe_that_needs_another_names_its_variant(quick_copy, data_root, monkeypatch):
    """qat-cpu converts the file the qat recipe made in the same run (the stage's shared context, not a row name):
    with no QAT row it stops with one paragraph that names the variant, its file and its recipe."""
    from dataclasses import replace

    from pipeline import stages
    from pipeline.config import build_config
    from pipeline.stages import quantize as quantize_stage

    monkeypatch.setattr(variants, "VARIANTS", tuple(v for v in variants.VARIANTS if v.recipe != "qat"))
    cfg = build_config(model="edgenet", artifacts=quick_copy, data_root=data_root, force=False, quick=True)
    cfg = replace(cfg, quant=replace(cfg.quant, mode="qat"))
    with pytest.raises(PipelineError, match=r"^onnx-int8-qat-cpu \(model-int8-qat-cpu\.onnx, recipe qat-cpu\): the "
                                            r"qat-cpu recipe converts the QAT file, and no row with recipe qat"):
        quantize_stage.run(stages.Context(cfg))


def test_quant_none_skips_int8_and_says_so(quick_copy, data_root):
    r = invoke("run", "all", "--quick", "--quant", "none", "--artifacts", quick_copy, "--data-root", data_root)
    assert r.exit_code == 0, r.output
    rep = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    assert {s["name"] for s in rep["skipped"]} >= {"onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu",
                                                   "onnx-int8-qat-cpu"}
    assert rep["ladder"] == {}  # no INT8 rung was built
    assert not any(v["name"].startswith("onnx-int8") for v in rep["variants"])




# ------------------------------------------------------------------ fusion: every CPU INT8 file runs on int8 kernels

#: float compute onnxruntime may leave in an optimized graph: the plain ops, their fused forms, and NCHWc Conv
#: (domain com.microsoft.nchwc, op type Conv)
FLOAT_COMPUTE = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
INTEGER_COMPUTE = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul"}
#: read from the table, so a row added there is covered: INT8 files that onnxruntime runs with all optimizations
CPU_INT8 = [v for v in variants.VARIANTS if v.precision == "int8" and v.backend == "onnxruntime" and v.file
            and v.ort_optimization == "all"]


def _optimized_ops(path, tmp_path) -> list[str]:
    """Op types of onnxruntime's optimized graph of ``path`` (ORT_ENABLE_ALL, the CPU provider)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    so.log_severity_level = 3  # its warning that the saved graph is specific to this CPU
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_cpu_int8_rows_include_both_cpu_files():
    assert {"onnx-int8-cpu", "onnx-int8-qat-cpu"} <= {v.name for v in CPU_INT8}


@pytest.mark.parametrize("v", CPU_INT8, ids=lambda v: v.name)
def test_every_cpu_int8_file_is_fused_into_integer_kernels(quick_run, tmp_path, v):
    """No Conv, Gemm or MatMul is left in float in onnxruntime's optimized graph but the one the CPU form keeps
    in float on purpose, the first conv (it reads the one-channel image; faster in float): every other layer
    of the FP32 model became one integer kernel (the quick model: 6 QLinearConv and 1 QGemm)."""
    from exporters.precision import input_layers

    d = quick_run["dir"] / "export"
    ops = _optimized_ops(d / v.file, tmp_path)
    fp32 = onnx.load(str(d / "model-fp32.onnx"))
    assert input_layers(fp32) == [fp32.graph.node[0].name] and fp32.graph.node[0].op_type == "Conv"
    assert [op for op in ops if op in FLOAT_COMPUTE] == ["Conv"], v.name
    layers = [n.op_type for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(op for op in ops if op in INTEGER_COMPUTE) == sorted(["QLinearConv"] * (layers.count("Conv") - 1)
                                                                       + ["QGemm"] * layers.count("Gemm"))


def test_the_fusion_check_sees_float_layers(quick_run, tmp_path):
    """The same check on the TensorRT-placed QAT file (Q/DQ on layer inputs only): its convs stay in float."""
    ops = _optimized_ops(quick_run["dir"] / "export" / "model-int8-qat.onnx", tmp_path)
    assert sum(op in FLOAT_COMPUTE for op in ops) == 6  # every layer of edgenet: 5 convs and the classifier


def test_the_qat_cpu_file_keeps_the_learned_activation_scales(quick_run):
    """onnx-int8-qat-cpu quantizes each activation QAT quantized with QAT's scale (not a recalibrated one), and
    the QAT model's accuracy before export is recorded for the ladder."""
    from onnx import numpy_helper

    d = quick_run["dir"] / "export"

    def scales(path):
        m = onnx.load(str(path))
        init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return {n.input[0]: (float(init[n.input[1]]), int(init[n.input[2]])) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].ndim == 0}

    qat, cpu = scales(d / "model-int8-qat.onnx"), scales(d / "model-int8-qat-cpu.onnx")
    # onnxruntime leaves ReduceMean in float; the image is not quantized (the first conv runs in float)
    # edgenet: 11 activations QAT quantizes; the CPU form quantizes neither the image nor the float first conv's ReLU
    # (its max-pool output is the first int8 tensor), and onnxruntime leaves ReduceMean in float
    assert len(qat) == 11 and set(qat) - set(cpu) == {"mean", "input", "relu"}
    for tensor in set(qat) & set(cpu):
        assert cpu[tensor][0] == qat[tensor][0], tensor  # QAT's scale, not a recalibrated one
        assert cpu[tensor][1] == 0, tensor  # QAT's int8 grid from 0 in uint8: ReLU outputs (and pools of them)
    props = {p.key: p.value for p in onnx.load(str(d / "model-int8-qat-cpu.onnx")).metadata_props}
    assert props["precision"] == "int8" and props["quantization"].startswith("qat/")
    sim = json.loads((quick_run["dir"] / "quantize" / "qat-torch.json").read_text())
    assert sim["images"] == 10000 and 0.9 < sim["test_accuracy"] <= 1


def test_the_qat_file_quantizes_weights_per_output_channel(quick_run):
    """QAT's weight fake quantization is per channel (pipeline.training.qat.symmetric_int8_quantizer), and the exported QDQ
    file keeps it: each of edgenet's 6 weight tensors (5 convs, the classifier) is int8 with one scale per output
    channel on axis 0, and the scales differ (one per-tensor scale repeated would pass a length check)."""
    from onnx import numpy_helper

    m = onnx.load(str(quick_run["dir"] / "export" / "model-int8-qat.onnx"))
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    weights = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts
               and consts[n.input[0]].ndim >= 2]
    assert len(weights) == 6, [n.name for n in weights]
    for n in weights:
        w, scale = consts[n.input[0]], consts[n.input[1]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and axis == 0, (n.name, w.shape, scale.shape, axis)
        assert len(np.unique(scale)) > 1, n.name
