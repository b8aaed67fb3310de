"""Fixtures of the `pipeline device` tests: a real sshd on 127.0.0.1 (once per session), bare "device" Pythons,
and a private copy of the quick run to record into (tests/pipeline/devices/sshd.py says how)."""
from __future__ import annotations

import pytest

from tests.pipeline.devices import sshd as _sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    why = _sshd.unavailable()
    if why:
        pytest.skip(why)
    server = _sshd.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def device_python(tmp_path_factory):
    """A venv with numpy and onnxruntime only (no torch, no repository)."""
    return _sshd.bare_python(tmp_path_factory.mktemp("device") / "venv")


@pytest.fixture
def ssh_args(sshd, device_python, tmp_path):
    """The options that point `pipeline device run` at the test sshd and device (never the user's ~/.ssh)."""
    return ["--ssh-config", sshd.client_config, "--python", device_python, "--remote-dir", str(tmp_path / "remote"),
            "--connect-timeout", "10", "--rounds", "3", "--seconds", "0.01"]
