"""pipeline/report/ladder.py: the accuracy ladder built from measured rows (each rung's change from the one before, rungs
not measured said so), and a real run's ladder in report.json and report.md (tests/fixtures/report.json: no training)."""
from pipeline.report import ladder


def _row(name, accuracy):
    return {"name": name, "accuracy": accuracy}


def test_a_loss_is_pinned_to_the_rung_that_caused_it():
    rows = [_row("torch-fp32", 0.98), _row("onnx-int8-qat", 0.97), _row("onnx-int8-qat-cpu", 0.9695)]
    lad = ladder.build(rows, [], {"test_accuracy": 0.9790})
    qat = lad["qat"]
    assert [r["source"] for r in qat] == ["torch-fp32", ladder.QAT_TORCH, "onnx-int8-qat", "onnx-int8-qat-cpu", None]
    assert [r["delta_pp"] for r in qat[:4]] == [None, -0.1, -0.9, -0.05]  # the export (rung 3) lost most
    assert [r["vs_fp32_pp"] for r in qat[:4]] == [0.0, -0.1, -1.0, -1.05]
    assert qat[4]["accuracy"] is None and qat[4]["not_measured"].startswith("not measured here: no TensorRT engine")
    assert "ptq" not in lad  # no PTQ rung was measured: no ladder


def test_a_rung_not_measured_says_why_and_the_next_compares_with_the_last_measured():
    rows = [_row("torch-fp32", 0.98), _row("onnx-int8-ptq", 0.975)]
    lad = ladder.build(rows, [{"name": "onnx-int8-cpu", "reason": "not built with --quant ptq"},
                              {"name": "trt-int8", "reason": "TensorRT is not installed"}], None)
    ptq = lad["ptq"]
    assert ptq[2]["not_measured"] == "not measured here: not built with --quant ptq" and ptq[2]["delta_pp"] is None
    assert ptq[3]["source"] == "trt-int8" and ptq[3]["not_measured"] == "not measured here: TensorRT is not installed"
    rows.append(_row("trt-int8", 0.974))
    ptq = ladder.build(rows, [], None)["ptq"]
    assert ptq[3]["delta_pp"] == -0.1  # against rung 2, the last one measured
    assert "qat" not in ladder.build(rows, [], None)  # QAT did not run


def test_a_real_runs_report_has_the_ladder(real_report, rendered_report):
    lad = real_report["ladder"]
    rows = {v["name"]: v for v in real_report["variants"]}
    qat = {"test_accuracy": lad["qat"][1]["accuracy"]}  # the rung measured inside the quantize stage
    assert ladder.build(real_report["variants"], real_report["skipped"], qat) == lad  # rebuilt from the rows alone
    assert set(lad) == {"ptq", "qat", "openvino", "executorch", "litert"}  # the fixture run had every runtime
    for rungs in lad.values():
        measured = [r for r in rungs if r["accuracy"] is not None]
        assert measured[0]["source"] == "torch-fp32"
        for r in measured:
            if r["source"] in rows:
                assert r["accuracy"] == rows[r["source"]]["accuracy"]
        assert abs(sum(r["delta_pp"] for r in measured[1:]) - measured[-1]["vs_fp32_pp"]) < 1e-3
    assert lad["qat"][1]["source"] == ladder.QAT_TORCH and lad["qat"][1]["accuracy"] > 0.9
    if "trt-int8" not in rows:  # no TensorRT on this machine: the rung says so
        assert lad["ptq"][-1]["not_measured"].startswith("not measured here: ")
    md = (rendered_report / "report.md").read_text()
    assert "## Accuracy ladder" in md and "INT8 simulated in torch: the QAT model before export" in md


def test_a_table_without_a_rungs_variant_still_gives_a_ladder(monkeypatch):
    from pipeline import variants

    monkeypatch.setattr(variants, "VARIANTS", tuple(v for v in variants.VARIANTS
                                                    if v.name not in ("onnx-int8-ptq", "trt-int8")))
    lad = ladder.build([_row("torch-fp32", 0.98), _row("onnx-int8-cpu", 0.97)], [], None)
    assert [r["not_measured"] for r in lad["ptq"]] == [
        None, "not measured here: not in the variant table", None,
        "not measured here: no TensorRT engine is built from onnx-int8-ptq in the variant table"]
    assert lad["ptq"][2]["delta_pp"] == -1.0
