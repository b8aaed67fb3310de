"""pipeline/stages/validate.py: every variant of the quick run validated like FP32, the stage's thread count
given back, and its golden-file tolerance. The comparisons it uses: tests/pipeline/measure/test_compare.py."""
import numpy as np
import pytest


def _rows(quick_run):
    return {v["name"]: v for v in quick_run["report"]["variants"]}


def test_every_variant_is_validated_like_fp32(quick_run):
    from pipeline.measure import browser

    rows = _rows(quick_run)
    in_browser = {"web-wasm-fp32", "web-wasm-int8"} if browser.find() else set()  # the quick run asks for --browser
    # the edge runtimes' rows too (CI installs them all); bf16 only where the CPU offers it
    from runtime.openvino import cpu_has_bf16

    edge = {"openvino-fp32", "openvino-int8", "executorch-fp32", "executorch-int8", "litert-fp32", "litert-int8"}
    assert set(rows) == {"torch-fp32", "onnx-fp32", "onnx-fp16", "onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu",
                         "onnx-int8-qat-cpu"} | edge | ({"openvino-bf16"} if cpu_has_bf16() else set()) | in_browser
    for name, row in rows.items():
        assert {"accuracy", "agreement", "max_abs_diff", "accuracy_delta", "flips", "latency"} <= set(row), name
        assert len(row["flips"]) == round((1 - row["agreement"]) * 10000)
    # reduced precision stays close to the reference even after a 2-epoch quick training
    assert rows["onnx-fp16"]["agreement"] > 0.999
    for name in ("onnx-int8-ptq", "onnx-int8-qat", "onnx-int8-cpu", "onnx-int8-qat-cpu", "openvino-int8",
                 "executorch-int8", "litert-int8"):
        assert rows[name]["agreement"] > 0.98, name
    # every runtime's FP32 file keeps FP32 parity with PyTorch (the variant table's tolerance)
    for name in ("onnx-fp32", "openvino-fp32", "executorch-fp32", "litert-fp32"):
        assert rows[name]["agreement"] == 1.0 and rows[name]["max_abs_diff"] <= 1e-4, name


# ------------------------------------------------------------------ the validate stage on a copy of the quick run

def _stage_context(artifacts, data_root, **validate):
    """A Context for the quick run's config, with a small timing budget (and any other ValidateConfig field)."""
    from dataclasses import replace

    from pipeline.config import build_config
    from pipeline.stages import Context

    cfg = build_config(model="edgenet", artifacts=artifacts, data_root=data_root, force=False, quick=True)
    small = dict(batches=(1,), warmup=0, iterations=2, max_seconds=0.01)
    return Context(replace(cfg, validate=replace(cfg.validate, **{**small, **validate})))


@pytest.fixture
def torch_threads():
    """Sets torch's thread count to a value no stage would choose (3), and puts the original back afterwards."""
    import torch

    original = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(original)


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "raises"])
def test_validate_stage_times_with_its_threads_and_gives_the_callers_back(quick_copy, data_root, monkeypatch,
                                                                         torch_threads, fails):
    """threads=1 is in force while the variants run, and the caller's count (3) is back afterwards, also when
    the stage fails half-way (a notebook calling the Python API keeps its own torch settings)."""
    import torch

    from pipeline.measure import efficiency
    from pipeline import variants
    from pipeline.stages import validate as vstage
    from pipeline.measure.torch_runner import TorchRunner

    seen, real = [], TorchRunner.infer_impl

    def spy(self, feed):
        seen.append(torch.get_num_threads())
        if fails:
            raise RuntimeError("the model broke")
        return real(self, feed)

    monkeypatch.setattr(TorchRunner, "infer_impl", spy)
    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)  # the CPU probe (seconds) is not under test
    monkeypatch.setattr(variants, "VARIANTS", variants.VARIANTS[:2])  # the reference and onnx-fp32 suffice here
    ctx = _stage_context(quick_copy, data_root, threads=1)
    if fails:
        with pytest.raises(RuntimeError, match="the model broke"):
            vstage.run(ctx)
    else:
        vstage.run(ctx)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == torch_threads


def test_golden_tolerance_is_read_from_the_validate_config(quick_copy, data_root):
    """golden.npz's logits moved by 1e-4: refused under the default tolerance (1e-5), accepted under 1e-3."""
    from pipeline.store import checkpoint
    from pipeline.errors import PipelineError
    from pipeline.stages import validate as vstage

    run = quick_copy / "edgenet"
    g = dict(np.load(run / "export" / "golden.npz"))
    g["logits"] = g["logits"] + np.float32(1e-4)
    with open(run / "export" / "golden.npz", "wb") as f:
        np.savez(f, **g)
    model = checkpoint.restore(checkpoint.load(run / "train" / "model.pt"))
    with pytest.raises(PipelineError, match="no longer reproduces .* allowed 1e-05"):
        vstage._check_golden(_stage_context(quick_copy, data_root), model)
    vstage._check_golden(_stage_context(quick_copy, data_root, golden_atol=1e-3), model)


