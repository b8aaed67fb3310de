"""The hostile-input sweep: every command and the Python API, fed bad or unusual input.

A verification tool earns trust by how it fails. Each case below names one input
(a bad option value, a damaged file, a malicious archive, a misbehaving model,
a path that looks like markup...) and the outcome a careful tool must give:

* ``refuse``: a non-zero exit with a one-paragraph ``error:`` message
  (``verify`` reports problems with exit 1); the Python API raises its own
  error class (``RuntimeInputError`` / ``PipelineError``);
* ``ok``: unusual but legitimate input is handled (exit 0), and any text given
  in ``shows`` (a file name with brackets, say) appears literally in the output.

Each case is judged on four counts, all of which must stay at zero:

* **traceback**: an exception escaped (or the output holds ``Traceback``);
* **hang**: the case ran past its time limit (``signal.alarm``);
* **changed**: a file that had to stay as it was changed or vanished, or a
  temp file of an unfinished write was left (the run folder and everything
  else the case set up are snapshotted before and after; a refusal may leave
  new files of stages that finished before it);
* **silent wrong result**: a success where a refusal was due (a NaN model that
  passes, a tampered file that is bundled, a symlink that is approved).

Run it alone with ``python -m tests.hostile_sweep`` (it makes its own quick run),
or through ``tests/test_hostile_sweep.py`` (CI), which reuses the suite's.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

TIME_LIMIT_S = 120  # per case; the slowest legitimate case (a quick run of a tiny model) takes ~20 s


class Hang(BaseException):
    """Raised by the alarm when a case runs past its time limit (BaseException: nothing may swallow it)."""


@dataclass
class Case:
    group: str
    name: str
    #: CLI arguments (``{art}``, ``{run}``, ``{ws}``, ``{data}``, ``{fp32}``, ``{bundle}`` are filled in), or a
    #: callable ``f(env) -> None`` for the Python API (it must raise the API's own error class to ``refuse``)
    action: list | Callable
    expect: str = "refuse"  # refuse | ok
    setup: Callable | None = None  # f(env) -> None: damages or creates files in the case's workspace
    shows: str | None = None  # literal text the output must contain


@dataclass
class Outcome:
    case: Case
    exit_code: int | None
    seconds: float
    output: str
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ environment
@dataclass
class Env:
    """One case's workspace: its own copy of the quick run's artifacts (``art``), the shared data root."""

    ws: Path
    art: Path
    data: Path
    bundle_src: Path | None = None  # a prebuilt cpu bundle folder (copied into ws on demand)

    @property
    def run(self) -> Path:
        return self.art / "edgenet"

    @property
    def fp32(self) -> Path:
        return self.run / "export" / "model-fp32.onnx"

    def bundle(self) -> Path:
        dst = self.art / "bundles" / self.bundle_src.name
        if not dst.exists():
            shutil.copytree(self.bundle_src, dst, symlinks=True)
            tar = self.bundle_src.with_name(self.bundle_src.name + ".tar.gz")
            if tar.exists():
                shutil.copy2(tar, dst.with_name(tar.name))
        return dst

    def fill(self, arg: str) -> str:
        subs = {"{art}": self.art, "{run}": self.run, "{ws}": self.ws, "{data}": self.data, "{fp32}": self.fp32}
        for k, v in subs.items():
            arg = arg.replace(k, str(v))
        if "{bundle}" in arg:
            arg = arg.replace("{bundle}", str(self.bundle()))
        return arg


def snapshot(*folders: Path) -> dict[str, tuple]:
    """(size, sha-ish) of every file and the target of every link under the folders."""
    import hashlib

    out = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if p.name == ".lock":  # the run lock records the last holder's pid: bookkeeping, not an artifact
                continue
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# ------------------------------------------------------------------------------------------ input makers
def _onnx_model(path: Path, inputs, outputs, nodes, initializers=(), meta=None) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for k, v in (meta or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


def _tensor(name, elem, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def odd_models(ws: Path) -> dict[str, Path]:
    """ONNX files that are valid ONNX but not single-input float image classifiers."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    shape4 = lambda b="N": [b, 1, 28, 28]  # noqa: E731
    flat = helper.make_node("Flatten", ["input"], ["flat"])
    mm = helper.make_node("MatMul", ["flat", "w"], ["logits"])
    out = [_tensor("logits", T.FLOAT, ["N", 10])]
    models = {
        "two_inputs": _onnx_model(ws / "two_inputs.onnx", [_tensor("input", T.FLOAT, shape4()),
                                                           _tensor("other", T.FLOAT, shape4())],
                                  out, [helper.make_node("Add", ["input", "other"], ["s"]),
                                        helper.make_node("Flatten", ["s"], ["flat"]), mm], [w]),
        "int64_input": _onnx_model(ws / "int64_input.onnx", [_tensor("input", T.INT64, shape4())], out,
                                   [helper.make_node("Cast", ["input"], ["f"], to=T.FLOAT),
                                    helper.make_node("Flatten", ["f"], ["flat"]), mm], [w]),
        "uint8_input": _onnx_model(ws / "uint8_input.onnx", [_tensor("input", T.UINT8, shape4())], out,
                                   [helper.make_node("Cast", ["input"], ["f"], to=T.FLOAT),
                                    helper.make_node("Flatten", ["f"], ["flat"]), mm], [w]),
        "fixed_batch_1": _onnx_model(ws / "fixed_batch_1.onnx", [_tensor("input", T.FLOAT, shape4(1))],
                                     [_tensor("logits", T.FLOAT, [1, 10])], [flat, mm], [w]),
        "no_inputs": _onnx_model(ws / "no_inputs.onnx", [], [_tensor("logits", T.FLOAT, [1, 10])],
                                 [helper.make_node("Constant", [], ["logits"],
                                                   value=numpy_helper.from_array(np.zeros((1, 10), np.float32)))]),
        "string_input": _onnx_model(ws / "string_input.onnx", [_tensor("input", T.STRING, ["N"])],
                                    [_tensor("logits", T.STRING, ["N"])],
                                    [helper.make_node("Identity", ["input"], ["logits"])]),
        "one_score": _onnx_model(ws / "one_score.onnx", [_tensor("input", T.FLOAT, shape4())],
                                 [_tensor("logits", T.FLOAT, ["N"])],
                                 [helper.make_node("ReduceSum", ["input"], ["logits"], keepdims=0)]),
    }
    mm2 = helper.make_node("MatMul", ["input", "w"], ["logits"])
    models["rank2_input"] = _onnx_model(ws / "rank2_input.onnx", [_tensor("input", T.FLOAT, ["N", 784])], out,
                                        [mm2], [w])
    return models


