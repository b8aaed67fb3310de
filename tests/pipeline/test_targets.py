"""The targets table (pipeline/targets.py): bundle and deploy targets in one place, read by the variants, the
recommendation and the bundle."""
from dataclasses import replace

from pipeline import targets, variants
from pipeline.report import recommend
from pipeline.targets import BUNDLE, BUNDLES, DEPLOY, DeployTarget


def test_the_table_is_consistent():
    names = [t.name for t in BUNDLES]
    assert len(names) == len(set(names)) and list(BUNDLE) == names == list(targets.TARGETS)
    assert all(t.runner in ("python", "js", "openvino", "mobile") for t in BUNDLES)
    assert all(t.runner == "python" for t in BUNDLES if t.engines)  # build_engines.py and bench.py --engines
    assert [t.name for t in BUNDLES if t.site] == [targets.SITE] and BUNDLE[targets.SITE].runner == "js"
    keys = [t.key for t in DEPLOY]
    assert len(keys) == len(set(keys))
    for t in DEPLOY:
        assert t.bundle in BUNDLE, t.key
        assert t.bundle in variants.BY_NAME[t.build_from].bundle, t.key  # the bundle ships the file to build from
    # every bundle a variant row names is a row here
    assert {b for v in variants.VARIANTS for b in v.bundle} == set(targets.TARGETS)


def test_the_bundle_help_names_every_target_once():
    text = targets.help_text()
    assert text == ("jetson | gpu | cpu (Python, bench.py) | openvino (Python, bench.py on OpenVINO) | android (the "
                    ".pte and .tflite files, app snippets, check.py) | node (onnxruntime-node, classify.mjs) | "
                    "web (static page, classifier.js, onnxruntime-web wasm)")
    assert [w for w in text.replace("(", " ( ").split() if w in BUNDLE] == list(BUNDLE)


def _row(v) -> dict:
    """A report row's fields that the deploy targets read, from a variant row."""
    return {"name": v.name, "backend": v.backend, "provider": v.provider, "ort_optimization": v.ort_optimization}


def test_which_rows_measure_each_deploy_target():
    """The ``measures`` rule as data: CPU is every runtime on the CPU provider except the torch reference and the
    Q/DQ-as-written TensorRT files, the browser is the wasm rows, TensorRT every CUDA row, Intel the OpenVINO rows
    and mobile the ExecuTorch and LiteRT rows (which the CPU target weighs too)."""
    got = {t.key: [v.name for v in variants.VARIANTS if t.measures(_row(v))] for t in DEPLOY}
    edge = ["openvino-fp32", "openvino-bf16", "openvino-int8", "executorch-fp32", "executorch-int8", "litert-fp32",
            "litert-int8"]
    assert got == {
        "cpu": ["onnx-fp32", "onnx-fp16", "onnx-int8-cpu", "onnx-int8-qat-cpu", *edge],
        "browser": ["web-wasm-fp32", "web-wasm-int8"],
        "tensorrt": ["onnx-fp32-cuda", "trt-fp32", "trt-fp16", "trt-int8"],
        "intel": edge[:3],
        "mobile": edge[3:],
    }
    assert all(v.backend == variants.BROWSER for v in variants.VARIANTS if DEPLOY[1].measures(_row(v)))


def test_adding_one_deploy_row_is_enough_for_the_recommendation(quick_run, monkeypatch):
    """A new deploy target is one row: recommend (and so report.json's ``recommended``) judges it from its rows."""
    extra = DeployTarget("cpu-int8", "CPU, INT8 only", (("backend", "onnxruntime"), ("provider", "cpu"),
                                                         ("precision", "int8")), "cpu", "onnx-int8-cpu",
                         "pipeline bundle --target cpu --model {model}", unless=(("ort_optimization", "basic"),))
    monkeypatch.setattr(targets, "DEPLOY", DEPLOY + (extra,))
    rec = recommend.recommend(quick_run["report"])
    assert list(rec) == ["cpu", "browser", "tensorrt", "intel", "mobile", "cpu-int8"]
    assert rec["cpu-int8"]["measured"] is True
    assert rec["cpu-int8"]["variant"] in ("onnx-int8-cpu", "onnx-int8-qat-cpu")  # onnxruntime's INT8 rows only
    # a row that measures nothing here falls back to its build_from file
    monkeypatch.setattr(targets, "DEPLOY", DEPLOY + (replace(extra, where=(("provider", "npu"),)),))
    rec = recommend.recommend(quick_run["report"])["cpu-int8"]
    assert rec["measured"] is False and rec["file"] == "model-int8-cpu.onnx"
