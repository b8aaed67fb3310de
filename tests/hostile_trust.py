"""Hostile-sweep cases of issue 21's sections 3, 4, 6 and 7 (tests/hostile_sweep.py's ``cases()`` adds them):
JS runtimes that must refuse what Python refuses, models that never return or already output probabilities, paths
the OS cannot name, cache variables, deep folders, symlinks to altered artifacts, and the Python API's types."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.fixtures import onnx_models as om
from tests.hostile_sweep import Case, Env, _digit, _flip_byte, _png

LONG = "n" * 300  # one name over NAME_MAX (255 bytes)
DEEP = "/".join(["d" * 200] * 21)  # 4,220 bytes: over PATH_MAX (4,096), every name legal


def _refused(message: str):
    from pipeline.errors import PipelineError

    raise PipelineError(message)


def _cli(*args: str) -> None:
    """A CLI call inside an API-style case (for cases that must set up and tear down around it): exit 0 returns,
    an escaped exception is re-raised (a traceback), any other exit raises PipelineError with the output."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    if r.exit_code != 0:
        _refused(r.output)


@contextlib.contextmanager
def _environ(**values):
    """The environment with ``values`` set (None: unset) inside the block, and restored whole after it."""
    from unittest import mock

    with mock.patch.dict(os.environ):
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield


# ------------------------------------------------------------------------------------------ section 7: API types
def _api_run(env: Env, **kw) -> None:
    import pipeline

    pipeline.run(stage=kw.pop("stage", "data"), artifacts=kw.pop("artifacts", env.art),
                 data_root=kw.pop("data_root", env.data), **kw)


API_TYPES = {
    "epochs='3'": {"epochs": "3"}, "epochs=2.5": {"epochs": 2.5}, "epochs=True": {"epochs": True},
    "seed=1.5": {"seed": 1.5}, "seed='1'": {"seed": "1"}, "lr='0.01'": {"lr": "0.01"}, "lr=[0.01]": {"lr": [0.01]},
    "batch_size=64.0": {"batch_size": 64.0}, "optimizer=1": {"optimizer": 1}, "schedule=b'step'": {"schedule": b"step"},
    "augment=1": {"augment": 1}, "augment='yes'": {"augment": "yes"}, "ema='0.9'": {"ema": "0.9"},
    "threads=1.5": {"threads": 1.5}, "val_size='1000'": {"val_size": "1000"}, "calib_size=1.5": {"calib_size": 1.5},
    "qat_epochs='1'": {"qat_epochs": "1"}, "qat_lr='1e-4'": {"qat_lr": "1e-4"}, "device=0": {"device": 0},
    "quant=True": {"quant": True}, "browser='no'": {"browser": "no"}, "label_smoothing='0.1'": {"label_smoothing": "0.1"},
    "weight_decay=None-like object": {"weight_decay": object()}, "calib_method=['minmax']": {"calib_method": ["minmax"]},
    "int8_budget=[1]": {"int8_budget": [1]}, "force='yes'": {"force": "yes"}, "quick=1": {"quick": 1},
    "artifacts=5": {"artifacts": 5}, "data_root=3.5": {"data_root": 3.5},
}


def _lr_message(env: Env) -> None:
    from pipeline.errors import PipelineError

    try:
        _api_run(env, lr="0.01")
    except PipelineError as e:
        if "got 0.01 " in str(e) or "got 0.01." in str(e):  # the contradiction the issue quoted
            return None  # a wrong message: counted as a silent wrong result (exit 0)
        raise


