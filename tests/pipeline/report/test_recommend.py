"""pipeline/report/recommend.py: which file to ship on each target ("What to ship" in the report), its figure, and the
`recommended` object of report.json. On tests/fixtures/report.json (`real_report`, a real run's report) and its
rendering (`rendered_report`): no training."""
import copy
import json

import pytest

from pipeline.report import recommend
from pipeline import variants
from pipeline.targets import DEPLOY as TARGETS
from pipeline.store.schema import SchemaError, check_report
from tests.helpers import invoke


def _row(rep, name):
    return next(r for r in rep["variants"] if r["name"] == name)


def _within_budget(r) -> bool:
    """Written apart from recommend.disqualified: finite, the table's tolerance, else its budget (none: no loss)."""
    v = variants.BY_NAME[r["name"]]
    if r["nonfinite"] != 0:
        return False
    if v.atol is not None:
        return r["agreement"] == 1.0 and r["max_abs_diff"] is not None and r["max_abs_diff"] <= v.atol
    return r["accuracy_delta"] >= -(v.budget_pp or 0.0) - 1e-9


def _expected_pick(rows: list[dict]) -> dict:
    """The tie rule, written apart from runtime.bench.pick: the fastest p50 at batch 1; every row slower by no more
    than the larger of the two spreads ties with it; a tie goes to the smaller file, then the higher accuracy."""
    fastest = min(rows, key=lambda r: (r["latency"]["1"]["p50_ms"], r["name"]))
    f = fastest["latency"]["1"]
    tied = [r for r in rows if 100 * (r["latency"]["1"]["p50_ms"] / f["p50_ms"] - 1)
            <= max(f["spread_pct"], r["latency"]["1"]["spread_pct"])]
    return min(tied, key=lambda r: (r["size_bytes"], -r["accuracy"], r["name"]))


def test_the_cpu_recommendation_is_the_fastest_cpu_row_of_any_runtime_within_budget(real_report):
    rep = real_report
    # the CPU is measured by every runtime's CPU rows (onnxruntime with its default optimizations, OpenVINO,
    # ExecuTorch, LiteRT); the Q/DQ-as-written (basic) rows are TensorRT files, not CPU deployment figures, and the
    # torch row is the reference
    rows = [r for r in rep["variants"] if r["provider"] == "cpu" and r["backend"] != "torch"
            and r.get("ort_optimization", "all") == "all"]
    assert {r["name"] for r in rows} >= {"onnx-fp32", "onnx-fp16", "onnx-int8-cpu", "openvino-int8",
                                         "executorch-int8", "litert-int8"}
    best = _expected_pick([r for r in rows if _within_budget(r)])
    rec = recommend.recommend(rep)["cpu"]
    assert rec["variant"] == best["name"] and rec["measured"] is True
    assert rec["file"] == variants.BY_NAME[best["name"]].file
    # the command makes the bundle that ships the pick (an OpenVINO or phone file is not in the cpu bundle)
    shipped_in = [t for t in TARGETS if t.bundle in variants.BY_NAME[best["name"]].bundle]
    assert shipped_in and rec["command"].startswith(f"pipeline bundle --target {shipped_in[0].bundle} ")
    assert rec["p50_ms"] == best["latency"]["1"]["p50_ms"] and rec["p50_batch"] == 1
    assert rec["throughput"] == best["latency"]["256"]["throughput_per_s"] and rec["throughput_batch"] == 256
    assert rec["accuracy"] == best["accuracy"]
    assert rep["confusion"]["variant"] == best["name"]  # the confusion matrix is the CPU recommendation's
    assert "shipped" not in rep
    decided = ("variant", "file", "measured", "p50_ms", "throughput", "accuracy", "spread_pct")
    for key, stored in rep["recommended"].items():  # recomputed from the JSON alone, the run's decision
        assert {k: recommend.recommend(rep)[key].get(k) for k in decided} == {k: stored.get(k) for k in decided}


def _fastest(rep, name, p50=1e-4):
    lat = _row(rep, name)["latency"]["1"]
    lat["p50_ms"] = p50
    if lat.get("round_p50_ms"):  # every round as fast, so the round-by-round comparison agrees with the median
        lat["round_p50_ms"] = [p50] * len(lat["round_p50_ms"])


