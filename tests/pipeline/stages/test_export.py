"""pipeline/stages/export.py: a model that cannot be exported stops the run with a paragraph, keeping what the
train stage wrote. (The exported files themselves:
tests/pipeline/test_cli.py::test_quick_run_artifacts_describe_themselves.)"""
from tests.helpers import invoke


def test_untraceable_user_model_fails_with_a_paragraph(tmp_path, data_root):
    r = invoke("run", "all", "--quick", "--model", "tests.fixtures.user_models:DataDependent",
               "--artifacts", tmp_path, "--data-root", data_root)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Could not export" in r.output
    assert (tmp_path / "tests.fixtures.user_models__DataDependent" / "train" / "model.pt").is_file()


def _ctx(tmp_path, data_root, **quant):
    from dataclasses import replace

    from pipeline import stages
    from pipeline.config import build_config

    cfg = build_config(model="edgenet", artifacts=tmp_path, data_root=data_root, force=False, quick=True)
    return stages.Context(replace(cfg, quant=replace(cfg.quant, **quant)) if quant else cfg)


def test_each_stage_makes_the_rows_whose_recipe_it_registers(tmp_path, data_root, monkeypatch):
    """The export and quantize stages make a file for each row whose recipe they own, in table order, once per
    file (a row with an existing recipe and an existing file makes nothing new), and only as --quant says."""
    from dataclasses import replace

    from pipeline import variants
    from pipeline.stages import recipes

    ctx = _ctx(tmp_path, data_root)
    # the edge runtimes' rows are made too when their runtimes are installed (CI installs them all)
    assert [v.name for v in recipes.rows(ctx, "export")] == ["onnx-fp32", "onnx-fp16", "openvino-fp32",
                                                              "executorch-fp32", "litert-fp32"]
    assert [v.name for v in recipes.rows(ctx, "quantize")] == ["onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu",
                                                                "onnx-int8-qat-cpu", "openvino-int8", "executorch-int8",
                                                                "litert-int8"]
    again = replace(variants.BY_NAME["onnx-fp16"], name="onnx-fp16-again")  # same recipe, same file
    other = replace(variants.BY_NAME["onnx-fp16"], name="onnx-fp16-b", file="model-fp16-b.onnx")
    monkeypatch.setattr(variants, "VARIANTS", variants.VARIANTS + (again, other))
    assert [v.name for v in recipes.rows(ctx, "export")] == ["onnx-fp32", "onnx-fp16", "openvino-fp32",
                                                              "executorch-fp32", "litert-fp32", "onnx-fp16-b"]
    assert recipes.key(ctx, "export")[-1] == ["onnx-fp16-b", "fp16", "model-fp16-b.onnx", True]
    assert [v.name for v in recipes.rows(_ctx(tmp_path, data_root, mode="ptq", cpu_variant=False), "quantize")] == [
        "onnx-int8-ptq", "openvino-int8", "executorch-int8", "litert-int8"]
    assert recipes.rows(_ctx(tmp_path, data_root, mode="none"), "quantize") == []


def test_a_recipe_no_stage_makes_is_refused_before_anything_is_written(tmp_path, data_root, monkeypatch):
    from dataclasses import replace

    import pytest

    from pipeline import variants
    from pipeline.errors import PipelineError
    from pipeline.stages import recipes

    bad = replace(variants.BY_NAME["onnx-fp16"], name="onnx-fp8", file="model-fp8.onnx", recipe="fp8")
    monkeypatch.setattr(variants, "VARIANTS", variants.VARIANTS + (bad,))
    with pytest.raises(PipelineError, match=r"Variant onnx-fp8 names recipe 'fp8', which no stage makes; known "
                                            r"recipes: openvino-fp32, executorch-fp32, litert-fp32, openvino-int8, "
                                            r"executorch-int8, litert-int8, fp32, fp16, ptq, ptq-cpu, qat, qat-cpu\."):
        recipes.rows(_ctx(tmp_path, data_root), "export")
    assert not (tmp_path / "edgenet").exists() or not any((tmp_path / "edgenet").rglob("*.onnx"))
