"""The validate stage's report against `pipeline report`: rebuilt from report.json alone, report.md comes out the same.
(On a quick run; the report's other tests read tests/fixtures/report.json and need none: tests/pipeline/report/.)"""
import shutil

from tests.helpers import invoke


def test_report_command_rebuilds_from_json_alone(quick_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(quick_run["dir"] / "report.json", run / "report.json")
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "report.md").read_text() == (quick_run["dir"] / "report.md").read_text()
    backends = {r["backend"] for r in quick_run["report"]["variants"]}
    # + the accuracy-vs-latency figure of each other target measured here: the browser, Intel (OpenVINO), mobile
    extra = ("onnxruntime-web" in backends) + ("openvino" in backends) + bool(backends & {"executorch", "litert"})
    assert len(list((run / "report").glob("*.png"))) == 7 + extra
