"""pipeline.run, the Python twin of `pipeline run`: a script's own nn.Module, on the quick budget, end to end."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import pipeline
from pipeline import models
from pipeline.errors import PipelineError
from tests.helpers import invoke, snapshot


class ApiNet(nn.Module):
    """A user's model as a notebook defines it: constructor arguments, nothing registered anywhere."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _net(width: int = 8) -> ApiNet:
    torch.manual_seed(123)  # the same initial weights every time
    return ApiNet(width)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, data_root):
    """pipeline.run(model=<object>, quick=True) once; tests read (never modify) its artifacts."""
    artifacts = tmp_path_factory.mktemp("api")
    net = _net()
    initial = copy.deepcopy(net.state_dict())
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not what the run uses (threads=1): a leaked thread count would show
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    try:
        result = pipeline.run(model=net, quick=True, artifacts=artifacts, data_root=data_root, threads=1)
        after = {"threads": torch.get_num_threads(), "rng_kept": torch.equal(rng, torch.get_rng_state())}
    finally:
        torch.set_num_threads(threads)
    return {"result": result, "net": net, "initial": initial, "after": after, "artifacts": artifacts,
            "data_root": data_root}


def test_own_module_gets_a_real_report(api_run):
    r = api_run["result"]
    assert r.stages == dict.fromkeys(("data", "train", "export", "quantize", "engines", "validate"), "ran")
    assert r.run_dir == api_run["artifacts"] / "ApiNet" and r.model == "ApiNet" == r.report["model"]
    assert r.report == json.loads((r.run_dir / "report.json").read_text())
    rows = {v["name"]: v for v in r.report["variants"]}
    # the quick budget (4,000 images, 2 epochs) takes this net to about 0.9; a broken pipeline gives chance, 0.1
    assert r.accuracy() == rows["torch-fp32"]["accuracy"] > 0.85
    assert rows["onnx-fp32"]["agreement"] == 1.0 and rows["onnx-int8-qat"]["accuracy"] > 0.85
    assert r.report["quick"] is True and r.report["train"]["epochs"] == 2
    assert r.report["params"] == models.param_count(api_run["net"])


def test_the_callers_object_and_process_state_are_left_as_they_were(api_run):
    net = api_run["net"]
    assert net.state_dict().keys() == api_run["initial"].keys()
    assert all(torch.equal(v, api_run["initial"][k]) for k, v in net.state_dict().items())  # a copy was trained
    assert net.training  # never switched to eval mode
    assert api_run["after"] == {"threads": 3, "rng_kept": True}  # training seeded torch and set 1 thread


def test_the_same_call_again_skips_every_stage(api_run):
    r, art = api_run["result"], api_run["artifacts"]
    before = snapshot(r.run_dir)
    again = pipeline.run(model=_net(), quick=True, artifacts=art, data_root=api_run["data_root"], threads=1)
    assert set(again.stages.values()) == {"skipped"} and len(again.stages) == 6
    assert again.report == r.report
    assert snapshot(r.run_dir) == before  # stages.json included: nothing was redone


def test_checkpoint_restore_and_bundle_work_in_the_same_process(api_run, tmp_path):
    from pipeline.store import checkpoint

    r = api_run["result"]
    ckpt = checkpoint.load(r.run_dir / "train" / "model.pt")
    assert ckpt["model"] == "ApiNet" and ckpt["model_object"]["class"] == f"{__name__}.ApiNet"
    model = checkpoint.restore(ckpt)
    assert type(model) is ApiNet and all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items())
    folder, tar = r.bundle("cpu", out=tmp_path / "bundles")  # rebuilds the model to write the reference logits
    assert tar.is_file() and (folder / "data" / "reference.npz").is_file()


@pytest.fixture
def api_copy(api_run, tmp_path):
    dst = tmp_path / "artifacts"
    shutil.copytree(api_run["artifacts"], dst)
    return dst


def _train_key_inputs(artifacts):
    return json.loads((artifacts / "ApiNet" / "stages.json").read_text())["train"]["inputs"]


def test_one_changed_initial_weight_retrains(api_run, api_copy):
    net = _net()
    with torch.no_grad():
        net.head.bias[0] += 1e-3
    before = _train_key_inputs(api_copy)["model_source"]
    r = pipeline.run(model=net, stage="train", quick=True, artifacts=api_copy, data_root=api_run["data_root"],
                     threads=1)
    assert r.stages == {"data": "skipped", "train": "ran"} and r.report is None
    assert _train_key_inputs(api_copy)["model_source"] not in (before, "")