def _digit(h: int = 28, w: int = 28) -> np.ndarray:
    """A white vertical stroke on black: a "1" that preprocessing accepts (a blank image is refused)."""
    a = np.zeros((h, w), np.uint8)
    a[h // 5 : h - h // 5, w // 2 - 2 : w // 2 + 2] = 255
    return a


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)  # a name like "[/x].png" is the file "x].png" in folder "["
    Image.fromarray(array).save(path)
    return path


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _evil_tar(env: Env, kind: str) -> Path:
    """A copy of the real bundle tarball with one hostile member added (or a name repeated)."""
    bundle = env.bundle()
    src = bundle.with_name(bundle.name + ".tar.gz")
    top = bundle.name
    members = []
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read() if m.isfile() else None))

    def info(name, type_=tarfile.REGTYPE, size=0, link=""):
        i = tarfile.TarInfo(name)
        i.type, i.size, i.linkname = type_, size, link
        return i

    extra = {
        "symlink_after_real_file": [(info(f"{top}/bench.py", tarfile.SYMTYPE, link="/etc/passwd"), None)],
        "symlink_new_name": [(info(f"{top}/models/evil.onnx", tarfile.SYMTYPE, link="/etc/passwd"), None)],
        "hardlink": [(info(f"{top}/data/link", tarfile.LNKTYPE, link="/etc/passwd"), None)],
        "fifo": [(info(f"{top}/data/fifo", tarfile.FIFOTYPE), None)],
        "char_device": [(info(f"{top}/data/tty", tarfile.CHRTYPE), None)],
        "dotdot": [(info(f"{top}/../escape.txt", size=2), b"hi")],
        "absolute": [(info("/tmp/escape.txt", size=2), b"hi")],
        "duplicate_regular": [(info(f"{top}/README.md", size=2), b"hi")],
        "second_top_folder": [(info("other/x.txt", size=2), b"hi")],
        "backslash_name": [(info(f"{top}\\..\\x.txt", size=2), b"hi")],
    }[kind]
    return _tar_with(env.ws / f"evil-{kind}.tar.gz", members + extra)


def _edit_json(path: Path, mutate, record_in_manifest: bool = True) -> None:
    """Change a JSON artifact and, like a careful forger, record its new hash in stages.json."""
    data = json.loads(path.read_text())
    data = mutate(data)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    if record_in_manifest:
        _rerecord(path)


