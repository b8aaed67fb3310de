"""`pipeline device add RESULT.json`: a result bench.py wrote on a device (here: the bare venv, run directly) is
checked like one fetched over ssh. Altered, NaN, malformed and other-model results are refused with nothing
recorded; figures that disagree with the report are recorded with "equals report: NO", exit 1."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import invoke, quick_bundle
from tests.pipeline.devices import sshd as _sshd


@pytest.fixture(scope="module")
def bench_result(quick_run, data_root, tmp_path_factory):
    """bench.py --json of the quick run's cpu bundle, run by a Python with numpy and onnxruntime only."""
    folder = quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("bundles"), "cpu")
    py = _sshd.bare_python(tmp_path_factory.mktemp("device") / "venv")
    out = tmp_path_factory.mktemp("result") / "result.json"
    r = subprocess.run([str(py), "bench.py", "--json", str(out), "--rounds", "3", "--seconds", "0.01"], cwd=folder,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


def _digest(body):
    import hashlib

    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(path, res, redigest=True):
    res = dict(res)
    if redigest:
        res["digest"] = _digest({k: v for k, v in res.items() if k != "digest"})
    path.write_text(json.dumps(res))
    return path


def test_add_records_a_result_file_and_the_report_shows_it(quick_copy, bench_result, tmp_path):
    f = write(tmp_path / "r.json", bench_result, redigest=False)
    result = invoke("device", "add", f, "--name", "air-gapped box", "--artifacts", quick_copy)
    assert result.exit_code == 0, result.output
    rep = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    (m,) = rep["devices"]["measurements"]
    assert m["source"] == "file" and m["name"] == "air-gapped box" and m["target"] == "cpu"
    assert all(v["equals_report"] for v in m["variants"].values())
    assert "### air-gapped box (cpu, file," in (quick_copy / "edgenet" / "report.md").read_text()


def _refused(quick_copy, path, *needles):
    before = (quick_copy / "edgenet" / "report.json").read_bytes()
    result = invoke("device", "add", path, "--artifacts", quick_copy)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    for n in needles:
        assert n in out
    assert "Nothing was recorded" in out
    assert not (quick_copy / "edgenet" / "devices").exists()
    assert (quick_copy / "edgenet" / "report.json").read_bytes() == before


def test_an_altered_result_is_refused(quick_copy, bench_result, tmp_path):
    res = json.loads(json.dumps(bench_result))
    res["rows"][0]["latency"]["1"]["p50_ms"] /= 10  # a faster figure typed in, digest left as it was
    _refused(quick_copy, write(tmp_path / "r.json", res, redigest=False), "altered or damaged")


def test_a_result_holding_nan_is_refused(quick_copy, bench_result, tmp_path):
    text = json.dumps(bench_result).replace('"accuracy": ' + json.dumps(bench_result["rows"][0]["accuracy"]),
                                            '"accuracy": NaN', 1)
    (tmp_path / "r.json").write_text(text)
    _refused(quick_copy, tmp_path / "r.json", "NaN")
    res = json.loads(json.dumps(bench_result))
    res["rows"][0]["max_abs_diff"] = None  # what bench.py writes for NaN logits
    res["rows"][0]["nonfinite"] = 3
    _refused(quick_copy, write(tmp_path / "r2.json", res), "NaN or infinite logits")


def test_a_malformed_or_foreign_result_is_refused(quick_copy, bench_result, tmp_path):
    (tmp_path / "m.json").write_text('{"rows": [')
    _refused(quick_copy, tmp_path / "m.json", "malformed JSON")
    res = json.loads(json.dumps(bench_result))
    rel = next(iter(res["bundle"]["files"]))
    res["bundle"]["files"][rel] = "0" * 64  # measured another model file
    _refused(quick_copy, write(tmp_path / "o.json", res), "another bundle or model", rel)
    res = json.loads(json.dumps(bench_result))
    res["bundle"]["model"] = "othernet"
    _refused(quick_copy, write(tmp_path / "p.json", res), "model 'othernet'")


def test_figures_that_disagree_are_recorded_with_equals_report_no_and_exit_1(quick_copy, bench_result, tmp_path):
    res = json.loads(json.dumps(bench_result))
    row = next(r for r in res["rows"] if r["variant"] == "onnx-fp32")
    row["flip_indices"] = sorted(set(row["flip_indices"]) | {1234})  # the device flipped test image 1234
    row["flips"] = len(row["flip_indices"])
    row["agreement"] = 1 - row["flips"] / res["images"]
    result = invoke("device", "add", write(tmp_path / "r.json", res), "--name", "odd", "--artifacts", quick_copy)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "odd: `onnx-fp32` equals report: NO" in out and "1234" in out
    m = json.loads((quick_copy / "edgenet" / "devices" / "odd.json").read_text())
    assert m["variants"]["onnx-fp32"]["equals_report"] is False
    md = (quick_copy / "edgenet" / "report.md").read_text()
    assert "| NO |" in md and "1 newly flipped (1234)" in md


def test_a_changed_model_marks_the_recording_stale(quick_copy, bench_result, tmp_path):
    from pipeline.store.devices import load_all

    f = write(tmp_path / "r.json", bench_result, redigest=False)
    assert invoke("device", "add", f, "--name", "box", "--artifacts", quick_copy).exit_code == 0
    run = quick_copy / "edgenet"
    stages = json.loads((run / "stages.json").read_text())
    entry = next(e for e in stages.values() if isinstance(e, dict) and "export/model-fp32.onnx" in e.get("outputs", {}))
    entry["outputs"]["export/model-fp32.onnx"]["sha256"] = "1" * 64  # what a rerun that changed the model records
    (run / "stages.json").write_text(json.dumps(stages))
    (m,) = load_all(run)
    assert m["stale"] is True
    from pipeline.report.on_devices import attach, recommended

    assert recommended(json.loads((run / "report.json").read_text()), [m]) == {}
    assert "STALE" in "\n".join(__import__("pipeline.report.on_devices", fromlist=["x"]).markdown(
        attach(json.loads((run / "report.json").read_text()), run)))