def test_fingerprint_sees_weights_buffers_and_layers():
    base = models.fingerprint(_net())
    assert models.fingerprint(_net()) == base  # same class, layers and initial weights
    nudged, bn, wider = _net(), _net(), _net(width=9)
    with torch.no_grad():
        nudged.features[0].weight[0, 0, 0, 0] += 1e-6
    bn.features[1].running_mean += 1  # a buffer, not a parameter
    frozen = _net()
    frozen.head.bias.requires_grad_(False)  # frozen layers train differently
    assert len({base, *map(models.fingerprint, (nudged, bn, wider, frozen))}) == 5


def test_a_notebook_class_in_a_new_process_is_refused_with_a_paragraph(api_copy, api_run, monkeypatch, tmp_path):
    # a new process has adopted no object: that is exactly an empty table
    monkeypatch.setattr(models, "_ADOPTED", {})
    before = snapshot(api_copy)
    for args in (("bundle", "--target", "cpu", "--out", tmp_path / "bundles"), ("run", "validate")):
        r = invoke(*args, "--model", "ApiNet", "--artifacts", api_copy, "--data-root", api_run["data_root"])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and "was trained from an nn.Module object (class tests.pipeline.test_api.ApiNet)" in out, out
        assert "--model package.module:ClassName" in out and "Traceback" not in out
    assert snapshot(api_copy) == before and not snapshot(tmp_path / "bundles")  # not a file written


class NoParams(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        raise ValueError("boom")


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"model": object()}, "got an object of type object"),
    ({"model": ApiNet}, "model=ApiNet is a class; give an object of it, model=ApiNet()"),
    ({"model": nn.Sequential(nn.Flatten(), nn.Linear(784, 3))}, "model=Sequential(...) must return (N, 10) logits"),
    ({"model": NoParams()}, "model=NoParams(...) has no trainable parameters"),
    ({"model": Raises()}, "model=Raises(...) failed while running a (1, 1, 28, 28) input"),
    ({"model": "nosuchmodel"}, "Unknown model 'nosuchmodel'"),
    ({"stage": "deploy"}, "Unknown stage 'deploy'"),
    ({"quant": "int4"}, "--quant must be one of none, ptq, qat, both"),
])
def test_bad_input_raises_pipeline_error_before_writing(tmp_path, data_root, kwargs, message):
    with pytest.raises(PipelineError) as e:
        pipeline.run(**{"artifacts": tmp_path / "a", "data_root": data_root, "quick": True, **kwargs})
    assert message in str(e.value)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("name, folder", [("mlp_small", "mlp_small"),
                                          ("tests.fixtures.user_models:TinyNet", "tests.fixtures.user_models__TinyNet")])
def test_a_registry_name_or_import_path_works_too(tmp_path, data_root, name, folder):
    r = pipeline.run(model=name, stage="data", quick=True, artifacts=tmp_path, data_root=data_root)
    assert r.stages == {"data": "ran"} and r.report is None and r.run_dir == tmp_path / folder
    assert (r.run_dir / "data" / "summary.json").is_file()


def test_importing_pipeline_does_not_import_torch():
    code = ("import sys, pipeline; from pipeline import run, RunResult, PipelineError; "
            "assert callable(run) and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kwargs, says", [
    ({"epoch": 3}, "'epoch' is not one (did you mean 'epochs'?)"),
    ({"batchsize": 64, "lrr": 0.1}, "2 unknown keywords: 'batchsize' is not one (did you mean 'batch_size'?); 'lrr'"),
    ({"nproc": 2}, "nproc is an option of the `pipeline run` command only: it starts worker processes"),
    ({"verbose": True}, "verbose is an option of the `pipeline run` command only"),
])
def test_an_unknown_keyword_is_one_paragraph_naming_the_valid_ones(tmp_path, kwargs, says):
    """The keywords are read from the option table (pipeline.config.OPTIONS), so a misspelt one is a user error
    like any other, not a TypeError, and the message lists the table's keywords."""
    from pipeline.config import OPTIONS

    with pytest.raises(PipelineError) as e:
        pipeline.run(stage="data", artifacts=tmp_path / "a", **kwargs)
    assert says in str(e.value) and str(e.value).endswith("Nothing was run.")
    assert all(o.name in str(e.value) for o in OPTIONS if not o.command_only)
    assert not (tmp_path / "a").exists()
