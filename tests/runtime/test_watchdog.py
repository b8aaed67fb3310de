"""Untrusted model behaviour: a model that never returns stays interruptible (Ctrl-C, SIGTERM, a time budget), and a
model that already outputs probabilities or log-probabilities gets no second softmax (its output_kind is read)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import Classifier
from runtime.errors import RuntimeInputError
from runtime.onnxrt import OnnxrtRunner
from runtime.watchdog import RunTimeout
from tests.fixtures import onnx_models as om
from tests.kill_resume import default_sigint

ROOT = Path(__file__).resolve().parents[2]
PIXELS = (np.arange(784).reshape(28, 28) * 7 % 256).astype(np.uint8)
#: generous bounds for a child to react (a shared 2-core machine); not speed asserts: a hang never ends at all
START_S, END_S = 120, 60


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("untrusted")
    return {
        "endless": om.endless(d / "endless.onnx"),
        "logits": om.linear(d / "logits.onnx"),
        "probabilities": om.linear(d / "probabilities.onnx", head="softmax", output_kind="probabilities"),
        "log_probabilities": om.linear(d / "log_probabilities.onnx", head="logsoftmax", output_kind="log_probabilities"),
        "mislabelled": om.linear(d / "mislabelled.onnx", output_kind="probabilities"),  # logits said to be probabilities
        "unknown": om.linear(d / "unknown.onnx", output_kind="probs"),
        "image": om.digit_png(d / "digit.png"),
    }


# ---------------------------------------------------------------- a model that never returns
def test_time_limit_stops_a_model_that_never_returns(models):
    with OnnxrtRunner(models["endless"], time_limit=0.5) as runner:
        with pytest.raises(RunTimeout, match=r"did not return within 0.5 s and was stopped"):
            runner.infer({"x": np.zeros((1, 1, 28, 28), np.float32)})
        runner.time_limit = None  # the session is still usable: a normal model would now run
    with Classifier(models["logits"], time_limit=30) as clf:  # a budget a real model meets changes nothing
        assert clf.predict(PIXELS).labels == Classifier(models["logits"]).predict(PIXELS).labels
    with Classifier(models["endless"], time_limit=0.3) as clf, pytest.raises(RunTimeout):
        clf.predict(PIXELS)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
def test_time_limit_must_be_a_real_budget(models, bad):
    with pytest.raises(RuntimeInputError, match="time_limit must be a finite number of seconds above 0"):
        OnnxrtRunner(models["logits"], time_limit=bad)


def _child(*args) -> subprocess.Popen:
    """`pipeline ...` in a child, with Ctrl-C's default handler (a background job inherits SIGINT ignored)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=default_sigint)


def _started(p: subprocess.Popen, model: Path) -> None:
    """Wait until the child has the model open (onnxruntime maps it), bounded; then it is inside session.run soon."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and p.poll() is None:
        try:
            maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            maps = ""
        if "onnxruntime" in maps:
            time.sleep(2)  # session created; the Loop is running (or about to)
            return
        time.sleep(0.2)


@pytest.mark.parametrize("command", ["predict", "bench"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_predict_and_bench_on_a_model_that_never_returns(models, command, sig):
    args = ["predict", models["image"], "--model", models["endless"]] if command == "predict" else \
        ["bench", models["endless"], "--batch", "1", "--warmup", "1", "--warmup-seconds", "0", "--duration", "1"]
    p = _child(*args)
    try:
        _started(p, models["endless"])
        assert p.poll() is None, p.stdout.read()  # still running: the model never returns by itself
        p.send_signal(sig)
        out, _ = p.communicate(timeout=END_S)  # a hang (the old behaviour) times out here
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert "Traceback" not in out, out
    if sig == signal.SIGINT:
        assert p.returncode == 130, out
        assert out.strip().startswith("interrupted:") and len(out.strip().splitlines()) == 1, out
    else:
        assert p.returncode == -signal.SIGTERM, out  # SIGTERM's default action: the process ends, nothing printed


def test_bench_bounds_every_call(models):
    from runtime.bench import CALL_GRACE_S, call_limit

    assert call_limit(3.0, 0.5) == 3.0 + CALL_GRACE_S and call_limit(1.0, 10.0) == 10.0 + CALL_GRACE_S


# ---------------------------------------------------------------- output_kind
def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probabilities_and_log_probabilities_get_no_second_softmax(models):
    with Classifier(models["logits"]) as clf:
        ref = clf.predict(PIXELS)
    assert clf.output_kind == "logits"
    np.testing.assert_allclose(ref.probabilities, _softmax(ref.logits.astype(np.float64)), rtol=1e-5)
    for kind in ("probabilities", "log_probabilities"):
        with Classifier(models[kind]) as clf:
            pred = clf.predict(PIXELS)
        assert clf.output_kind == kind == clf.metadata.output_kind
        assert pred.labels == ref.labels
        np.testing.assert_allclose(pred.probabilities, ref.probabilities, atol=1e-5)  # not softmax(softmax(.))
        twice = _softmax(ref.probabilities.astype(np.float64))
        assert np.abs(pred.confidence - twice.max(axis=1)).max() > 0.1  # what the double softmax showed


def test_an_output_kind_the_scores_contradict_or_an_unknown_one_is_refused(models):
    with Classifier(models["mislabelled"]) as clf, pytest.raises(RuntimeInputError, match="says its output holds probabilities"):
        clf.predict(PIXELS)
    with pytest.raises(RuntimeInputError, match="output_kind is 'probs', not one of logits, probabilities"):
        Classifier(models["unknown"])
    with pytest.raises(RuntimeInputError, match="output_kind must be one of"):
        Classifier(models["logits"], output_kind="softmax")
    with Classifier(models["probabilities"], output_kind="logits") as clf:  # an explicit override wins
        assert clf.output_kind == "logits"


def test_predict_command_shows_the_probability_the_model_gave(models):
    r = subprocess.run([sys.executable, "-m", "pipeline", "predict", str(models["image"]), "--model",
                        str(models["probabilities"])], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    with Classifier(models["logits"]) as clf:
        from runtime.preprocess import load_image

        want = clf.predict(load_image(models["image"])).confidence[0]
    assert f"{want:.4f}" in r.stdout, (want, r.stdout)


@pytest.mark.parametrize("key,value,match", [
    ("normalization_std", "[0]", "std must be positive"),
    ("normalization_std", "[]", "must be a non-empty list"),
    ("normalization_std", '"0.3"', "must be a non-empty list"),
    ("normalization_std", "0.3", "must be a non-empty list"),
    ("normalization_std", "[NaN]", "must be a non-empty list of finite"),
    ("normalization_mean", '"abc"', "must be a non-empty list"),
    ("normalization_mean", "[Infinity]", "must be a non-empty list of finite"),
    ("normalization_mean", "[true]", "must be a non-empty list"),
    ("classes", '"0123456789"', "must be a non-empty list of labels"),
    ("classes", "[]", "must be a non-empty list of labels"),
])
def test_python_refuses_each_broken_contract(tmp_path, key, value, match):
    path = om.linear(tmp_path / "m.onnx", **{key: value})
    with pytest.raises(RuntimeInputError, match=match):
        Classifier(path)
