"""pipeline/report/ (assemble, markdown, html, figures) and `pipeline report`: the report assembled from measured rows,
markdown, self-contained HTML with figures, rebuilt from report.json alone; report.json's path forms and schema.
Which file is recommended where: test_recommend.py.

Most tests read tests/fixtures/report.json (`real_report`, a real run's report) or its rendering
(`rendered_report`): no training. That `pipeline report` rebuilds what the validate stage wrote needs a run:
tests/pipeline/stages/test_validate_report.py."""
import base64
import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.helpers import invoke, one_paragraph, snapshot


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.headers, self.refs = 0, [], [], []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(a["src"])
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data.strip())


def _reassembled(rep: dict) -> dict:
    """assemble() fed what the validate stage gave it for the run behind ``rep``: its rows (without what assemble
    adds to them), the training summary, and logits whose argmax reproduces its confusion matrix."""
    from pipeline.config import build_config
    from pipeline.report import assemble, ladder

    rows = [{k: v for k, v in r.items() if k not in ("efficiency", "vs_fp32")} for r in copy.deepcopy(rep["variants"])]
    conf = rep["confusion"]
    cells = [(i, j, n) for i, row in enumerate(conf["matrix"]) for j, n in enumerate(row)]
    labels = np.array([i for i, _, n in cells for _ in range(n)])
    predicted = np.eye(10, dtype=np.float32)[[j for _, j, n in cells for _ in range(n)]]
    t = rep["train"]
    ckpt = {"summary": {k: t[k] for k in ("epochs", "seconds", "val_accuracy", "test_accuracy", "best_epoch", "device",
                                          "train_images", "val_images", "world_size", "throughput")},
            "train_config": t["config"], "classes": conf["classes"]}
    qat = next(r for r in rep["ladder"]["qat"] if r["source"] == ladder.QAT_TORCH)
    return assemble.assemble(build_config(model=rep["model"], quick=rep["quick"]), ckpt, rows, rep["skipped"],
                             {r["name"]: predicted for r in rows}, labels, params=rep["params"],
                             macs=rep["macs_per_image"], peak_gflops=rep["cpu_peak_gflops"],
                             environment=rep["environment"], history=t["history"], quantization=rep["quantization"],
                             qat_torch={"test_accuracy": qat["accuracy"]}, timing=rep["timing"])


def test_assemble_rebuilds_a_real_runs_report_from_its_rows(real_report):
    """Everything assemble derives (efficiency, speed ratios, INT8 against FP32, the ladder, the recommendation, the
    confusion matrix) comes out of the real run's rows as the run wrote it, in report.json's key order; the
    recommendation is computed once, there."""
    from unittest import mock

    from pipeline.report import recommend

    with mock.patch.object(recommend, "recommend", wraps=recommend.recommend) as counted:
        rep = _reassembled(real_report)
    assert counted.call_count == 1
    assert list(rep) == list(real_report)
    rep["created"] = real_report["created"]
    # the peak is stored rounded to 0.1 GFLOP/s, which moves a fraction of it by up to 0.05 / peak of itself
    rel = 0.05 / real_report["cpu_peak_gflops"] + 1e-9
    for got, want in zip(rep["variants"], real_report["variants"]):
        assert got.pop("efficiency")["fraction_of_peak"] == pytest.approx(want.pop("efficiency")["fraction_of_peak"],
                                                                          rel=rel, abs=2e-4)
    assert rep == real_report


def test_html_report_is_self_contained_with_table_and_figures(rendered_report):
    page = _Page()
    page.feed((rendered_report / "report.html").read_text())
    assert page.tables >= 2
    for col in ("variant", "backend", "provider", "precision", "size", "accuracy", "delta (pp)", "flips",
                "agreement", "max abs diff"):
        assert col in page.headers
    # latency, accuracy, accuracy vs CPU latency (and vs browser latency, when the quick run measured the browser),
    # confusion, curves, SQNR, sensitivity
    # + accuracy vs latency on the browser, Intel (OpenVINO) and mobile (ExecuTorch, LiteRT) targets: the fixture's run
    # measured the browser and had every edge runtime
    assert len(page.images) == 10
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.refs and all(r.startswith("data:") for r in page.refs)  # nothing loaded from elsewhere