def test_a_variant_over_budget_with_nan_or_off_parity_is_never_recommended(real_report):
    base = real_report
    base.pop("recommended")
    fp16 = variants.BY_NAME["onnx-fp16"]

    rep = copy.deepcopy(base)
    _row(rep, "onnx-fp16")["accuracy_delta"] = 0.0
    _fastest(rep, "onnx-fp16")
    assert recommend.recommend(rep)["cpu"]["variant"] == "onnx-fp16"  # the edit below is what excludes it

    over = copy.deepcopy(rep)
    _row(over, "onnx-fp16")["accuracy_delta"] = -(fp16.budget_pp + 0.01)
    assert recommend.recommend(over)["cpu"]["variant"] != "onnx-fp16"
    at_budget = copy.deepcopy(rep)
    _row(at_budget, "onnx-fp16")["accuracy_delta"] = -fp16.budget_pp  # exactly the budget: still within it
    assert recommend.recommend(at_budget)["cpu"]["variant"] == "onnx-fp16"

    nan = copy.deepcopy(rep)
    _row(nan, "onnx-fp16")["nonfinite"] = 3  # accuracy delta still 0: only the NaN count says it is broken
    rec = recommend.recommend(nan)["cpu"]
    assert rec["variant"] != "onnx-fp16" and "NaN" in rec["reason"]

    off = copy.deepcopy(base)  # FP32 fastest, accuracy intact, but its logits drift past the tolerance
    _fastest(off, "onnx-fp32")
    _row(off, "onnx-fp32")["max_abs_diff"] = 10 * variants.BY_NAME["onnx-fp32"].atol
    assert recommend.recommend(off)["cpu"]["variant"] != "onnx-fp32"

    basic = copy.deepcopy(base)  # a TensorRT-targeted file run with Q/DQ as written is no CPU measurement
    for name in ("onnx-int8-ptq", "onnx-int8-qat"):
        _row(basic, name)["accuracy_delta"] = 0.0
        _fastest(basic, name)
    assert recommend.recommend(basic)["cpu"]["variant"] not in ("onnx-int8-ptq", "onnx-int8-qat")

    # a row that declares no budget (as a user's new row might): any loss disqualifies, no loss qualifies
    nobudget = copy.deepcopy(base)
    _fastest(nobudget, "onnx-int8-cpu")
    _row(nobudget, "onnx-int8-cpu")["budget_pp"] = None
    _row(nobudget, "onnx-int8-cpu")["accuracy_delta"] = 0.0
    assert recommend.recommend(nobudget)["cpu"]["variant"] == "onnx-int8-cpu"
    _row(nobudget, "onnx-int8-cpu")["accuracy_delta"] = -0.01
    assert recommend.recommend(nobudget)["cpu"]["variant"] != "onnx-int8-cpu"


def test_a_measured_target_where_nothing_qualifies_falls_back_to_its_file_and_command(real_report):
    rep = real_report
    for r in rep["variants"]:
        r["nonfinite"] = 1
    rec = recommend.recommend(rep)["cpu"]
    assert rec["measured"] is False and rec["variant"] == "onnx-fp32" and "none of the variants" in rec["reason"]
    assert "pipeline bundle --target cpu" in rec["command"]
    check_report({**rep, "recommended": recommend.recommend(rep)}, "r")


def test_the_edge_targets_pick_from_their_runtimes_rows_and_say_what_stood_in_for_the_device(real_report):
    """Intel is judged on the OpenVINO rows, mobile on the ExecuTorch and LiteRT rows, all timed on this host's CPU:
    the reason says that this host stood in for the device (no iGPU, NPU or phone here)."""
    got = recommend.recommend(real_report)
    for t in TARGETS:
        if t.key in ("intel", "mobile"):
            ok = [r for r in real_report["variants"] if t.measures(r) and _within_budget(r)]
            assert ok and got[t.key]["variant"] == _expected_pick(ok)["name"] and got[t.key]["measured"] is True
            assert t.proxy and t.proxy in got[t.key]["reason"]
            assert got[t.key]["command"].startswith(f"pipeline bundle --target {t.bundle} ")


