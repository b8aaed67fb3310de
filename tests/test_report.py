"""The human report: markdown, self-contained HTML with figures, rebuilt from report.json alone."""
import base64
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from tests.conftest import invoke


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.headers = 0, [], []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(a["src"])
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data.strip())


def test_html_report_is_self_contained_with_table_and_figures(quick_run):
    page = _Page()
    page.feed((quick_run["dir"] / "report.html").read_text())
    assert page.tables >= 2
    for col in ("variant", "backend", "provider", "precision", "size", "accuracy", "delta (pp)", "flips",
                "agreement", "max abs diff"):
        assert col in page.headers
    assert len(page.images) == 5  # latency, accuracy, confusion, curves, SQNR
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_records_confusion_efficiency_and_ratios(quick_run):
    rep = quick_run["report"]
    conf = rep["confusion"]
    assert conf["variant"] == rep["shipped"] and sum(map(sum, conf["matrix"])) == 10000
    assert rep["cpu_peak_gflops"] > 0 and "matmul" in rep["cpu_peak_method"]
    for v in rep["variants"]:
        eff = v["efficiency"]
        assert eff["gflops"] > 0 and eff["fraction_of_peak"] == pytest.approx(eff["gflops"] / rep["cpu_peak_gflops"], rel=0.01)
    assert set(rep["speedup_vs_torch"]) >= {"onnx-fp32"}
    assert set(rep["variants"][0]["latency"]) == {"1", "8", "64", "256"}


def test_report_command_rebuilds_from_json_alone(quick_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(quick_run["dir"] / "report.json", run / "report.json")
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "report.md").read_text() == (quick_run["dir"] / "report.md").read_text()
    assert len(list((run / "report").glob("*.png"))) == 5


def test_report_command_bad_input(tmp_path):
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "report.json").write_text('{"not": "a report"}')
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "is not a pipeline report" in r.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(quick_run, tmp_path):
    html = quick_run["dir"] / "report.html"
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
         "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert "onnx-int8-ptq" in dom.stdout and dom.stdout.count("<img") == 5
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / 'q'}", f"--screenshot={shot}", "--window-size=1200,2400",
                    html.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000  # a rendered page, not a blank one