def test_report_records_confusion_efficiency_and_ratios(real_report):
    rep = _reassembled(real_report)
    conf = rep["confusion"]
    assert conf["variant"] == rep["recommended"]["cpu"]["variant"] and sum(map(sum, conf["matrix"])) == 10000
    assert rep["cpu_peak_gflops"] > 0 and "matmul" in rep["cpu_peak_method"]
    for v in rep["variants"]:
        eff = v["efficiency"]
        assert eff["gflops"] > 0 and eff["fraction_of_peak"] == pytest.approx(eff["gflops"] / rep["cpu_peak_gflops"], rel=0.01)
        assert eff["gflops"] == pytest.approx(2 * rep["macs_per_image"] * v["latency"]["256"]["throughput_per_s"] / 1e9,
                                              abs=0.01)
    lat = {v["name"]: v["latency"] for v in rep["variants"]}
    assert set(rep["speedup_vs_torch"]) == set(lat) - {"torch-fp32"}
    for name, r in rep["speedup_vs_torch"].items():
        assert r["throughput_ratio"] == pytest.approx(
            lat[name]["256"]["throughput_per_s"] / lat["torch-fp32"]["256"]["throughput_per_s"])
        assert r["p50_ratio"] == pytest.approx(lat["torch-fp32"]["1"]["p50_ms"] / lat[name]["1"]["p50_ms"])
    assert set(rep["variants"][0]["latency"]) == {"1", "8", "64", "256"}


def test_int8_rows_state_their_speed_against_fp32_and_the_cpu_flags(real_report):
    from pipeline.measure.environment import INT8_FLAGS
    from pipeline.report.markdown import render_markdown

    rep = _reassembled(real_report)
    rows = {v["name"]: v for v in rep["variants"]}
    int8 = {n for n, v in rows.items() if v["precision"] == "int8"}
    assert {n for n, v in rows.items() if v.get("vs_fp32")} == int8 >= {"onnx-int8-cpu", "onnx-int8-qat-cpu"}
    for name in int8:
        # the FP32 row of its own backend and provider, not torch: onnx-fp32 for onnxruntime on the CPU, web-wasm-fp32
        # in the browser, each edge runtime's own FP32 row
        against = {"onnxruntime": "onnx-fp32", "onnxruntime-web": "web-wasm-fp32", "openvino": "openvino-fp32",
                   "executorch": "executorch-fp32", "litert": "litert-fp32"}[rows[name]["backend"]]
        vs, lat, fp32 = rows[name]["vs_fp32"], rows[name]["latency"], rows[against]["latency"]
        assert vs["against"] == against
        assert vs["throughput_ratio"] == pytest.approx(lat["256"]["throughput_per_s"] / fp32["256"]["throughput_per_s"])
        assert vs["p50_ratio"] == pytest.approx(fp32["1"]["p50_ms"] / lat["1"]["p50_ms"])
    flags = rep["environment"]["cpu_flags"]
    assert set(flags) <= set(INT8_FLAGS) and "avx2" in flags  # every x86 host this runs on has AVX2
    line = next(ln for ln in render_markdown(rep).splitlines() if ln.startswith("INT8 speed against FP32"))
    ratio = rows["onnx-int8-qat-cpu"]["vs_fp32"]["throughput_ratio"]
    assert all(f in line for f in flags) and f"`onnx-int8-qat-cpu` {ratio:.2f}x FP32 throughput" in line