def test_a_browser_that_cannot_measure_skips_its_rows_and_keeps_the_rest(quick_copy, data_root, monkeypatch):
    """The browser failing (here: its measurement raising, as a crash or a missing onnxruntime-web does) skips the
    web-wasm rows with the reason in the report; the Python rows are still measured and the stage succeeds."""
    import json

    from pipeline.measure import browser, efficiency
    from pipeline.errors import PipelineError
    from pipeline.stages import validate as vstage

    def broken(*args, **kwargs):
        raise PipelineError("Chromium (/usr/bin/chromium) exited with code 1 before the measuring page reported (x).")

    monkeypatch.setattr(browser, "find", lambda: "/usr/bin/chromium")  # present, as far as the table can tell
    monkeypatch.setattr(browser, "measure", broken)
    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)
    vstage.run(_stage_context(quick_copy, data_root, browser=True))
    report = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    names = {r["name"] for r in report["variants"]}
    assert "onnx-fp32" in names and not names & {"web-wasm-fp32", "web-wasm-int8"}
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    for name in ("web-wasm-fp32", "web-wasm-int8"):
        assert skipped[name].startswith("not measured in the browser: Chromium (/usr/bin/chromium) exited"), name
    assert report["recommended"]["browser"]["measured"] is False


def test_the_stage_activates_each_runner_once_and_times_them_together_in_rotated_rounds(quick_copy, data_root,
                                                                                        monkeypatch):
    """Parity first, variant by variant; then every variant timed in rounds, one burst each per round and batch,
    the order rotated: a load burst can no longer fall on one variant's whole turn. Each runner is activated
    once, and the report carries the rounds, their spread and the contention signals."""
    import json

    from pipeline.measure import efficiency, compare as validate
    from pipeline import variants
    from runtime import bench
    from runtime.base import BaseRunner

    events = []
    real_activate, real_interleave = BaseRunner.activate, bench.interleave

    def activate(self):
        events.append(("activate", id(self)))
        return real_activate(self)

    def interleave(calls, **kw):
        def spy(name, b, run):
            return lambda: (events.append(("call", name, b)), run())[1]
        return real_interleave({n: {b: spy(n, b, run) for b, run in by.items()} for n, by in calls.items()}, **kw)

    monkeypatch.setattr(BaseRunner, "activate", activate)
    monkeypatch.setattr(validate, "interleave", interleave)
    monkeypatch.setattr(efficiency, "peak_gflops", lambda: 100.0)
    monkeypatch.setattr(variants, "VARIANTS", variants.VARIANTS[:3])  # torch-fp32, onnx-fp32, onnx-fp16
    names = [v.name for v in variants.VARIANTS]
    from pipeline.stages import validate as vstage

    ctx = _stage_context(quick_copy, data_root, batches=(1, 4), rounds=4, warmup=1, iterations=2, max_seconds=5.0)
    vstage.run(ctx)
    activations = [e[1] for e in events if e[0] == "activate"]
    assert len(activations) == len(set(activations)) == 3  # one runner per variant, activated once, not per round
    calls = [e[1:] for e in events if e[0] == "call"]
    warm, timed = calls[:6], calls[6:]
    assert warm == [(n, b) for n in names for b in (1, 4)]  # one warm-up call each, before the rounds
    bursts = [timed[i] for i in range(0, len(timed), 2)]
    assert bursts == [(n, b) for r in range(4) for b in (1, 4) for n in names[r % 3:] + names[:r % 3]]

    report = json.loads((quick_copy / "edgenet" / "report.json").read_text())
    for row in report["variants"]:
        for b in ("1", "4"):
            st = row["latency"][b]
            assert st["rounds"] == 4 and len(st["round_p50_ms"]) == 4 and st["iterations"] == 8
            assert st["p50_ms"] == float(np.median(st["round_p50_ms"]))
            spread = 100 * (max(st["round_p50_ms"]) - min(st["round_p50_ms"])) / st["p50_ms"]
            assert st["spread_pct"] == pytest.approx(spread)
    timing = report["timing"]
    assert timing["rounds"] == 4 and timing["burst_calls"] == 2 and timing["spread"].startswith("(max - min) / median")
    (session,) = timing["sessions"]
    assert session["where"] == "python" and session["variants"] == names and session["cores"] >= 1
    assert timing["trusted"] == (not session["untrusted"])
    assert report["recommended"]["cpu"]["verdict"]["winner"] == report["recommended"]["cpu"]["variant"]
    md = (quick_copy / "edgenet" / "report.md").read_text()
    assert "## Timing" in md and "| python | `torch-fp32`, `onnx-fp32`, `onnx-fp16` |" in md
    assert ("**Timing figures not to be trusted**" in md) == (not timing["trusted"])
