"""pipeline/config.py: one place for defaults, the --quick budget and the options; the CLI and pipeline.run read it."""
from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import config, stages
from pipeline.config import QUICK, RUN_OPTIONS, DataConfig, RunConfig, TrainConfig, build_config, default_of, stamp
from pipeline.errors import PipelineError
from tests.helpers import invoke

#: Today's defaults, written out: no result may change, so a changed default must show up here first.
DEFAULTS = {
    "data": {"val_size": 5000, "split_seed": 0, "max_train": None},
    "train": {"epochs": 6, "batch_size": 128, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
              "schedule": "onecycle", "label_smoothing": 0.05, "augment": True, "ema": 0.998, "channels_last": True,
              "seed": 0, "device": "auto", "threads": 0},
    "export": {"opset": 18, "golden_count": 64},
    "validate": {"batches": (1, 8, 64, 256), "warmup": 10, "rounds": 7, "iterations": 100, "max_seconds": 0.15,
                 "golden_atol": 1e-5, "threads": 0, "browser": True},
    "quant": {"mode": "both", "calib_size": 512, "calib_method": "minmax", "calib_seed": 0, "qat_epochs": 1,
              "qat_lr": 3e-5, "qat_max_images": 16384, "qat_observer_steps": 32, "qat_ema": 0.98, "qat_augment": False,
              "cpu_variant": True, "sqnr_images": 256, "sensitivity": True,
              "int8_budget": None},
}
#: ...and today's --quick budget: what differs from the defaults under --quick.
QUICK_TODAY = {"data": {"val_size": 1000, "max_train": 4000}, "train": {"epochs": 2},
               "validate": {"warmup": 3, "rounds": 3, "iterations": 10, "max_seconds": 0.02, "browser": False},
               "quant": {"calib_size": 128, "qat_max_images": 1024, "sqnr_images": 64}}


def _sections(cfg: RunConfig) -> dict:
    """Every field of a run config, sub-config by sub-config, as stamp() gives them (data root aside)."""
    out = {name: stamp(getattr(cfg, name)) for name in config.SECTIONS}
    out["top"] = {"model": cfg.model, "artifacts": str(cfg.artifacts), "force": cfg.force, "quick": cfg.quick,
                  "root": str(cfg.data.root)}
    return out


def _without_root(sections: dict) -> dict:
    return {k: {f: v for f, v in s.items() if f != "root"} for k, s in sections.items() if k != "top"}


def test_default_config_is_todays():
    cfg = RunConfig()
    assert _without_root(_sections(cfg)) == DEFAULTS
    assert (cfg.model, cfg.artifacts, cfg.force, cfg.quick) == ("edgenet", Path("artifacts"), False, False)
    assert build_config() == cfg  # the builder with no options is the same config


def test_quick_budget_is_todays_and_only_that():
    quick = _without_root(_sections(RunConfig(quick=True)))
    changed = {s: {f: v for f, v in quick[s].items() if v != DEFAULTS[s][f]} for s in DEFAULTS}
    assert {s: c for s, c in changed.items() if c} == QUICK_TODAY


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """The config `pipeline run` and pipeline.run hand to the stages (which are not run)."""
    seen = []

    def fake_run(cfg, until="validate", progress=None):
        seen.append(cfg)
        return {}

    monkeypatch.setattr(stages, "run", fake_run)
    monkeypatch.setenv("PIPELINE_DATA", str(tmp_path / "data"))  # the same default data root for all three
    monkeypatch.chdir(tmp_path)
    return seen


@pytest.mark.parametrize("args, python", [
    (["--quick"], lambda: RunConfig(quick=True)),
    (["--quick", "--epochs", "3"], lambda: RunConfig(quick=True, train=TrainConfig(epochs=3))),
])
def test_cli_quick_config_equals_the_python_one(captured, args, python):
    import pipeline

    r = invoke("run", "train", *args)
    assert r.exit_code == 0, r.output
    keywords = {a.lstrip("-").replace("-", "_"): True for a in args if a == "--quick"}
    if "--epochs" in args:
        keywords["epochs"] = int(args[args.index("--epochs") + 1])
    pipeline.run(stage="train", **keywords)
    cli_cfg, api_cfg = captured
    expected = _sections(python())
    assert _sections(cli_cfg) == expected  # field by field: a diff names the field
    assert _sections(api_cfg) == expected
    assert cli_cfg.train.epochs == keywords.get("epochs", 2)