def test_the_timing_section_and_figures_not_to_be_trusted(real_report, tmp_path):
    """The Timing section states the rounds, the spread's definition and each session's contention signals; a session
    that says its figures are not to be trusted puts a warning, with the reasons, at the top of "What to ship"."""
    from pipeline.report.markdown import render_markdown

    rep = real_report
    timing = rep["timing"]
    assert timing["spread"] == "(max - min) / median of the per-round p50 latencies, in percent"
    assert [s["where"] for s in timing["sessions"]][0] == "python"
    for v in rep["variants"]:
        for st in v["latency"].values():
            assert st["rounds"] == timing["rounds"] == len(st["round_p50_ms"]) and st["spread_pct"] >= 0
    run = tmp_path / "run"
    run.mkdir()
    for ses in timing["sessions"]:
        ses.update(load_1min=9.5, cores=2, others_cpu_pct=80.0, untrusted=["the 1-minute load average was 9.50 on 2 "
                                                                          "cores (over 1.5 per core)"])
    timing.update(trusted=False, untrusted=["python: the 1-minute load average was 9.50 on 2 cores (over 1.5 per core)"])
    (run / "report.json").write_text(json.dumps(rep))
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    md = (run / "report.md").read_text()
    ship = md.split("## What to ship", 1)[1].split("\n## ", 1)[0]
    assert "**Timing figures not to be trusted**: python: the 1-minute load average was 9.50 on 2 cores" in ship
    section = md.split("## Timing", 1)[1].split("\n## ", 1)[0]
    assert f"{timing['rounds']} rounds" in section and "(max - min) / median" in section
    assert "| python | `torch-fp32`," in section and "| 9.50 / 2 | 80 % |" in section
    assert "NOT to be trusted: the 1-minute load average was 9.50" in section
    assert "Timing figures not to be trusted" in (run / "report.html").read_text()
    timing.update(trusted=True, untrusted=[])  # every session quiet: no warning
    for ses in timing["sessions"]:
        ses["untrusted"] = []
    assert "Timing figures not to be trusted" not in render_markdown(rep)


def test_report_command_bad_input(tmp_path):
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "report.json").write_text('{"not": "a report"}')
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "is not a pipeline report" in r.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(rendered_report, tmp_path):
    html = rendered_report / "report.html"
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
         "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert "onnx-int8-ptq" in dom.stdout and dom.stdout.count("<img") == 10
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / 'q'}", f"--screenshot={shot}", "--window-size=1200,2400",
                    html.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20000  # a rendered page, not a blank one


# ------------------------------------------------------------------ report.json: path forms and schema


