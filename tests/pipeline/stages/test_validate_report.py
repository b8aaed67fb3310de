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
    browser = any(r["name"].startswith("web-wasm") for r in quick_run["report"]["variants"])
    assert len(list((run / "report").glob("*.png"))) == 7 + browser  # + the browser's accuracy-vs-latency figure