def test_explicit_options_win_over_the_quick_budget():
    cfg = build_config(quick=True, epochs=5, val_size=2000, calib_size=64, threads=2)
    assert (cfg.train.epochs, cfg.data.val_size, cfg.quant.calib_size) == (5, 2000, 64)
    assert cfg.data.max_train == 4000 and cfg.validate.iterations == 10  # the rest of the budget stays
    assert cfg.train.threads == cfg.validate.threads == 2  # --threads sets both


def test_a_given_sub_config_is_used_as_given_and_must_be_one():
    cfg = RunConfig(quick=True, data=DataConfig(val_size=3000))
    assert cfg.data.max_train is None and cfg.train.epochs == 2
    with pytest.raises(PipelineError, match="RunConfig's train must be a TrainConfig, got dict"):
        RunConfig(train={"epochs": 3})
    with pytest.raises(PipelineError, match="Unknown option"):
        build_config(epoch=3)


def test_cli_and_python_api_take_the_same_options():
    from pipeline import api
    from pipeline.cli import app
    from typer.main import get_command

    common = {"stage", "model", "artifacts", "data_root", "force", "quick"}
    # --nproc starts worker processes: the CLI's (and torchrun's) job, not a library call inside the caller's process
    cli = {p.name for p in get_command(app).commands["run"].params} - {"verbose", "nproc"}
    python = set(inspect.signature(api.run).parameters)
    assert cli == python == common | set(RUN_OPTIONS)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in inspect.signature(api.run).parameters.values())


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:  # None: an opt-in option (--int8-budget)
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help_defaults() -> dict[str, str]:
    """``{option: text inside [default: ...]}`` from `pipeline run --help` as a user sees it."""
    from typer.testing import CliRunner

    import pipeline.cli

    r = CliRunner().invoke(pipeline.cli.app, ["run", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert r.exit_code == 0, r.output
    found = {}
    for line in r.output.splitlines():
        m = re.match(r"^\W*(--[\w-]+|\w+)\s.*\[default: ([^\]]*)\]", line)
        if m:
            found[m.group(1).lstrip("-").replace("-", "_")] = m.group(2)
    return found


def _expected(option: str) -> str:
    target = RUN_OPTIONS[option][0] if option in RUN_OPTIONS else option
    section, _, name = target.rpartition(".")
    text = _shown(default_of(target))
    return text + (f" (--quick: {_shown(QUICK[section][name])})" if name in QUICK.get(section, {}) else "")


def test_help_shows_every_default_from_the_config():
    from pipeline import api

    shown = _help_defaults()
    assert set(shown) == set(RUN_OPTIONS) | {"model", "artifacts", "stage"}, shown
    assert shown.pop("stage") == inspect.signature(api.run).parameters["stage"].default == "all"
    for option, text in shown.items():
        assert text == _expected(option), option
    assert shown["epochs"] == "6 (--quick: 2)" and shown["lr"] == "0.003"  # the formatting itself, once


def test_changing_a_default_in_config_changes_the_help():
    """A help text that restated "6" or "both" (or --quick's "2") would keep showing it after the change."""
    import pipeline.cli

    epochs = next(f for f in fields(TrainConfig) if f.name == "epochs")
    mode = next(f for f in fields(config.QuantConfig) if f.name == "mode")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(epochs, "default", 9)
            mp.setattr(mode, "default", "ptq")
            mp.setitem(QUICK, "train", {"epochs": 1})
            importlib.reload(pipeline.cli)  # the help is computed when the CLI module is imported
            shown = _help_defaults()
    finally:
        importlib.reload(pipeline.cli)
    assert shown["epochs"] == "9 (--quick: 1)" and shown["quant"] == "ptq"
    assert _help_defaults()["epochs"] == "6 (--quick: 2)"


# ---------------------------------------------------------------------------- values no config accepts
def test_calib_size_is_checked_against_the_training_split_only_when_quantizing(tmp_path, data_root):
    from pipeline.config import build_config
    from pipeline.errors import PipelineError

    def cfg(**quant):
        return build_config(model="edgenet", artifacts=tmp_path, data_root=data_root, force=False, quick=False,
                            val_size=5000, **quant)

    assert cfg(calib_size=55000).quant.calib_size == 55000  # 60,000 - 5,000 validation images
    with pytest.raises(PipelineError, match=r"--calib-size 55001 is larger than the training split \(55000 images\)"):
        cfg(calib_size=55001)
    assert cfg(quant="none", calib_size=10**9).quant.calib_size == 10**9  # no quantization, no calibration


@settings(max_examples=300, deadline=None)
@given(seed=st.one_of(st.integers(), st.integers(min_value=2**63 - 3, max_value=2**64 + 3),
                      st.integers(min_value=-3, max_value=3)))
@example(seed=2**63 - 1)
@example(seed=2**63)
@example(seed=2**64)
@example(seed=-1)
def test_every_accepted_seed_is_one_torch_takes(seed):
    import torch

    from pipeline.config import TrainConfig
    from pipeline.errors import PipelineError

    try:
        TrainConfig(seed=seed)
    except PipelineError as e:
        assert not 0 <= seed < 2**63 and "--seed must be from 0 to" in str(e)
        return
    assert 0 <= seed < 2**63
    torch.manual_seed(seed)  # neither raises for an accepted seed
    torch.Generator().manual_seed(seed)


FLOAT_FIELDS = ["lr", "weight_decay", "label_smoothing", "qat_lr"]


def _with_examples(test):
    for field in FLOAT_FIELDS:  # the values that matter, every run, before hypothesis draws its own
        for value in (math.nan, math.inf, -math.inf):
            test = example(field=field, value=value)(test)
    return test


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FLOAT_FIELDS), value=st.floats(allow_nan=True, allow_infinity=True))
@_with_examples
def test_no_float_option_accepts_nan_or_inf(field, value):
    from pipeline.config import QuantConfig, TrainConfig
    from pipeline.errors import PipelineError

    cls = QuantConfig if field == "qat_lr" else TrainConfig
    try:
        cfg = cls(**{field: value})
    except PipelineError as e:
        assert f"--{field.replace('_', '-')} must be" in str(e)
        return
    assert math.isfinite(getattr(cfg, field))


