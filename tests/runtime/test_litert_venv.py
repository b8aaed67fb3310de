"""runtime/litert_venv.py: the LiteRT converter venv is layered over the project's site-packages (a ``.pth``),
its marker records the layered paths and their torch, and ready() refuses it once those are gone or hold another
torch (a rebuilt project environment); the build is all-or-nothing. No network: pip is replaced where it would
run, everything else (python -m venv, the .pth, imports through it) is real."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import litert_venv as lv
from runtime.errors import BackendUnavailable


def _dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _fake_venv(tmp_path: Path, torch_dist: str | None = "2.14.1+cu130", **marker) -> tuple[Path, Path]:
    """A venv folder with a python file and a complete marker, layered over a fake site-packages."""
    site, venv = tmp_path / "project-site", tmp_path / "venv"
    site.mkdir()
    if torch_dist:
        _dist(site, "torch", torch_dist)
    lv.venv_python(venv).parent.mkdir(parents=True)
    lv.venv_python(venv).write_text("")
    (venv / lv.MARKER).write_text(json.dumps({"packages": list(lv.PACKAGES), "layered": [str(site)],
                                              "torch": torch_dist, **marker}))
    return venv, site


def test_ready_reads_the_marker_and_the_layered_torch(tmp_path):
    venv, site = _fake_venv(tmp_path)
    assert lv.ready(venv) == lv.venv_python(venv)
    # the exporter passes the public release; a full version must match exactly
    assert lv.ready(venv, "2.14.1") and lv.ready(venv, "2.14.1+cu130")
    assert lv.ready(venv, "2.13.0") is None and lv.ready(venv, "2.14.1+cpu") is None
    lv.venv_python(venv).unlink()
    assert lv.ready(venv) is None


def test_ready_refuses_a_venv_whose_project_env_was_rebuilt_or_removed(tmp_path):
    venv, site = _fake_venv(tmp_path)
    (site / "torch-2.14.1+cu130.dist-info").rename(site / "torch-2.15.0.dist-info")
    (site / "torch-2.15.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.15.0\n")
    assert lv.ready(venv) is None  # another torch where the marker's was: a rebuilt project env
    (site / "torch-2.15.0.dist-info").rename(site / "torch-2.14.1+cu130.dist-info")
    (site / "torch-2.14.1+cu130.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torch\nVersion: 2.14.1+cu130\n")
    assert lv.ready(venv)
    for child in sorted(site.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    site.rmdir()
    assert lv.ready(venv) is None  # the layered site-packages is gone


def test_ready_refuses_a_venv_over_a_removed_env_without_torch(tmp_path):
    """A project env without torch (a runner-only install: the venv got its own): its removal is still seen."""
    venv, site = _fake_venv(tmp_path, torch_dist=None)
    assert lv.ready(venv) and lv.ready(venv, "2.14.1") is None
    site.rmdir()
    assert lv.ready(venv) is None


@pytest.mark.parametrize("marker", [
    {"layered": None},  # a standalone venv of the previous layout (its own torch), to be rebuilt
    {"layered": []},
    {"packages": ["ai-edge-litert==2.2.*", "litert-torch==0.9.*"]},
    {"torch": "2.13.0"},
])
def test_ready_refuses_other_markers(tmp_path, marker):
    venv, _ = _fake_venv(tmp_path, **marker)
    assert lv.ready(venv) is None


def test_ready_refuses_a_damaged_marker(tmp_path):
    venv, _ = _fake_venv(tmp_path)
    (venv / lv.MARKER).write_text("{not json")
    assert lv.ready(venv) is None
    (venv / lv.MARKER).write_text("[]")
    assert lv.ready(venv) is None


def test_torch_in_reads_dist_info_only(tmp_path):
    site = tmp_path / "s"
    _dist(site, "numpy", "2.0.0")
    assert lv.torch_in([str(site)]) is None
    _dist(site, "torch", "2.14.1")
    assert lv.torch_in([str(site)]) == "2.14.1"


def test_layered_paths_are_this_interpreters_site_packages():
    import torch

    paths = lv.layered_paths()
    assert paths and all(Path(p).is_dir() for p in paths)
    # the torch this process runs is the one layered (its dist-info may lack the local label: 2.14.1 for 2.14.1+cu130)
    assert lv.torch_in(paths) == torch.__version__.split("+")[0] or lv.torch_in(paths) == torch.__version__


def test_a_ready_venv_is_reused_without_running_anything(tmp_path, monkeypatch):
    venv, _ = _fake_venv(tmp_path)
    monkeypatch.setattr(lv, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert lv.ensure_venv(venv, "2.14.1") == lv.venv_python(venv)


@pytest.fixture
def layered_site(tmp_path, monkeypatch):
    """This interpreter's site-packages plus a folder with stand-ins for litert_torch and ai_edge_litert (the real
    ones need pip and the network); layered_paths() returns both."""
    extra = tmp_path / "stand-ins"
    (extra / "litert_torch").mkdir(parents=True)
    (extra / "litert_torch" / "__init__.py").write_text("")
    (extra / "ai_edge_litert").mkdir()
    (extra / "ai_edge_litert" / "__init__.py").write_text("")
    (extra / "ai_edge_litert" / "interpreter.py").write_text("")
    real = lv.layered_paths
    monkeypatch.setattr(lv, "layered_paths", lambda: [*real(), str(extra)])
    return extra


def _no_pip(calls):
    real = lv._run

    def run(cmd, timeout, what):
        calls.append(cmd)
        if cmd[1:4] == ["-m", "pip", "install"]:
            calls.append(Path(cmd[cmd.index("-c") + 1]).read_text())
            return ""
        return real(cmd, timeout, what)
    return run


def test_the_venv_is_layered_over_this_environment(tmp_path, layered_site, monkeypatch):
    """A real `python -m venv` with the .pth: its python imports this environment's torch (the same release) through
    the layering, its own site-packages come first (so its older typing-extensions would win there), pip is asked
    for the pinned packages under a torch constraint, and the marker records what ready() checks."""
    import torch

    calls = []
    monkeypatch.setattr(lv, "_run", _no_pip(calls))
    venv = tmp_path / "cache" / "litert-venv"
    python = lv.ensure_venv(venv, torch.__version__.split("+")[0])
    assert python == lv.venv_python(venv) and lv.ready(venv, torch.__version__) == python
    marker = json.loads((venv / lv.MARKER).read_text())
    assert marker["layered"] == lv.layered_paths() and marker["torch"] == lv.torch_in(lv.layered_paths())
    at = next(i for i, c in enumerate(calls) if c[1:4] == ["-m", "pip", "install"])
    pip, constraints = calls[at], calls[at + 1]
    assert all(p in pip for p in lv.PACKAGES) and not any(a.startswith("torch") for a in pip[pip.index("-c") + 2:])
    assert constraints == f"torch=={marker['torch']}\n"  # pip may never replace the project's torch there
    assert list(venv.parent.iterdir()) == [venv]  # no temp folder left beside it
    probe = subprocess.run([str(python), "-c", "import json, sys, sysconfig, torch; print(json.dumps("
                            "[torch.__version__, torch.__file__, sysconfig.get_paths()['purelib'], sys.path]))"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    version, torch_file, own_site, path = json.loads(probe.stdout)
    assert version == torch.__version__ and Path(torch_file).is_relative_to(lv.layered_paths()[0])
    assert path.index(own_site) < path.index(lv.layered_paths()[0]) < path.index(str(layered_site))


def test_a_failed_install_leaves_nothing_at_the_target(tmp_path, monkeypatch):
    def run(cmd, timeout, what):
        if cmd[1:4] == ["-m", "pip", "install"]:
            raise BackendUnavailable(f"LiteRT: {what} failed (exit 1): no network. {lv.INSTALL_HINT}.")
        return real(cmd, timeout, what)

    real = lv._run
    monkeypatch.setattr(lv, "_run", run)
    venv = tmp_path / "cache" / "litert-venv"
    with pytest.raises(BackendUnavailable, match=r"^LiteRT: pip install ai-edge-litert.*no network") as e:
        lv.ensure_venv(venv, timeout=120)
    assert "\n" not in str(e.value)
    assert list(venv.parent.iterdir()) == []  # neither the venv nor its temp folder


def test_a_venv_is_not_made_for_another_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(lv, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    with pytest.raises(BackendUnavailable, match="not the running torch 1.0.0"):
        lv.ensure_venv(tmp_path / "v", "1.0.0")
    assert not (tmp_path / "v").exists()


def test_main_says_one_paragraph_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_LITERT_VENV", str(tmp_path / "v"))
    monkeypatch.setattr(lv, "_run", lambda cmd, timeout, what: (_ for _ in ()).throw(
        BackendUnavailable(f"LiteRT: {what} failed (exit 1): offline. {lv.INSTALL_HINT}.")))
    assert lv.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: LiteRT: python -m venv failed") and err.count("\n") == 1
    assert not (tmp_path / "v").exists()
