"""Paths the OS cannot name (layout.path_error, the CLI checks), cache variables, deep folders (layout.walk_tree),
symlinks to altered artifacts, and the Python API's option types (issue 21, sections 6 and 7): each a one-paragraph
refusal, never a traceback."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.config import FIELD_TYPES, RUN_OPTIONS, SECTIONS, build_config, default_data_root
from pipeline.errors import PipelineError
from runtime.errors import RuntimeInputError
from tests.helpers import invoke
from tests.hostile_trust import DEEP, LONG, _deep_folder, _remove_deep

UM = "tests.fixtures.user_models"


# ---------------------------------------------------------------- long paths
@pytest.mark.parametrize("label,name", [("name", LONG), ("path", DEEP)])
@pytest.mark.parametrize("args", [
    ["predict", "{p}.png"], ["predict", "x.png", "--model", "{p}"], ["bench", "{p}"], ["verify", "{p}"],
    ["report", "{p}"], ["check-qdq", "{p}"], ["bundle", "--target", "cpu", "--out", "{p}"],
    ["run", "data", "--artifacts", "{p}"], ["run", "data", "--data-root", "{p}"],
])
def test_a_path_too_long_is_one_paragraph_in_every_command(tmp_path, label, name, args):
    r = invoke(*[a.replace("{p}", str(tmp_path / name)) for a in args])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.output.startswith("error: The path given as") and "limit of" in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("name", [LONG, DEEP])
def test_classifier_load_image_and_run_refuse_a_path_too_long(tmp_path, name):
    import pipeline
    from runtime import Classifier
    from runtime.preprocess import load_image

    with pytest.raises(RuntimeInputError, match="limit of"):
        Classifier(tmp_path / name)
    with pytest.raises(RuntimeInputError, match="limit of"):
        load_image(tmp_path / name)
    with pytest.raises(PipelineError, match="The artifacts path .* limit of"):
        pipeline.run(stage="data", artifacts=tmp_path / name)


# ---------------------------------------------------------------- cache variables
def test_an_empty_or_relative_xdg_cache_home_counts_as_unset(monkeypatch):
    from pipeline.bundle.ort_web import cache_dir

    monkeypatch.delenv("PIPELINE_DATA", raising=False)
    want = Path.home() / ".cache" / "edge-export-pipeline"
    for value in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert default_data_root() == want and cache_dir() == want / "npm"
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert default_data_root() == Path("/somewhere/edge-export-pipeline")


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "PIPELINE_DATA"])
@pytest.mark.parametrize("kind", ["file", "loop"])
def test_a_cache_that_is_a_file_or_a_symlink_loop_names_the_variable(tmp_path, monkeypatch, variable, kind):
    import pipeline

    target = tmp_path / "cache"
    if kind == "file":
        target.write_text("not a folder")
    else:
        (tmp_path / "other").symlink_to(target)
        target.symlink_to(tmp_path / "other")
    monkeypatch.delenv("PIPELINE_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv(variable, str(target))
    with pytest.raises(PipelineError) as e:
        pipeline.run(stage="data", artifacts=tmp_path / "art")
    msg = str(e.value)
    assert f"${variable}" in msg and "--out" not in msg and "MNIST data folder" in msg, msg
    r = invoke("run", "data", "--artifacts", tmp_path / "art2")
    assert r.exit_code != 0 and f"${variable}" in r.output and "Traceback" not in r.output, r.output


# ---------------------------------------------------------------- deep folders, symlinks
@pytest.mark.parametrize("marker", ["MANIFEST.json", "stages.json"])
def test_verify_walks_a_folder_1100_levels_deep(tmp_path, marker):
    root = _deep_folder(tmp_path / "deep")
    (root / marker).write_text("{}")
    try:
        r = invoke("verify", root)
    finally:
        _remove_deep(root)
    assert r.exit_code in (1, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), r.exception
    assert "RecursionError" not in r.output and "Traceback" not in r.output, r.output


def test_walk_tree_is_iterative_and_never_follows_links(tmp_path):
    import stat

    from pipeline.store.paths import walk_tree

    root = _deep_folder(tmp_path / "deep", levels=1100)
    (root / "link").symlink_to(root, target_is_directory=True)
    try:
        entries = list(walk_tree(root))
    finally:
        (root / "link").unlink()
        _remove_deep(root)
    assert sum(stat.S_ISDIR(m) for _, m in entries) == 1100 and sum(stat.S_ISLNK(m) for _, m in entries) == 1
    assert sum(stat.S_ISREG(m) for _, m in entries) == 1


def test_a_symlink_to_an_altered_artifact_is_checked(tmp_path):
    from pipeline.store import manifest

    run = tmp_path / "art" / "edgenet"
    (run / "export").mkdir(parents=True)
    model = run / "export" / "model-fp32.onnx"
    model.write_bytes(b"onnx bytes as written")
    manifest.save(run / "stages.json", {"export": manifest.entry(run, "0" * 64, {}, [model], 1.0)})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "link.onnx").symlink_to(model)
    (outside / "linkdir").symlink_to(run / "export", target_is_directory=True)
    for path in (outside / "link.onnx", outside / "linkdir" / "model-fp32.onnx"):
        manifest.require_intact_if_recorded(path, "pipeline predict")  # intact: passes
    model.write_bytes(b"onnx bytes altered!!!")
    for path in (outside / "link.onnx", outside / "linkdir" / "model-fp32.onnx", model):
        with pytest.raises(PipelineError, match="altered"):
            manifest.require_intact_if_recorded(path, "pipeline predict")
    for command in (["predict", "x.png", "--model", outside / "link.onnx"], ["bench", outside / "link.onnx"]):
        r = invoke(*command)
        assert r.exit_code != 0 and "altered" in r.output and "Traceback" not in r.output, r.output


# ---------------------------------------------------------------- the Python API's types
def test_every_tuning_option_has_a_type_in_the_one_table():
    for option, targets in RUN_OPTIONS.items():
        if option != "int8_budget":  # a number or the CLI's text: parse_budget checks it
            assert all(t in FIELD_TYPES for t in targets), option
    for target in FIELD_TYPES:
        section, _, name = target.partition(".")
        assert name in {f.name for f in dataclasses.fields(SECTIONS[section])}, target


WRONG = {"int": ["3", 2.5, True, None.__class__], "float": ["0.01", [0.01], True], "str": [1, b"x", None.__class__],
         "bool": [1, "yes", 0.0]}


@pytest.mark.parametrize("option", [o for o in RUN_OPTIONS if o != "int8_budget"])
def test_run_refuses_a_wrong_type_for_every_option_before_any_work(option, tmp_path):
    import pipeline

    kind = FIELD_TYPES[RUN_OPTIONS[option][0]].rstrip("?")
    for value in WRONG[kind]:
        with pytest.raises(PipelineError, match=rf"^{option} \(--{option.replace('_', '-')}\) must be .*got {re.escape(repr(value))} \({type(value).__name__}\)"):
            pipeline.run(stage="data", artifacts=tmp_path / "art", **{option: value})
    assert not (tmp_path / "art").exists()  # nothing was done


def test_the_issue_examples():
    for kw, words in (({"epochs": "3"}, "got '3' (str)"), ({"seed": 1.5}, "got 1.5 (float)"),
                      ({"epochs": 2.5}, "got 2.5 (float)"), ({"lr": "0.01"}, "got '0.01' (str)")):
        with pytest.raises(PipelineError, match=re.escape(words)):
            build_config(**kw)
    with pytest.raises(PipelineError, match="quick must be True or False"):
        build_config(quick="yes")
    with pytest.raises(PipelineError, match="artifacts must be a path"):
        build_config(artifacts=5)
    assert build_config(epochs=3, lr=1, seed=2).train.lr == 1  # an int is a number


def test_a_model_without_gradient_is_one_paragraph(tmp_path, data_root):
    import pipeline
    from pipeline.models import build

    with pytest.raises(PipelineError, match="its output carries no gradient"):
        build(f"{UM}:DetachedOutput")
    with pytest.raises(PipelineError, match="carries no gradient in training mode"):
        pipeline.run(stage="train", quick=True, epochs=1, model=f"{UM}:DetachedWhenTraining",
                     artifacts=tmp_path / "art", data_root=data_root)