def test_report_command_accepts_the_report_json_file_itself(rendered_report, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(rendered_report / "report.json", run / "report.json")
    r = invoke("report", run / "report.json")
    assert r.exit_code == 0, r.output
    assert (run / "report.md").read_text() == (rendered_report / "report.md").read_text()
    assert not (run / "report.json" / "report.md").exists()


@pytest.mark.parametrize("name, message", [
    ("missing-folder", "does not exist"),
    ("notes.txt", "is neither a run folder holding report.json nor a report.json file"),
    ("report.md", "is neither a run folder holding report.json nor a report.json file"),
    ("other.json", "is neither a run folder holding report.json nor a report.json file"),
    ("empty-folder", "does not exist"),
])
def test_report_command_refuses_a_path_that_is_neither_a_run_folder_nor_report_json(tmp_path, name, message):
    from tests.conftest import REPORT_FIXTURE

    (tmp_path / "empty-folder").mkdir()
    for f in ("notes.txt", "report.md", "other.json"):
        shutil.copy(REPORT_FIXTURE, tmp_path / f)  # even holding a valid report
    before = snapshot(tmp_path)
    r = invoke("report", tmp_path / name)
    out = one_paragraph(r)
    assert message in out
    assert snapshot(tmp_path) == before


def _set(path, value):
    def mutate(rep):
        *parents, last = path
        node = rep
        for k in parents:
            node = node[k]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return json.dumps(rep)
    return mutate


_DELETE = object()
DAMAGED_REPORTS = {
    "params as a string": _set(["params"], "147290"),
    "params as a bool": _set(["params"], True),
    "accuracy as a string": _set(["variants", 0, "accuracy"], "0.98"),
    "accuracy above 1": _set(["variants", 1, "accuracy"], 98.3),
    "max_abs_diff as a list": _set(["variants", 1, "max_abs_diff"], []),
    "train null": _set(["train"], None),
    "train missing": _set(["train"], _DELETE),
    "test_accuracy missing": _set(["train", "test_accuracy"], _DELETE),
    "history row as a list": _set(["train", "history", 0], [1, 0.5]),
    "variants a dict": _set(["variants"], {}),
    "variants empty": _set(["variants"], []),
    "variant name null": _set(["variants", 0, "name"], None),
    "p50 missing": _set(["variants", 0, "latency", "1", "p50_ms"], _DELETE),
    "latency key not a batch size": _set(["variants", 0, "latency", "one"], {}),
    "size_bytes huge": _set(["variants", 0, "size_bytes"], 10**30),
    "flips of floats": _set(["variants", 2, "flips"], [1.5]),
    "precision unknown, with markup": _set(["variants", 0, "precision"], "[/bold]fp8"),
    "environment a list": _set(["environment"], ["python"]),
    "environment missing": _set(["environment"], _DELETE),
    "confusion matrix not square": _set(["confusion", "matrix"], [[1, 2], [3, 4]]),
    "sqnr as a string": _set(["quantization", "variants", "onnx-int8-ptq", 0, "sqnr_db"], "high"),
    "speedup ratio negative": _set(["speedup_vs_torch", "onnx-fp32", "throughput_ratio"], -1.0),
    "spread negative": _set(["variants", 1, "latency", "1", "spread_pct"], -3.0),
    "round p50s as a string": _set(["variants", 1, "latency", "1", "round_p50_ms"], "1.0, 2.0"),
    "timing trusted as a string": _set(["timing", "trusted"], "no"),
    "timing session from nowhere": _set(["timing", "sessions", 0, "where"], "gpu"),
    "tie broken by an unknown rule": _set(["recommended", "cpu", "verdict", "broken_by"], "coin toss"),
    "top level a list": lambda rep: json.dumps([rep]),
    "top level a number": lambda rep: "42",
    "NaN literal": lambda rep: json.dumps(rep).replace('"agreement": 1.0', '"agreement": NaN', 1),
    "Infinity literal": lambda rep: json.dumps(rep).replace('"cv": ', '"cv": Infinity, "x": ', 1),
    "number too big for a float": lambda rep: json.dumps(rep).replace('"agreement": 1.0', '"agreement": 1e999', 1),
}


@pytest.mark.parametrize("mode", ["recorded in stages.json", "no stages.json"])
@pytest.mark.parametrize("case", list(DAMAGED_REPORTS))
def test_damaged_but_valid_json_report_is_refused_and_nothing_changes(real_report, tmp_path, case, mode):
    """Each file is valid JSON (or nearly: NaN/Infinity, which Python accepts) with wrong types or missing keys.

    With stages.json, the damaged file is recorded there as the validate stage's output (as a user who edits
    both would), so the schema, not the hash check, is what refuses it.
    """
    from pipeline.store import manifest
    from pipeline.store.paths import sha256_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(DAMAGED_REPORTS[case](real_report))
    if mode != "no stages.json":  # a manifest whose validate stage wrote this very file
        outputs = {"report.json": {"sha256": sha256_file(run / "report.json"), "size": (run / "report.json").stat().st_size}}
        (run / "stages.json").write_text(json.dumps({"format": manifest.FORMAT, "validate": {
            "key": "0" * 64, "outputs": outputs, "seconds": 1.0, "finished": "2026-12-06T05:29:15+00:00"}}, indent=2))
        assert manifest.check_files(run, manifest.load(run / "stages.json"), ["report.json"]) == []
    before = snapshot(run)
    r = invoke("report", run)
    out = one_paragraph(r)
    assert "is not a pipeline report" in out
    assert snapshot(run) == before