# ------------------------------------------------------------------------------------------ section 6: paths
def _deep_folder(root: Path, levels: int = 1100) -> Path:
    """``root`` nested ``levels`` deep, made without recursion (os.makedirs recurses in Python 3.11)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("x")
    finally:
        os.close(fd)
    return root


def _remove_deep(root: Path) -> None:
    """Remove a deep tree without recursion (shutil.rmtree recurses in Python 3.11)."""
    from pipeline.store.paths import walk_tree

    entries = list(walk_tree(root))
    for p, mode in reversed(entries):
        (p.rmdir if os.path.isdir(p) and not os.path.islink(p) else p.unlink)()
    root.rmdir()


def _verify_deep(env: Env, marker: str) -> None:
    root = env.ws.parent / "deep"
    _deep_folder(root)
    (root / marker).write_text("{}")
    try:
        _cli("verify", str(root))
    finally:
        _remove_deep(root)


def _link_to_altered(env: Env) -> None:
    _flip_byte(env.fp32)
    (env.ws / "link.onnx").symlink_to(env.fp32)
    (env.ws / "linkdir").symlink_to(env.fp32.parent, target_is_directory=True)
    _png(env.ws / "d.png", _digit())


def _cache_case(env: Env, variable: str, kind: str) -> None:
    target = env.ws.parent / f"cache-{kind}"
    if kind == "file":
        target.write_text("not a folder")
    else:
        (env.ws.parent / "loop-b").symlink_to(target)
        target.symlink_to(env.ws.parent / "loop-b")
    other = {"PIPELINE_DATA": None, "XDG_CACHE_HOME": None, variable: str(target)}
    try:
        with _environ(**other):
            import pipeline

            pipeline.run(stage="data", artifacts=env.ws / "art-cache")
    finally:
        shutil.rmtree(env.ws / "art-cache", ignore_errors=True)


def _empty_xdg_is_unset(env: Env) -> None:
    from pipeline.config import default_data_root
    from pipeline.bundle.ort_web import cache_dir

    with _environ(XDG_CACHE_HOME="", PIPELINE_DATA=None):
        want = Path.home() / ".cache" / "edge-export-pipeline"
        if default_data_root() != want or cache_dir() != want / "npm":
            _refused(f"an empty XDG_CACHE_HOME gave {default_data_root()}")
    with _environ(XDG_CACHE_HOME="relative/dir", PIPELINE_DATA=None):
        if default_data_root() != want:
            _refused("a relative XDG_CACHE_HOME was used")


# ------------------------------------------------------------------------------------------ section 4: models
def _models(env: Env) -> Path:
    d = env.ws / "models"
    if not d.exists():
        om.endless(d / "endless.onnx")
        om.linear(d / "probs.onnx", head="softmax", output_kind="probabilities")
        om.linear(d / "mislabelled.onnx", output_kind="probabilities")
        om.linear(d / "unknown-kind.onnx", output_kind="probs")
        for name, (key, value) in BROKEN_META.items():
            om.linear(d / f"{name}.onnx", **{key: value})
        _png(env.ws / "d.png", _digit())
    return d


BROKEN_META = {
    "std-0": ("normalization_std", "[0]"), "std-empty": ("normalization_std", "[]"),
    "std-string": ("normalization_std", '"0.3"'), "std-number": ("normalization_std", "0.3"),
    "std-nan": ("normalization_std", "[NaN]"), "mean-string": ("normalization_mean", '"abc"'),
    "mean-inf": ("normalization_mean", "[Infinity]"), "classes-string": ("classes", '"0123456789"'),
    "classes-empty": ("classes", "[]"), "classes-short": ("classes", '["0", "1", "2"]'),
}


def _classifier(env: Env, name: str, **kw) -> None:
    import numpy as np

    from runtime import Classifier

    with Classifier(_models(env) / f"{name}.onnx", **kw) as clf:
        pred = clf.predict(np.zeros((28, 28), np.uint8))
    if name == "probs" and not abs(float(pred.probabilities.sum()) - 1) < 1e-3:
        _refused("probabilities do not sum to 1")


# ------------------------------------------------------------------------------------------ section 3: JS
JS_BROKEN = {
    "std [0]": {"std": [0]}, "std []": {"std": []}, "std '0.3'": {"std": "0.3"}, "std 0.3": {"std": 0.3},
    "std [null]": {"std": [None]}, "mean 'abc'": {"mean": "abc"}, "mean []": {"mean": []}, "mean {}": {"mean": {}},
    "pixel_scale 0": {"pixel_scale": 0}, "classes '0123456789'": {"classes": "0123456789"},
    "classes []": {"classes": []}, "output_kind 'probs'": {"output_kind": "probs"},
}


def _node_bundle(env: Env, **over) -> Path:
    from pipeline.bundle.js import NODE_FILES
    from tests.js.env import NODE_MODULES

    if shutil.which("node") is None or not (NODE_MODULES / "onnxruntime-node").is_dir():
        _refused("node or onnxruntime-node is not installed (the JS cases need them)")
    folder = env.ws.parent / "node-bundle"
    if not folder.exists():
        for name, src in NODE_FILES.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / name)
        (env.ws.parent / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
        om.linear(folder / "models" / "logits.onnx")
        om.linear(folder / "models" / "nan.onnx", nan=True)
        om.linear(folder / "models" / "wide.onnx", outputs=12)
        om.digit_png(folder / "digit.png")
        (folder / "golden").mkdir()
    entry = {"file": "models/logits.onnx", "input_name": "x", "output_name": "y", "input_shape": [1, 28, 28],
             "layout": "NCHW", "pixel_scale": 1 / 255, "mean": [0.1307], "std": [0.3081], "classes": om.CLASSES,
             "output_kind": "logits", "accuracy": 0.5, "variant": "onnx-fp32"}
    entry.update(over)
    (folder / "preprocessing.json").write_text(json.dumps({"models": {"m": entry}}))
    return folder


def _node(folder: Path, *args: str, rows: int | None = None) -> None:
    r = subprocess.run(["node", "classify.mjs", *args], cwd=folder, capture_output=True, text=True, timeout=120)
    if "    at " in r.stderr:
        raise RuntimeError(f"Traceback (JS stack): {r.stderr[-800:]}")
    if r.returncode != 0:
        _refused(r.stderr.strip())
    if rows is not None and len(r.stdout.splitlines()) != rows:
        _refused(f"a file name forged a row: {r.stdout!r}")


def _golden(env: Env, model: str, images) -> None:
    folder = _node_bundle(env, file=f"models/{model}.onnx")
    (folder / "golden" / "golden.json").write_text(json.dumps({"images": images, "pixel_tolerance": 1e9,
                                                               "logits_atol": 1e9}))
    _node(folder, "--golden")


def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append
    # section 7
    for name, kw in API_TYPES.items():
        add(Case("API types", f"run({name})", lambda env, kw=kw: _api_run(env, **dict(kw))))
    add(Case("API types", "run(lr='0.01') names the type, not 'got 0.01'", _lr_message))
    um = "tests.fixtures.user_models"
    add(Case("user model", "forward returns .detach() (API)",
             lambda env: _api_run(env, model=f"{um}:DetachedOutput", stage="train", quick=True)))
    add(Case("user model", "forward returns .detach() (CLI)",
             ["run", "train", "--quick", "--model", f"{um}:DetachedOutput", "--artifacts", "{art}", "--data-root", "{data}"]))
    add(Case("user model", "detaches only in training mode", ["run", "train", "--quick", "--epochs", "1", "--model",
                                                              f"{um}:DetachedWhenTraining", "--artifacts", "{art}",
                                                              "--data-root", "{data}"]))
    # section 6: long paths, in every command and the API
    for label, p in (("a 300-byte name", LONG), ("a 4,220-byte path", DEEP)):
        add(Case("long path", f"predict image: {label}", ["predict", f"{{ws}}/{p}.png", "--model", "{fp32}"]))
        add(Case("long path", f"predict --model: {label}", ["predict", "{ws}/x.png", "--model", f"{{ws}}/{p}"]))
        add(Case("long path", f"bench: {label}", ["bench", f"{{ws}}/{p}"]))
        add(Case("long path", f"verify: {label}", ["verify", f"{{ws}}/{p}"]))
        add(Case("long path", f"report: {label}", ["report", f"{{ws}}/{p}"]))
        add(Case("long path", f"check-qdq: {label}", ["check-qdq", f"{{ws}}/{p}"]))
        add(Case("long path", f"bundle --out: {label}", ["bundle", "--target", "cpu", "--artifacts", "{art}",
                                                         "--out", f"{{ws}}/{p}"]))
        add(Case("long path", f"run --artifacts: {label}", ["run", "data", "--artifacts", f"{{ws}}/{p}",
                                                            "--data-root", "{data}"]))
        add(Case("long path", f"Classifier(): {label}", lambda env, p=p: _classifier_path(env.ws / p)))
        add(Case("long path", f"pipeline.run(artifacts=): {label}", lambda env, p=p: _api_run(env, artifacts=env.ws / p)))
    add(Case("long path", "bundle --model with a 300-byte name", ["bundle", "--target", "cpu", "--model", LONG,
                                                                  "--artifacts", "{art}"]))
    add(Case("long path", "load_image: a 300-byte name", lambda env: _load_image(env.ws / f"{LONG}.png")))
    # cache variables
    for variable in ("XDG_CACHE_HOME", "PIPELINE_DATA"):
        for kind in ("file", "loop"):
            add(Case("cache", f"{variable} is a {kind}", lambda env, v=variable, k=kind: _cache_case(env, v, k)))
    add(Case("cache", "XDG_CACHE_HOME empty or relative counts as unset", _empty_xdg_is_unset, expect="ok"))
    # deep folders
    add(Case("deep folder", "verify a bundle-like folder 1,100 levels deep", lambda env: _verify_deep(env, "MANIFEST.json")))
    add(Case("deep folder", "verify a run folder 1,100 levels deep", lambda env: _verify_deep(env, "stages.json")))
    # symlinks to altered artifacts
    add(Case("symlink", "predict through a symlink to an altered model", ["predict", "{ws}/d.png", "--model",
                                                                          "{ws}/link.onnx"], setup=_link_to_altered))
    add(Case("symlink", "bench through a symlink to an altered model", ["bench", "{ws}/link.onnx", "--batch", "1",
                                                                        "--duration", "0.1", "--warmup", "1",
                                                                        "--warmup-seconds", "0"],
             setup=_link_to_altered))
    add(Case("symlink", "predict through a symlinked folder", ["predict", "{ws}/d.png", "--model",
                                                               "{ws}/linkdir/model-fp32.onnx"], setup=_link_to_altered))
    # section 4: untrusted model behaviour
    add(Case("endless model", "Classifier(time_limit=0.5) on a Loop of 2**62", lambda env: _classifier(env, "endless",
                                                                                                    time_limit=0.5)))
    add(Case("endless model", "bench: every call bounded", lambda env: _cli(
        "bench", str(_models(env) / "endless.onnx"), "--batch", "1", "--warmup", "0", "--warmup-seconds", "0",
        "--duration", "0.1", "--iterations", "1")))
    add(Case("output_kind", "probabilities: no second softmax", lambda env: _classifier(env, "probs"), expect="ok"))
    add(Case("output_kind", "logits said to be probabilities", lambda env: _classifier(env, "mislabelled")))
    add(Case("output_kind", "an unknown output_kind", lambda env: _classifier(env, "unknown-kind")))
    for name in BROKEN_META:
        add(Case("broken contract", f"Classifier: {name}", lambda env, n=name: _classifier(env, n)))
        add(Case("broken contract", f"predict: {name}", lambda env, n=name: _cli(
            "predict", str(env.ws / "d.png"), "--model", str(_models(env) / f"{n}.onnx"))))
    # section 3: the JS runtimes
    for name, over in JS_BROKEN.items():
        add(Case("node classify.mjs", name, lambda env, o=over: _node(_node_bundle(env, **o), "digit.png")))
    add(Case("node classify.mjs", "NaN scores", lambda env: _node(_node_bundle(env, file="models/nan.onnx"), "digit.png")))
    add(Case("node classify.mjs", "10 labels for 12 outputs",
             lambda env: _node(_node_bundle(env, file="models/wide.onnx"), "digit.png")))
    add(Case("node classify.mjs", "--golden with zero images", lambda env: _golden(env, "logits", [])))
    add(Case("node classify.mjs", "--golden with zero images, NaN model", lambda env: _golden(env, "nan", [])))
    add(Case("node classify.mjs", "--golden with no image list", lambda env: _golden(env, "logits", None)))
    add(Case("node classify.mjs", "a file name with a tab and a newline", _forged_row, expect="ok"))
    return out


def _classifier_path(path: Path) -> None:
    from runtime import Classifier

    Classifier(path)


def _load_image(path: Path) -> None:
    from runtime.preprocess import load_image

    load_image(path)


def _forged_row(env: Env) -> None:
    folder = _node_bundle(env)
    name = "x\tforged\t9\t1.0000\ny.png"
    shutil.copy(folder / "digit.png", folder / name)
    _node(folder, name, rows=1)