def test_unmeasured_targets_name_a_file_their_bundle_ships_and_the_command(real_report):
    rep = real_report
    assert [t.key for t in TARGETS] == list(rep["recommended"]) == ["cpu", "browser", "tensorrt", "intel", "mobile"]
    assert not any(r["provider"] == "cuda" for r in rep["variants"])
    # as if there were no Chromium, OpenVINO, ExecuTorch or LiteRT here
    rep = {**rep, "variants": [r for r in rep["variants"] if r["backend"] in ("torch", "onnxruntime")]}
    rep["recommended"] = recommend.recommend(rep)
    for t in TARGETS:
        rec = rep["recommended"][t.key]
        assert rec["command"].startswith(f"pipeline bundle --target {t.bundle} --model edgenet;")
        assert t.bundle in variants.BY_NAME[t.build_from].bundle  # the file is in the bundle the command makes
        if t.key != "cpu":
            assert rec["measured"] is False and rec["variant"] == t.build_from
            assert rec["file"] == variants.BY_NAME[t.build_from].file
            assert "p50_ms" not in rec and "accuracy" not in rec
    assert "pipeline demo" in rep["recommended"]["browser"]["command"] and "open the page" in rep["recommended"]["browser"]["command"]
    assert "edgenet-jetson-bundle/: python3 build_engines.py && python3 bench.py --engines" in \
        rep["recommended"]["tensorrt"]["command"]


def _gpu_row(rep, src, name, p50, delta=0.0):
    row = copy.deepcopy(_row(rep, src))
    row.update(name=name, backend="tensorrt" if name.startswith("trt") else "onnxruntime", provider="cuda",
               accuracy_delta=delta, budget_pp=variants.BY_NAME[name].budget_pp)
    row.pop("ort_optimization", None)
    row["latency"]["1"]["p50_ms"] = p50
    row["latency"]["1"]["spread_pct"] = 5.0  # a quiet GPU's: the 2x gaps below are beyond it
    rep["variants"].append(row)


def test_a_target_measured_here_is_recommended_from_its_rows(real_report, tmp_path):
    """As on a GPU host: trt-* and onnx-fp32-cuda rows; the engine's ONNX source is the file to ship."""
    rep = real_report
    rep.pop("recommended")
    _gpu_row(rep, "onnx-fp32", "onnx-fp32-cuda", 0.30)
    _gpu_row(rep, "onnx-fp32", "trt-fp32", 0.20)
    _gpu_row(rep, "onnx-fp16", "trt-fp16", 0.10)
    _gpu_row(rep, "onnx-int8-ptq", "trt-int8", 0.05, delta=-1.0)  # fastest, but over its 0.15 pp budget
    rec = recommend.recommend(rep)
    assert rec["tensorrt"]["measured"] is True and rec["tensorrt"]["variant"] == "trt-fp16"
    assert rec["tensorrt"]["file"] == "model-fp16.onnx" and rec["tensorrt"]["p50_ms"] == 0.10
    assert "trt-int8" in rec["tensorrt"]["reason"]  # named among those left out
    assert rec["cpu"]["variant"] not in ("trt-fp16", "onnx-fp32-cuda")  # GPU rows are no CPU measurement
    rep["recommended"] = rec
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(rep))
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "report" / "pareto-tensorrt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "`report/pareto-tensorrt.png`" in (run / "report.md").read_text()


def test_the_plot_exists_and_the_section_lists_every_target(rendered_report):
    run = rendered_report
    assert (run / recommend.plot_name("cpu")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / recommend.plot_name("tensorrt")).exists()  # not measured here: nothing to draw
    md = (run / "report.md").read_text()
    section = md.split("## What to ship", 1)[1].split("\n## ", 1)[0]
    for t in TARGETS:
        rec = json.loads((run / "report.json").read_text())["recommended"][t.key]
        line = next(ln for ln in section.splitlines() if ln.startswith(f"- **{t.title}**"))
        assert f"`{rec['file']}`" in line and rec["command"] in line
        assert f"| {t.title} | `{rec['file']}` | `{rec['variant']}` | {'yes' if rec['measured'] else 'no'} |" in section
    assert "`report/pareto-cpu.png`" in section
    assert "Accuracy against latency, x86/ARM CPU, any runtime" in (run / "report.html").read_text()


def test_a_report_without_recommended_renders_the_same_section(real_report, rendered_report, tmp_path):
    """Reports written before `recommended` existed: `pipeline report` recomputes it from the rows."""
    rep = real_report
    rep.pop("recommended")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(rep))
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert (run / "report.md").read_text() == (rendered_report / "report.md").read_text()


