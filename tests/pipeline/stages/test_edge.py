"""The edge runtimes' rows (pipeline/stages/edge.py, through recipes.py, validate.py and measure/runners.py) on bad
input, through the real pipeline on real MNIST (issue 24, "Bad input"): a runtime missing, a model a converter cannot
lower, a batch over a ``.pte``'s bound, and a file from another run. Each must end in one paragraph naming the
runtime (and the operator or bound), with the other rows going on, never a traceback or a lost file.

The model a converter cannot lower is a real user model, ``tests.fixtures.user_models:SortsRows`` (``torch.sort``
over each image row): ONNX, onnxruntime and OpenVINO take it; ExecuTorch's XNNPACK does not and its portable
kernels lack ``aten::sort``; litert-torch lowers it to ``STABLEHLO_SORT``, which the LiteRT interpreter lacks.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, invoke, one_paragraph, snapshot

SORTS = "tests.fixtures.user_models:SortsRows"
EDGE_ROWS = ("openvino-fp32", "openvino-bf16", "openvino-int8", "executorch-fp32", "executorch-int8", "litert-fp32",
             "litert-int8")


def _need(*names: str) -> None:
    """Skip, with the reason, unless this machine can build and run the rows ``names``."""
    from pipeline.measure.runners import unavailable
    from pipeline.variants import BY_NAME

    for name in names:
        why = unavailable(BY_NAME[name], build=True)
        if why:
            pytest.skip(f"{name}: {why}")


def _run_dir(artifacts: Path) -> Path:
    (report,) = artifacts.glob("*/report.json")
    return report.parent


@pytest.fixture(scope="module")
def sorts_run(tmp_path_factory, data_root):
    """`pipeline run all --quick --model tests.fixtures.user_models:SortsRows`, once per module."""
    _need("openvino-fp32", "executorch-fp32", "litert-fp32")
    artifacts = tmp_path_factory.mktemp("sorts")
    r = invoke("run", "all", "--quick", "--artifacts", artifacts, "--data-root", data_root, "--model", SORTS)
    run = _run_dir(artifacts)
    return {"result": r, "artifacts": artifacts, "dir": run, "report": json.loads((run / "report.json").read_text())}


def _skipped(report: dict) -> dict[str, str]:
    return {s["name"]: s["reason"] for s in report["skipped"]}


def _others_are_there(report: dict, skipped_here: set[str]) -> None:
    """Every row of the table is either measured or skipped, and the rows skipped besides ``skipped_here`` are only
    those this machine cannot run at all (no GPU, TensorRT or browser), never another edge row."""
    from pipeline.measure.runners import unavailable
    from pipeline.variants import BY_NAME, VARIANTS

    measured = {v["name"] for v in report["variants"]}
    skipped = _skipped(report)
    assert measured | set(skipped) == {v.name for v in VARIANTS}
    assert skipped_here <= set(skipped) and not skipped_here & measured
    for name in set(skipped) - skipped_here:
        v = BY_NAME[name]
        assert v.requires in ("cuda", "tensorrt", "browser") or unavailable(v), (name, skipped[name])
    for name in set(EDGE_ROWS) - skipped_here:
        assert name in measured or unavailable(BY_NAME[name]), (name, skipped.get(name))


def test_a_model_a_converter_cannot_lower_skips_that_runtimes_rows_naming_the_operator(sorts_run, data_root):
    r, run, report = sorts_run["result"], sorts_run["dir"], sorts_run["report"]
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    out = " ".join(r.output.split())
    skipped = _skipped(report)
    refused = {"executorch-fp32", "executorch-int8", "litert-fp32", "litert-int8"}
    for name in refused:
        reason = skipped[name]
        assert "\n" not in reason and "Traceback" not in reason, reason  # one paragraph
        runtime, op = ("ExecuTorch", "aten::sort") if name.startswith("executorch") else ("LiteRT", "SORT")
        assert runtime in reason and op in reason and "was not made" in reason, reason
        assert f"{name} skipped: {name}" in out  # the run's warning says it as it happens
        assert not (run / "export" / f"model-{name.split('-')[1]}.{'pte' if 'executorch' in name else 'tflite'}").exists()
    # ... and every other row was built and judged, OpenVINO's included (it lowers TopK)
    _others_are_there(report, refused)
    assert {"openvino-fp32", "openvino-int8", "onnx-fp32", "onnx-int8-ptq"} <= {v["name"] for v in report["variants"]}
    # the refusals are recorded outputs: the folder verifies, and a rerun redoes nothing and reports the same
    assert invoke("verify", run).exit_code == 0
    before = snapshot(sorts_run["artifacts"])
    again = invoke("run", "all", "--quick", "--artifacts", sorts_run["artifacts"], "--data-root", data_root,
                   "--model", SORTS)
    assert again.exit_code == 0, again.output
    assert _skipped(json.loads((run / "report.json").read_text())) == skipped
    after = snapshot(sorts_run["artifacts"])
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == \
        {k: v for k, v in before.items() if not k.endswith(".lock")}


@pytest.mark.parametrize("hidden, rows, words", [
    ("ai_edge_litert", {"litert-fp32", "litert-int8"}, ("LiteRT", "pip install -e .[litert]")),
    # the interpreter is here but not the converter's venv: the rows are neither built nor a missing file
    (None, {"litert-fp32", "litert-int8"}, ("LiteRT", "python -m runtime.litert_venv")),
])
def test_a_missing_runtime_skips_exactly_its_rows_with_the_install_command(quick_copy, data_root, tmp_path, hidden,
                                                                            rows, words):
    """The runtime's import fails (``sys.modules[name] = None``, as when the package is absent), or LiteRT's converter
    venv is not there (``EDGE_LITERT_VENV`` names an empty folder), in a real `pipeline run all` of the quick run's
    copy: its rows are skipped with the reason and the install command, every other row is built and measured,
    exit 0."""
    import os

    _need(*rows)
    code = ((f"import sys; sys.modules[{hidden!r}] = None; " if hidden else "import sys; ")
            + "from pipeline.cli import main; sys.argv = ['pipeline', *sys.argv[1:]]; main()")
    env = {**os.environ, **({} if hidden else {"EDGE_LITERT_VENV": str(tmp_path / "no-venv")})}
    done = subprocess.run([sys.executable, "-c", code, "run", "all", "--quick", "--artifacts", str(quick_copy),
                           "--data-root", str(data_root)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    skipped = _skipped(report)
    for name in rows:
        assert all(w in skipped[name] for w in words), skipped[name]
    _others_are_there(report, rows)
    assert invoke("verify", quick_copy / "edgenet").exit_code == 0


def test_a_batch_over_a_pte_bound_is_one_paragraph_naming_executorch_and_the_bound(quick_run):
    """The runner reads the bound from the loaded program (not the sidecar) and refuses a larger batch in one
    paragraph; the bound itself runs."""
    _need("executorch-fp32")
    from pipeline.measure.executorch_runner import ExecutorchRunner
    from runtime.errors import RuntimeInputError

    pte = quick_run["dir"] / "export" / "model-fp32.pte"
    bound = json.loads(Path(f"{pte}.json").read_text())["max_batch"]
    with ExecutorchRunner(pte) as runner:
        assert runner.batch_range == (1, bound)
        ok = runner.infer({"input": np.zeros((bound, 1, 28, 28), np.float32)})["logits"]
        assert ok.shape == (bound, 10) and np.isfinite(ok).all()
        with pytest.raises(RuntimeInputError) as e:
            runner.infer({"input": np.zeros((bound + 1, 1, 28, 28), np.float32)})
    text = str(e.value)
    assert "\n" not in text and "ExecuTorch" in text and f"1 to {bound}" in text and str(bound + 1) in text


@pytest.mark.parametrize("name", ["model-fp32.pte", "model-fp32.xml", "model-fp32.tflite"])
def test_bench_refuses_an_edge_file_in_one_paragraph(quick_run, tmp_path, name):
    """`pipeline bench` times ONNX files only: an edge runtime's file (copied out of the run, so no manifest applies)
    is one paragraph and exit 2, never a traceback, and nothing is written."""
    src = quick_run["dir"] / "export" / name
    if not src.is_file():
        pytest.skip(f"the quick run has no {name} here (its runtime is missing)")
    for f in [src, *src.parent.glob(f"{src.stem}.bin")] if name.endswith(".xml") else [src]:
        shutil.copy(f, tmp_path / f.name)
    before = snapshot(tmp_path)
    out = one_paragraph(invoke("bench", tmp_path / name, "--rounds", "3"))
    assert name in out and "could not load" in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["openvino-ir-of-another-run", "pte-of-another-file", "tflite-of-another-file"])
def test_an_edge_file_from_another_run_is_refused_before_it_is_read(quick_copy, sorts_run, data_root, case):
    """Like the ONNX files (tests/test_faults.py), an edge file replaced by one from elsewhere (the OpenVINO IR of the
    SortsRows run; the FP32 .pte/.tflite put in place of the INT8 one) is refused by the manifest check before any
    stage reads it: `verify` exits 1 and `run` exits 2 naming the file (altered, or truncated when it is smaller), and nothing in the
    folder changes."""
    export = quick_copy / "edgenet" / "export"
    if case == "openvino-ir-of-another-run":
        _need("openvino-int8")
        for f in ("model-int8.xml", "model-int8.bin"):
            shutil.copy(sorts_run["dir"] / "export" / f, export / f)
        named = "export/model-int8.xml"
    else:
        ext = case.split("-")[0]
        _need(f"{'executorch' if ext == 'pte' else 'litert'}-int8")
        shutil.copy(export / f"model-fp32.{ext}", export / f"model-int8.{ext}")
        named = f"export/model-int8.{ext}"
    before = snapshot(quick_copy)
    r = invoke("verify", quick_copy / "edgenet")
    kind = "truncated" if "truncated" in r.output else "altered"  # a smaller file is reported as cut off
    assert r.exit_code == 1 and f"{kind} (" in r.output and f"{kind} (shorter than recorded): {named}" in r.output \
        or f"altered (SHA-256 differs from the manifest): {named}" in r.output, r.output
    out = one_paragraph(invoke("run", "all", "--quick", "--artifacts", quick_copy, "--data-root", data_root))
    assert named in out and kind in out and "Nothing was changed" in out
    assert snapshot(quick_copy) == before


def test_the_edge_int8_files_keep_the_onnx_ptq_files_fp32_layers_under_int8_budget(fragile_budget_run):
    """FragileAtInit under --int8-budget 0.5 (tests/pipeline/measure/test_budget.py: the ONNX PTQ file keeps features.3
    in FP32): the OpenVINO IR and the .pte keep the same layers in FP32, read from the written files themselves (the
    IR's weight constants; the .pte's XNNPACK filter tensors), every other weighted layer INT8, and name them in their
    metadata. LiteRT's file does not follow it, and its sidecar says so."""
    _need("openvino-int8", "executorch-int8")
    from exporters.executorch import layer_precisions as pte_layers
    from exporters.openvino import layer_precisions as ir_layers
    from exporters.sensitivity import layers as onnx_layers
    from runtime.openvino import read_metadata

    export = fragile_budget_run / "export"
    fallback = json.loads((export.parent / "quantize" / "sensitivity.json").read_text())["fallback"]["onnx-int8-ptq"]
    kept, nodes = fallback["fp32_layers"], fallback["onnxruntime_nodes_to_exclude"]
    assert kept and kept[0] == "features.3"
    order = onnx_layers(export / "model-fp32.onnx")  # the model's weighted layers in graph order
    assert len(order) > len(kept)

    ir = ir_layers(export / "model-int8.xml")
    assert ir == {n: ("fp32" if n in nodes else "int8") for layer in order for n in layer.nodes}
    assert json.loads(read_metadata(export / "model-int8.xml")["int8_fp32_nodes"]) == nodes

    assert pte_layers(export / "model-int8.pte") == ["fp32" if layer.label in kept else "int8" for layer in order]
    side = json.loads((export / "model-int8.pte.json").read_text())
    assert side["int8_fp32_modules"] == kept and side["quantization"].endswith("/fp32:" + ",".join(kept))
    assert set(pte_layers(export / "model-fp32.pte")) == {"fp32"}  # the reader tells the two apart

    if (export / "model-int8.tflite.json").is_file():
        assert "not applied" in json.loads((export / "model-int8.tflite.json").read_text())["int8_budget_fallback"]
