"""The hostile-input sweep (tests/hostile_sweep.py) in CI: over 400 bad or unusual inputs across every
command and the Python API end with 0 tracebacks, 0 hangs, 0 changed files and 0 silent wrong results."""
import pytest

from tests import hostile_sweep


def test_sweep_covers_every_command_and_the_python_api():
    cases = hostile_sweep.cases()
    assert len(cases) >= 400
    commands = {c.action[0] for c in cases if isinstance(c.action, list)}
    assert commands == {"run", "models", "report", "predict", "bench", "check-qdq", "verify", "bundle", "demo"}
    assert any(callable(c.action) for c in cases)  # Classifier and the bundle's bench.py
    assert len({(c.group, c.name) for c in cases}) == len(cases)  # every case is a different input


@pytest.mark.slow
def test_hostile_sweep_has_no_traceback_hang_change_or_silent_wrong_result(quick_run, data_root, tmp_path):
    lines = []
    outcomes = hostile_sweep.sweep(quick_run["artifacts"], data_root, tmp_path, log=lines.append)
    summary = hostile_sweep.summary(outcomes)
    bad = [line for line in lines if line.startswith("BAD")]
    assert not bad, f"{summary}\n" + "\n".join(bad)
    assert summary["inputs"] >= 400