def test_world_size_joins_the_train_key_only_above_one():
    """A --nproc 2 result must not be taken for the single-process one (a different key), while a 1-process
    run keeps the key it had before the field existed (no world_size in its stamp)."""
    from pipeline.config import TrainConfig, build_config, stamp
    from pipeline.errors import PipelineError

    assert "world_size" not in stamp(TrainConfig())
    assert stamp(TrainConfig(world_size=2)) == {**stamp(TrainConfig()), "world_size": 2}
    assert build_config(world_size=2).train.world_size == 2 and build_config().train.world_size == 1
    with pytest.raises(PipelineError, match="global batch, split over 4 processes"):
        TrainConfig(batch_size=3, world_size=4)


@pytest.mark.parametrize("text,value", [(None, 1), ("1", 1), ("2", 2), (" 3 ", 3), (4, 4)])
def test_nproc_parses_whole_numbers(text, value):
    from pipeline.config import parse_nproc

    assert parse_nproc(text) == value


@pytest.mark.parametrize("field, value, says", [
    ("rounds", 2, "validate rounds must be 3 to 1000"), ("rounds", 10**6, "validate rounds must be 3 to 1000"),
    ("iterations", 0, "validate iterations (timed runs per burst) must be at least 1"),
    ("max_seconds", float("inf"), "validate max_seconds (per burst) must be a finite number"),
    ("max_seconds", float("nan"), "validate max_seconds (per burst) must be a finite number"),
    ("warmup", -1, "validate warmup must be 0..10,000 calls"),
])
def test_timing_rounds_are_checked_once_when_the_config_is_built(field, value, says):
    from pipeline.config import ValidateConfig

    with pytest.raises(PipelineError, match=re.escape(says)):
        ValidateConfig(**{field: value})