def test_the_rendered_section_comes_from_the_json(real_report, tmp_path):
    """`pipeline report` shows report.json's recommendation, not one recomputed beside it."""
    rep = real_report
    rep["recommended"]["cpu"].update(variant="onnx-fp16", file="model-fp16.onnx", reason="edited by hand.")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(rep))
    assert invoke("report", run).exit_code == 0
    assert "- **x86/ARM CPU, any runtime**: `model-fp16.onnx`: edited by hand." in (run / "report.md").read_text()


@pytest.mark.parametrize("path, value, message", [
    (["cpu", "variant"], None, "recommended.cpu.variant: input should be a valid string"),
    (["cpu", "measured"], "yes", "recommended.cpu.measured: input should be a valid boolean"),
    (["cpu", "p50_ms"], -1.0, "recommended.cpu.p50_ms: input should be greater than or equal to 0"),
    (["cpu", "accuracy"], 1.5, "recommended.cpu.accuracy: input should be less than or equal to 1"),
    (["browser", "command"], 3, "recommended.browser.command: input should be a valid string"),
    (["tensorrt"], [], "recommended.tensorrt: input should be a valid dictionary"),
    (["cpu", "variant"], "onnx-fp8", "names no row of variants"),
])
def test_schema_refuses_a_damaged_recommended(real_report, path, value, message):
    rep = real_report
    check_report(rep, "r")
    node = rep["recommended"]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(SchemaError, match=message):
        check_report(rep, "r")


def test_schema_refuses_a_recommendation_without_its_file(real_report, tmp_path):
    rep = real_report
    del rep["recommended"]["browser"]["file"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(rep))
    r = invoke("report", run)
    assert r.exit_code == 2 and "recommended.browser.file: field required" in " ".join(r.output.split())
    assert not (run / "report.md").exists()


def test_pareto_front_keeps_only_points_nothing_beats():
    pts = [("a", 1.0, 99.0), ("b", 2.0, 99.5), ("c", 3.0, 99.2), ("d", 0.5, 98.0), ("e", 2.0, 99.4)]
    assert recommend.pareto(pts) == ["d", "a", "b"]  # c: b is faster and better; e: as fast as b, less accurate
    assert recommend.pareto([("x", 1.0, 99.0), ("y", 1.0, 99.0)]) == ["x", "y"]  # ties beat nobody


# ---------------------------------------------------------------------------- the tie rule (runtime.bench.pick)


def _cpu(name, p50, spread, size, accuracy=0.99):
    """A CPU row that keeps its tolerance and budget, with the figures the tie rule reads."""
    return {"name": name, "backend": "onnxruntime", "provider": "cpu", "precision": "fp32", "ort_optimization": "all",
            "nonfinite": 0, "agreement": 1.0, "max_abs_diff": 0.0, "accuracy_delta": 0.0, "accuracy": accuracy,
            "budget_pp": variants.BY_NAME[name].budget_pp, "size_bytes": size,
            "latency": {"1": {"p50_ms": p50, "spread_pct": spread}, "256": {"throughput_per_s": 1000.0}}}


def _cpu_pick(*rows):
    return recommend.recommend({"model": "edgenet", "variants": list(rows)})["cpu"]


def test_a_difference_within_the_noise_is_a_tie_broken_by_the_smaller_file():
    # FP32 is 5.3 % faster, but the rounds of FP32 varied by 8 %: no difference, and the INT8 file is smaller
    rec = _cpu_pick(_cpu("onnx-fp32", 0.95, 8.0, 400_000), _cpu("onnx-int8-cpu", 1.00, 6.0, 110_000))
    assert rec["variant"] == "onnx-int8-cpu" and rec["spread_pct"] == 6.0
    assert rec["verdict"]["tied"] == ["onnx-int8-cpu", "onnx-fp32"] and rec["verdict"]["fastest"] == "onnx-fp32"
    assert rec["verdict"]["broken_by"] == "smaller file"
    assert rec["reason"].startswith("tie within noise (5.3 % vs spread 8.0 %), broken by: smaller file")
    # beyond the noise, the faster file wins whatever its size
    rec = _cpu_pick(_cpu("onnx-fp32", 0.95, 3.0, 400_000), _cpu("onnx-int8-cpu", 1.00, 2.0, 110_000))
    assert rec["variant"] == "onnx-fp32" and rec["verdict"]["tied"] == [] and rec["verdict"]["broken_by"] is None
    assert "faster than `onnx-int8-cpu` by 5.3 %, beyond the spread 3.0 %" in rec["reason"]