def _rerecord(path: Path) -> None:
    from pipeline.store.paths import sha256_file

    run = path.parent
    while not (run / "stages.json").exists():
        run = run.parent
    rel = str(path.relative_to(run))
    stages = json.loads((run / "stages.json").read_text())
    for info in stages.values():
        if isinstance(info, dict) and rel in info.get("outputs", {}):
            info["outputs"][rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (run / "stages.json").write_text(json.dumps(stages))


# ------------------------------------------------------------------------------------------ the cases
def cases() -> list[Case]:
    out: list[Case] = []
    add = out.append
    common = ["--artifacts", "{art}", "--data-root", "{data}"]

    # --- `run`: option values past what typer's types check
    bad_values = {
        "--epochs": ["0", "-1", "-100"],
        "--batch-size": ["0", "-5", "1000000"],
        "--lr": ["0", "-1", "nan", "inf", "-inf", "1e9"],
        "--weight-decay": ["-1", "nan", "inf"],
        "--label-smoothing": ["-0.1", "1", "nan", "inf"],
        "--seed": ["-1", str(2 ** 64), str(10 ** 30)],
        "--val-size": ["0", "-1", "60000", "1000000"],
        "--calib-size": ["0", "-1", "1000000000"],
        "--qat-epochs": ["0", "-3"],
        "--qat-lr": ["0", "nan", "inf", "2", "-1"],
        "--threads": ["-1", "-100"],
        "--optimizer": ["lion", "", "ADAMW;rm"],
        "--schedule": ["warp", ""],
        "--device": ["tpu", "", "cuda:99"],
        "--quant": ["all", ""],
        "--calib-method": ["kl", ""],
        "--nproc": ["0", "-1", "two", "1.5", "", str(10 ** 6)],
    }
    for opt, values in bad_values.items():
        for v in values:
            add(Case("run options", f"{opt} {v!r}", ["run", "all", "--quick", *common, opt, v]))
    for stage in ("deploy", "[/x]", "", "valid ate"):
        add(Case("run options", f"stage {stage!r}", ["run", stage, "--quick", *common]))

    # --- `run --model`: names that are not nn.Module classes, and models that fail every way user code can
    f = "tests.fixtures.user_models:"
    for spec in ("resnet9000", "builtins:exit", "builtins:quit", "os:system", "builtins:int", "builtins:object",
                 f + "a_function", f + "AN_INSTANCE", f + "NotAModule", f + "NoParameters", f + "FrozenParameters",
                 f + "WrongShapeForOddBatches", f + "SqueezesBatch", f + "RaisesInInit", f + "ExitsInInit",
                 f + "ExitsWithMessageInForward", f + "ExitBuiltinInForward", f + "ReturnsTuple", f + "NeedsArgs",
                 f + "WrongOutput", "no.such.module:Net", "pkg:", ":Net", f + "Missing", "[/x]:Net", "[bold]x"):
        add(Case("run --model", spec, ["run", "all", "--quick", *common, "--model", spec]))
    add(Case("run --model", "diverging training (loss NaN)",
             ["run", "train", "--quick", *common, "--model", f + "Diverging"]))
    add(Case("silent wrong", "model whose eval logits are NaN",
             ["run", "all", "--quick", "--quant", "none", *common, "--model", f + "NaNInEval"]))

    # --- `run`: damaged or hand-edited files in the run folder
    def damage_stages(mutate):
        return lambda env: _write(env.run / "stages.json", mutate(json.loads((env.run / "stages.json").read_text())))

    stage_damage = {
        "outputs is a list": lambda r: {**r, "train": {**r["train"], "outputs": []}},
        "sha256 is a number": lambda r: _set_output(r, "train", "train/model.pt", {"sha256": 5, "size": 1}),
        "size is a string": lambda r: _set_output(r, "train", "train/model.pt", {"sha256": "0" * 64, "size": "big"}),
        "key missing": lambda r: {**r, "data": {k: v for k, v in r["data"].items() if k != "key"}},
        "stage entry is null": lambda r: {**r, "export": None},
        "top level is a list": lambda r: [r],
        "outputs missing": lambda r: {**r, "quantize": {k: v for k, v in r["quantize"].items() if k != "outputs"}},
        "output path escapes": lambda r: _set_output(r, "data", "../../etc/passwd", {"sha256": "0" * 64, "size": 1}),
        "absolute output path": lambda r: _set_output(r, "data", "/etc/passwd", {"sha256": "0" * 64, "size": 1}),
        "negative size": lambda r: _set_output(r, "train", "train/model.pt", {"sha256": "0" * 64, "size": -1}),
        "inputs is a string": lambda r: {**r, "train": {**r["train"], "inputs": "x"}},
    }
    stage_setups = {name: damage_stages(mutate) for name, mutate in stage_damage.items()}
    stage_setups["NaN seconds"] = lambda env: _rewrite(env.run / "stages.json", lambda t: t.replace(
        '"seconds": ', '"seconds": NaN, "x": ', 1), record=False)
    for name, setup in stage_setups.items():
        add(Case("stages.json", f"run: {name}", ["run", "all", "--quick", *common], setup=setup))
        add(Case("stages.json", f"verify: {name}", ["verify", "{run}"], setup=setup))

    # --- `report`
    report_damage = {
        "variants is a dict": lambda r: {**r, "variants": {}},
        "variants missing": lambda r: {k: v for k, v in r.items() if k != "variants"},
        "accuracy is a string": lambda r: _set_variant(r, "accuracy", "high"),
        "accuracy is null": lambda r: _set_variant(r, "accuracy", None),
        "latency is a list": lambda r: _set_variant(r, "latency", []),
        "p50 missing": lambda r: _set_variant(r, "latency", {"1": {"throughput_per_s": 1}}),
        "train is a number": lambda r: {**r, "train": 5},
        "train epochs is a string": lambda r: {**r, "train": {**r["train"], "epochs": "seven"}},
        "environment is a list": lambda r: {**r, "environment": []},
        "model is a number": lambda r: {**r, "model": 7},
        "top level is a list": lambda r: [r],
        "variant name missing": lambda r: _set_variant(r, "name", None, delete=True),
        "flips is a number": lambda r: _set_variant(r, "flips", 3),
        "quantization is a string": lambda r: {**r, "quantization": "x"},
        "confusion matrix ragged": lambda r: {**r, "confusion": {**r["confusion"], "matrix": [[1, 2], [3]]}},
    }
    for name, mutate in report_damage.items():
        add(Case("report.json", f"report (recorded in manifest): {name}", ["report", "{run}"],
                 setup=lambda env, m=mutate: _edit_json(env.run / "report.json", m)))
    add(Case("report.json", "report: hand-edited, not re-recorded", ["report", "{run}"],
             setup=lambda env: _edit_json(env.run / "report.json", lambda r: {**r, "model": "x"}, False)))
    add(Case("report.json", "report: bare NaN in the file", ["report", "{run}"],
             setup=lambda env: _rewrite(env.run / "report.json", lambda t: t.replace('"accuracy": ', '"accuracy": NaN, "a": ', 1))))
    add(Case("report.json", "report: not JSON", ["report", "{run}"],
             setup=lambda env: _rewrite(env.run / "report.json", lambda t: t[: len(t) // 2])))
    add(Case("report", "the report.json file itself", ["report", "{run}/report.json"], expect="ok"))
    add(Case("report", "a missing folder", ["report", "{ws}/nothing"]))
    add(Case("report", "an empty folder", ["report", "{ws}/empty"], setup=lambda env: (env.ws / "empty").mkdir()))
    add(Case("report", "a non-JSON file", ["report", "{ws}/x.txt"], setup=lambda env: _write(env.ws / "x.txt", "hi")))
    add(Case("report", "another JSON file", ["report", "{run}/data/summary.json"]))

    # --- `predict`
    images = {
        "missing file": None,
        "empty file": b"",
        "random bytes .png": os.urandom(300),
        "text as .png": b"hello, I am not an image\n",
        "truncated PNG": "truncated",
    }
    for name, content in images.items():
        def setup(env, content=content, name=name):
            p = env.ws / "img.png"
            if content == "truncated":
                _png(p, (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8))
                p.write_bytes(p.read_bytes()[:40])
            elif content is not None:
                p.write_bytes(content)
        add(Case("predict", name, ["predict", "{ws}/img.png", "--model", "{fp32}"], setup=setup))
    add(Case("predict", "a folder as image", ["predict", "{ws}", "--model", "{fp32}"]))
    for top in ("0", "-1"):
        add(Case("predict", f"--top {top}", ["predict", "{ws}/d.png", "--model", "{fp32}", "--top", top],
                 setup=lambda env: _png(env.ws / "d.png", _digit())))
    add(Case("predict", "--top 1000 (more than classes)", ["predict", "{ws}/d.png", "--model", "{fp32}", "--top",
                                                            "1000"], expect="ok",
             setup=lambda env: _png(env.ws / "d.png", _digit())))
    add(Case("predict", "a blank image", ["predict", "{ws}/d.png", "--model", "{fp32}"],
             setup=lambda env: _png(env.ws / "d.png", np.zeros((28, 28), np.uint8))))
    for name in ("[bold]x.png", "[/x].png", "a[red]b[/red].png", "[link=x]z.png"):
        # the table shows each image's file name; a "/" in the name makes a folder, so only the last part shows
        add(Case("markup in paths", f"predict {name}", ["predict", "{ws}/" + name, "--model", "{fp32}"], expect="ok",
                 shows=Path(name).name, setup=lambda env, n=name: _png(env.ws / n, _digit(40, 30))))
        add(Case("markup in paths", f"predict missing {name}", ["predict", "{ws}/missing" + name, "--model", "{fp32}"],
                 shows="missing" + name))

    # --- ONNX files that are not single-input float image classifiers: bench, predict, Classifier
    for kind in ("two_inputs", "int64_input", "uint8_input", "fixed_batch_1", "no_inputs", "rank2_input",
                 "string_input", "one_score"):
        setup = lambda env: odd_models(env.ws)  # noqa: E731
        add(Case("odd ONNX", f"predict 2 images with {kind}", ["predict", "{ws}/d.png", "{ws}/d.png", "--model",
                                                               f"{{ws}}/{kind}.onnx"],
                 setup=lambda env: (odd_models(env.ws), _png(env.ws / "d.png", _digit()))))
        # bench times any single-input model it can feed (float, uint8 or int8 pixels), classifier or not
        add(Case("odd ONNX", f"bench --batch 8 {kind}", ["bench", f"{{ws}}/{kind}.onnx", "--batch", "8",
                                                         "--duration", "0.05", "--warmup-seconds", "0",
                                                         "--shape", "1,28,28"], setup=setup,
                 expect="ok" if kind in ("one_score", "uint8_input") else "refuse"))
        add(Case("odd ONNX", f"Classifier({kind})", lambda env, k=kind: _classify(env.ws / f"{k}.onnx", 2),
                 setup=setup))
    for name, content in {"empty": b"", "random bytes": os.urandom(500), "text": b"not onnx"}.items():
        def setup(env, content=content):
            (env.ws / "m.onnx").write_bytes(content)
        add(Case("not ONNX", f"bench {name}", ["bench", "{ws}/m.onnx", "--batch", "1"], setup=setup))
        add(Case("not ONNX", f"predict --model {name}", ["predict", "{ws}/d.png", "--model", "{ws}/m.onnx"],
                 setup=lambda env, s=setup: (s(env), _png(env.ws / "d.png", _digit()))))
        add(Case("not ONNX", f"check-qdq {name}", ["check-qdq", "{ws}/m.onnx"], setup=setup))
        add(Case("not ONNX", f"Classifier({name})", lambda env: _classify(env.ws / "m.onnx", 1), setup=setup))
    add(Case("not ONNX", "bench a folder", ["bench", "{ws}", "--batch", "1"]))
    add(Case("not ONNX", "check-qdq a folder", ["check-qdq", "{ws}"]))
    add(Case("not ONNX", "check-qdq an FP32 file (no Q/DQ)", ["check-qdq", "{fp32}"]))

    # --- `bench`: absurd numbers and output paths
    fast = ["--duration", "0.05", "--warmup-seconds", "0", "--iterations", "3"]
    bench_bad = {
        "--warmup-seconds": ["inf", "nan", "-1", "1e300"],
        "--duration": ["0", "-1", "nan", "inf"],
        "--iterations": ["0", "-5"],
        "--warmup": ["-1"],
        "--threads": ["-1"],
        "--batch": ["0", "-1", "1,,x", "1000000000", str(2 ** 63)],
        "--shape": ["0,28,28", "1,x", "-1,28,28", "100000,100000,100000"],
        "--provider": ["tpu", "cuda"],
    }
    for opt, values in bench_bad.items():
        for v in values:
            args = ["bench", "{fp32}", "--batch", "1", *fast, opt, v]
            add(Case("bench", f"{opt} {v!r}", args))
    add(Case("bench", "--json to a folder", ["bench", "{fp32}", "--batch", "1", *fast, "--json", "{ws}"]))
    add(Case("bench", "--json under a file", ["bench", "{fp32}", "--batch", "1", *fast, "--json", "{ws}/f/x.json"],
             setup=lambda env: _write(env.ws / "f", "a file")))
    add(Case("bench", "--json to a file (works)", ["bench", "{fp32}", "--batch", "1", *fast, "--json",
                                                   "{ws}/[/x].json"], expect="ok", shows="[/x].json"))
    for name in ("[bold]m.onnx", "[/x].onnx"):
        add(Case("markup in paths", f"bench {name}", ["bench", "{ws}/" + name, "--batch", "1", *fast], expect="ok",
                 shows=name, setup=lambda env, n=name: _copy(env.fp32, env.ws / n)))
        add(Case("markup in paths", f"check-qdq {name}", ["check-qdq", "{ws}/" + name], shows=name,
                 setup=lambda env, n=name: _copy(env.fp32, env.ws / n)))
        add(Case("markup in paths", f"verify {name}", ["verify", "{ws}/" + name], shows=name))
        add(Case("markup in paths", f"report {name}", ["report", "{ws}/" + name], shows=name))
    add(Case("markup in paths", "run --artifacts under a file named [/x]",
             ["run", "all", "--quick", "--artifacts", "{ws}/[/x]/a", "--data-root", "{data}"], shows="[/x]",
             setup=lambda env: _write(env.ws / "[/x]", "a file")))

    # --- `verify`: archives are untrusted
    for kind in ("symlink_after_real_file", "symlink_new_name", "hardlink", "fifo", "char_device", "dotdot",
                 "absolute", "duplicate_regular", "second_top_folder", "backslash_name"):
        add(Case("archives", f"verify tar with {kind}", ["verify", f"{{ws}}/evil-{kind}.tar.gz"],
                 setup=lambda env, k=kind: _evil_tar(env, k)))
    add(Case("archives", "verify a genuine bundle tarball", ["verify", "{bundle}.tar.gz"], expect="ok"))
    add(Case("archives", "verify a genuine bundle folder", ["verify", "{bundle}"], expect="ok"))
    add(Case("archives", "verify a bundle folder holding a symlink", ["verify", "{bundle}"],
             setup=lambda env: os.symlink("/etc/passwd", env.bundle() / "models" / "evil.onnx")))
    add(Case("archives", "verify a bundle folder whose bench.py is a symlink", ["verify", "{bundle}"],
             setup=lambda env: _replace_with_link(env.bundle() / "bench.py")))
    add(Case("archives", "verify random bytes named .tar.gz", ["verify", "{ws}/x.tar.gz"],
             setup=lambda env: (env.ws / "x.tar.gz").write_bytes(os.urandom(1000))))
    add(Case("archives", "verify an empty .tar.gz", ["verify", "{ws}/x.tar.gz"],
             setup=lambda env: _tar_with(env.ws / "x.tar.gz", [])))
    add(Case("archives", "verify a bundle whose MANIFEST.json is a list", ["verify", "{bundle}"],
             setup=lambda env: _write(env.bundle() / "MANIFEST.json", [1, 2])))
    add(Case("archives", "verify a bundle whose MANIFEST files is a list", ["verify", "{bundle}"],
             setup=lambda env: _edit_json(env.bundle() / "MANIFEST.json", lambda m: {**m, "files": []}, False)))
    add(Case("archives", "verify a missing path", ["verify", "{ws}/nothing"]))

    # --- `bundle`: tampered inputs are never packed; a failed rebuild loses nothing
    b = ["bundle", "--target", "cpu", *common]
    add(Case("bundle", "hand-edited report.json", b,
             setup=lambda env: _edit_json(env.run / "report.json", lambda r: _set_variant(r, "accuracy", 1.0), False)))
    add(Case("bundle", "train/model.pt swapped from another run", b,
             setup=lambda env: _swap_checkpoint(env)))
    add(Case("bundle", "golden.npz altered", b, setup=lambda env: _flip_byte(env.run / "export" / "golden.npz")))
    add(Case("bundle", "model-int8-cpu.onnx altered", b,
             setup=lambda env: _flip_byte(env.run / "export" / "model-int8-cpu.onnx")))
    add(Case("bundle", "bad --data-root keeps the old bundle",
             ["bundle", "--target", "cpu", "--artifacts", "{art}", "--data-root", "{ws}/nodata"],
             setup=lambda env: (env.bundle(), _write(env.ws / "nodata", "a file"))))
    add(Case("bundle", "--target fpga", ["bundle", "--target", "fpga", *common]))
    add(Case("bundle", "--model that has no run", ["bundle", "--target", "cpu", "--model", "lenet5", *common]))
    add(Case("bundle", "--out under a file", [*b, "--out", "{ws}/f/out"], setup=lambda env: _write(env.ws / "f", "x")))

    # --- `demo` (only its refusals: a served page runs until Ctrl-C)
    add(Case("demo", "--port 70000", ["demo", "--port", "70000", *common]))
    add(Case("demo", "--port -1", ["demo", "--port", "-1", *common]))
    add(Case("demo", "--model that has no run", ["demo", "--port", "0", "--model", "lenet5", *common]))

    # --- predict and bench read a run's artifact only while it is what its stage wrote
    def alter_fp32(env):
        _flip_byte(env.fp32)
        _png(env.ws / "d.png", _digit())
    add(Case("tampered artifact", "predict with an altered model-fp32.onnx", ["predict", "{ws}/d.png", "--model",
                                                                               "{fp32}"], setup=alter_fp32))
    add(Case("tampered artifact", "bench an altered model-fp32.onnx", ["bench", "{fp32}", "--batch", "1", *fast],
             setup=alter_fp32))

    # --- the bundle's own bench.py compares as strictly as validate
    add(Case("silent wrong", "bundle bench.py with reference logits from another model", _bench_py,
             setup=_tamper_reference))

    # --- `models` takes nothing
    add(Case("models", "the zoo", ["models"], expect="ok", shows="lenet5"))
    add(Case("models", "an unexpected argument", ["models", "[/x]"]))

    # --- the Python API
    for name, images in _bad_arrays().items():
        add(Case("Classifier.predict", name, lambda env, x=images: _classify(env.fp32, x)))
    for name, kwargs in {"mean=nan": {"mean": float("nan")}, "std=0": {"std": 0}, "std=-1": {"std": -1},
                         "classes=[]": {"classes": []}, "classes=3 labels": {"classes": ["a", "b", "c"]},
                         "pixel_scale=0": {"pixel_scale": 0}, "pixel_scale=inf": {"pixel_scale": float("inf")},
                         "provider=tpu": {"provider": "tpu"}, "mean=[1,2,3]": {"mean": [1, 2, 3]},
                         "classes='0123456789'": {"classes": "0123456789"}}.items():
        add(Case("Classifier()", name, lambda env, kw=kwargs: _classify(env.fp32, 1, **kw)))
    for name, path in {"missing": "{ws}/none.onnx", "folder": "{ws}", "markup [/x]": "{ws}/[/x].onnx"}.items():
        add(Case("Classifier()", f"path {name}", lambda env, p=path: _classify(Path(env.fill(p)), 1)))
    out += __import__("tests.hostile_servers", fromlist=["cases"]).cases()  # issue 21's servers, paths, signals
    out += __import__("tests.hostile_trust", fromlist=["cases"]).cases()  # issue 21, sections 3, 4, 6 and 7
    return out


# ------------------------------------------------------------------------------------------ case helpers
def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def _rewrite(path: Path, edit, record: bool = True) -> None:
    path.write_text(edit(path.read_text()))
    if record:
        _rerecord(path)


def _set_output(record, stage, rel, value):
    record = json.loads(json.dumps(record))
    record[stage]["outputs"][rel] = value
    return record


def _set_variant(report, key, value, delete=False):
    report = json.loads(json.dumps(report))
    v = report["variants"][1]
    if delete:
        v.pop(key, None)
    else:
        v[key] = value
    return report


def _flip_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x01
    path.write_bytes(bytes(b))


def _replace_with_link(path: Path) -> None:
    path.unlink()
    os.symlink("/etc/passwd", path)


def _swap_checkpoint(env: Env) -> None:
    """Another run's checkpoint (same format, other weights) under this run's name."""
    import torch

    ckpt = torch.load(env.run / "train" / "model.pt", map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(123)
    ckpt["state_dict"] = {k: (v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, env.run / "train" / "model.pt")


def _bad_arrays() -> dict:
    z = np.zeros((28, 28), np.uint8)
    return {
        "NaN pixels": np.full((28, 28), np.nan, np.float32),
        "inf pixels": np.full((28, 28), np.inf, np.float64),
        "negative pixels": np.full((28, 28), -1.0, np.float32),
        "pixels over 255": np.full((28, 28), 300, np.int32),
        "bool array": np.zeros((28, 28), bool),
        "complex array": np.zeros((28, 28), np.complex64),
        "object array": np.array([[None] * 28] * 28, dtype=object),
        "string array": np.array([["a"] * 28] * 28),
        "empty batch": np.zeros((0, 28, 28), np.uint8),
        "empty list": [],
        "wrong size 27x27": np.zeros((27, 27), np.uint8),
        "channels last": np.zeros((2, 28, 28, 1), np.uint8),
        "RGB batch": np.zeros((2, 3, 28, 28), np.uint8),
        "5-D": np.zeros((1, 1, 1, 28, 28), np.uint8),
        "scalar": np.uint8(3),
        "ragged list": [z, np.zeros((27, 27), np.uint8)],
        "a file name": "digit.png",
        "bytes": b"\x89PNG",
        "None": None,
        "a dict": {"input": z},
    }


def _classify(model: Path, images, **kwargs) -> None:
    from runtime.classifier import Classifier

    if isinstance(images, int):
        images = np.zeros((images, 28, 28), np.uint8)
    with Classifier(model, **kwargs) as clf:
        clf.predict(images)


def _tamper_reference(env: Env) -> None:
    """Swap the bundle's PyTorch reference for logits that flip 227 predictions (as a forger would)."""
    bundle = env.bundle()
    ref_path = bundle / "data" / "reference.npz"
    logits = np.load(ref_path)["logits"].copy()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(logits), 227, replace=False)
    logits[rows] = np.roll(logits[rows], 1, axis=1)
    buf = io.BytesIO()
    np.savez_compressed(buf, logits=logits)
    ref_path.write_bytes(buf.getvalue())
    from pipeline.store.paths import sha256_file

    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    manifest["files"]["data/reference.npz"] = sha256_file(ref_path)  # so `verify` alone cannot catch it
    (bundle / "MANIFEST.json").write_text(json.dumps(manifest))


def _bench_py(env: Env) -> None:
    """The bundle's bench.py must not say "equals report: yes" (exit 0) for a tampered bundle."""
    import subprocess

    from pipeline.errors import PipelineError

    bundle = env.bundle()
    proc = subprocess.run([sys.executable, "-I", str(bundle / "bench.py"), "--seconds", "0.02", "--iterations", "3",
                           "--batches", "1"], capture_output=True, text=True, cwd=env.ws, timeout=300)
    if "Traceback" in proc.stderr:
        raise RuntimeError(proc.stderr[-1500:])
    if proc.returncode == 0:
        return  # a silent pass: the sweep counts it as a wrong result
    raise PipelineError(f"bench.py refused (exit {proc.returncode}): {proc.stdout[-300:]}")


# ------------------------------------------------------------------------------------------ running
def _alarm(signum, frame):
    raise Hang()


def run_case(case: Case, env: Env) -> Outcome:
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.errors import PipelineError
    from runtime.errors import RuntimeInputError

    if case.setup:
        try:
            case.setup(env)
        except Exception as e:  # a broken case is the sweep's bug: report it, don't stop the sweep
            return Outcome(case, None, 0.0, "", [f"setup failed: {type(e).__name__}: {e}"])
    protected = [env.art, env.ws]
    before = snapshot(*protected)
    data_before = {p.name: p.stat().st_mtime_ns for p in (env.data / "MNIST" / "raw").iterdir()}
    problems, code, output = [], None, ""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    t0 = time.perf_counter()
    try:
        if callable(case.action):
            try:
                case.action(env)
                code = 0
            except (RuntimeInputError, PipelineError) as e:
                code, output = 2, f"error: {e}"
            except Hang:
                raise
            except BaseException as e:  # noqa: BLE001 - anything else escaping the API is what we count
                import traceback

                code, output = 1, "Traceback (API): " + "".join(traceback.format_exception(e))[-1500:]
        else:
            args = [env.fill(a) for a in case.action]
            result = CliRunner().invoke(app, args)
            code, output = result.exit_code, result.output
            if isinstance(result.exception, Hang):
                raise Hang()
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                import traceback

                output += "\nTraceback (CLI): " + "".join(traceback.format_exception(result.exception))[-1500:]
    except Hang:
        problems.append("hang")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    if "Traceback" in output:
        problems.append("traceback")
    if "hang" not in problems:
        if case.expect == "refuse" and code == 0:
            problems.append("silent wrong result")
        elif case.expect == "ok" and code != 0:
            problems.append("refused a legitimate input")
        if case.expect == "refuse" and code not in (0, None) and "traceback" not in problems:
            if not any(w in output for w in ("error:", "verify failed", "violat", "Usage:", "Error")):
                problems.append("no error message")
        if case.shows and case.shows not in output.replace("\n", ""):
            problems.append(f"output lacks the literal {case.shows!r}")
    after = snapshot(*protected)
    # a refused input may leave new files of stages that finished before the refusal (a new model's data
    # stage, say), but never a changed or lost file, nor a temp file or folder of an unfinished write
    changed = sorted(k for k in before if after.get(k) != before[k])
    leftovers = sorted(k for k in set(after) - set(before) if Path(k).name.endswith(".tmp") or ".tmp/" in k)
    if case.expect == "refuse" and (changed or leftovers):
        problems.append("changed: " + ", ".join(Path(c).name for c in (changed + leftovers)[:5]))
    if {p.name: p.stat().st_mtime_ns for p in (env.data / "MNIST" / "raw").iterdir()} != data_before:
        problems.append("changed: the MNIST data root")
    return Outcome(case, code, seconds, output, problems)


def sweep(quick_artifacts: Path, data_root: Path, work: Path, only: str | None = None, log=print) -> list[Outcome]:
    """Run every case, each in a fresh workspace holding a copy of ``quick_artifacts``."""
    from pipeline.bundle.build import make_bundle
    from pipeline.store.paths import RunDir

    bundles = work / "bundle-src"
    bundle_src, _ = make_bundle(RunDir.for_model(quick_artifacts, "edgenet"), "cpu", bundles, data_root)
    outcomes = []
    for i, case in enumerate(cases()):
        if only and only not in f"{case.group}: {case.name}":
            continue
        ws = Path(tempfile.mkdtemp(prefix=f"case{i:03d}-", dir=work))
        art = ws / "art"
        shutil.copytree(quick_artifacts, art, ignore=shutil.ignore_patterns("bundles", ".lock"))
        env = Env(ws=ws / "w", art=art, data=data_root, bundle_src=bundle_src)
        env.ws.mkdir()
        cwd = os.getcwd()
        os.chdir(env.ws)  # anything written relative to the working directory lands in the workspace
        try:
            outcome = run_case(case, env)
        finally:
            os.chdir(cwd)
        outcomes.append(outcome)
        flag = "ok " if not outcome.problems else "BAD"
        log(f"{flag} [{case.group}] {case.name}: exit {outcome.exit_code}, {outcome.seconds:.1f} s"
            + (f"  <-- {'; '.join(outcome.problems)}" if outcome.problems else ""))
        shutil.rmtree(ws, ignore_errors=True)
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    count = lambda word: sum(any(p.startswith(word) for p in o.problems) for o in outcomes)  # noqa: E731
    return {"inputs": len(outcomes), "tracebacks": count("traceback"), "hangs": count("hang"),
            "changed": count("changed"), "silent_wrong_results": count("silent wrong"),
            "other_problems": sum(bool(o.problems) for o in outcomes) - sum(
                any(p.split(":")[0] in ("traceback", "hang", "changed", "silent wrong result") for p in o.problems)
                for o in outcomes),
            "groups": sorted({o.case.group for o in outcomes}),
            "seconds": round(sum(o.seconds for o in outcomes), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, help="an existing `pipeline run all --quick` artifacts folder")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--only", help="run the cases whose 'group: name' contains this text")
    ap.add_argument("--json", type=Path, help="write the outcomes here")
    args = ap.parse_args(argv)
    from pipeline.config import default_data_root
    from pipeline.dataset import ensure_raw

    data_root = args.data_root or default_data_root()
    ensure_raw(data_root)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        artifacts = args.artifacts
        if artifacts is None:
            from typer.testing import CliRunner

            from pipeline.cli import app

            artifacts = work / "quick"
            r = CliRunner().invoke(app, ["run", "all", "--quick", "--artifacts", str(artifacts), "--data-root",
                                         str(data_root)])
            if r.exit_code != 0:
                print(r.output)
                return 2
        outcomes = sweep(artifacts, data_root, work, args.only)
    s = summary(outcomes)
    print(json.dumps(s, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": s, "cases": [
            {"group": o.case.group, "name": o.case.name, "exit": o.exit_code, "seconds": round(o.seconds, 2),
             "problems": o.problems} for o in outcomes]}, indent=2))
    return 0 if not any(o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