def test_the_noise_is_the_larger_spread_of_the_two_and_the_boundary_is_a_tie():
    # the slower row's own spread counts too
    assert _cpu_pick(_cpu("onnx-fp32", 1.0, 0.0, 400_000), _cpu("onnx-int8-cpu", 1.25, 25.0, 110_000))["variant"] \
        == "onnx-int8-cpu"  # exactly 25 % slower against a 25 % spread: not beyond it
    assert _cpu_pick(_cpu("onnx-fp32", 1.0, 0.0, 400_000), _cpu("onnx-int8-cpu", 1.25, 24.9, 110_000))["variant"] \
        == "onnx-fp32"
    assert _cpu_pick(_cpu("onnx-fp32", 1.0, 25.0, 400_000), _cpu("onnx-int8-cpu", 1.25, 0.0, 110_000))["variant"] \
        == "onnx-int8-cpu"  # the faster row's spread counts as much


def test_a_tie_between_files_of_one_size_goes_to_the_higher_accuracy_then_the_name():
    rec = _cpu_pick(_cpu("onnx-fp32", 1.00, 5.0, 200_000, accuracy=0.990),
                    _cpu("onnx-fp16", 1.02, 5.0, 200_000, accuracy=0.991))
    assert rec["variant"] == "onnx-fp16" and rec["verdict"]["broken_by"] == "higher accuracy"
    assert "broken by: higher accuracy" in rec["reason"]
    rec = _cpu_pick(_cpu("onnx-fp32", 1.00, 5.0, 200_000), _cpu("onnx-fp16", 1.00, 5.0, 200_000))
    assert rec["variant"] == "onnx-fp16" and rec["verdict"]["broken_by"] == "name"


def test_three_rows_only_those_within_the_noise_of_the_fastest_tie():
    rec = _cpu_pick(_cpu("onnx-fp32", 1.00, 4.0, 400_000), _cpu("onnx-fp16", 1.03, 4.0, 200_000),
                    _cpu("onnx-int8-cpu", 1.50, 4.0, 110_000))  # the smallest, but 50 % slower: out of the tie
    assert rec["variant"] == "onnx-fp16" and rec["verdict"]["tied"] == ["onnx-fp16", "onnx-fp32"]
    assert rec["verdict"]["difference_pct"] == 3.0 and rec["verdict"]["spread_pct"] == 4.0


def test_rows_timed_before_rounds_existed_have_no_spread_and_the_fastest_wins():
    a, b = _cpu("onnx-fp32", 1.00, 0.0, 400_000), _cpu("onnx-int8-cpu", 1.01, 0.0, 110_000)
    for r in (a, b):
        del r["latency"]["1"]["spread_pct"]
    rec = _cpu_pick(a, b)
    assert rec["variant"] == "onnx-fp32" and rec["spread_pct"] is None and rec["verdict"]["tied"] == []


def test_the_report_shows_the_tie_and_its_rule(real_report, tmp_path):
    rep = real_report
    rep.pop("recommended")
    for r in rep["variants"]:
        if r["name"] in ("onnx-fp32", "onnx-int8-cpu"):
            r["latency"]["1"].update(p50_ms=1.0 if r["name"] == "onnx-fp32" else 1.02, spread_pct=4.0)
            r["latency"]["1"].pop("round_p50_ms")  # no rounds to pair: the medians and spreads decide
        else:
            r["nonfinite"] = 1  # out of the running
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(rep))
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    md = (run / "report.md").read_text()
    assert "tie within noise (2.0 % vs spread 4.0 %), broken by: smaller file" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| x86/ARM CPU, any runtime |"))
    assert "`onnx-int8-cpu`" in line and "| 4.0 % |" in line and "broken by: smaller file |" in line
    assert "tie within noise (2.0 % vs spread 4.0 %)" in (run / "report.html").read_text()


def test_rendering_reads_the_recommendation_and_never_recomputes_it(real_report, tmp_path, monkeypatch):
    """recommend runs once, in assemble; report.md, report.html and the figures read report.json's `recommended`
    (a report written before it existed gets it computed once, by assemble.complete)."""
    from pipeline.report import assemble

    def refuse(report):
        raise AssertionError("recommend() called while rendering a report that has its recommendation")

    monkeypatch.setattr(recommend, "recommend", refuse)
    written = assemble.write_all(real_report, tmp_path)
    assert len(written) == 3 + 10 and "`onnx-int8-cpu`" in (tmp_path / "report.md").read_text()
