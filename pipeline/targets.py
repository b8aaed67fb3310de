"""The one table of targets: what ``pipeline bundle --target`` builds, and where the report recommends a file for.

Two kinds of rows, one table each, and every other module reads them from here:

- :data:`BUNDLES`, one row per ``pipeline bundle --target`` value: the language its runner is written in
  (``python``: bench.py on numpy plus onnxruntime or TensorRT; ``js``: onnxruntime-node or onnxruntime-web), whether
  it builds TensorRT engines on the device (from the files whose variant row says ``tensorrt``), whether it is a
  static web page (what ``pipeline demo`` serves), and the lines its device README adds. Which files a bundle
  ships is the ``bundle`` column of :mod:`pipeline.variants`, which names these rows.
- :data:`DEPLOY`, one row per key of report.json's ``recommended``: its title, which report rows are measurements on
  it (as data: the row fields that must match, and those that rule a row out), the bundle that carries its file, the
  variant to build from when nothing measured here qualifies, the command that measures it on the device, and a
  note. :mod:`pipeline.report.recommend` applies the rule.

Adding a target is one row here (and, for a bundle target, its name in the variant rows it ships). The table
imports nothing, so the variant table can name these rows.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class BundleTarget:
    name: str  # the `pipeline bundle --target` value (and the bundle folder's <model>-<name>-bundle)
    # python (bench.py, numpy + onnxruntime or TensorRT) | openvino (bench.py, numpy + openvino) | mobile (.pte and
    # .tflite for an app, checked by check.py with each runtime's Python API) | js (onnxruntime-node or -web)
    runner: str
    says: str  # what runs it, for --target's help
    engines: bool = False  # builds TensorRT engines on the device, from the files whose row says tensorrt
    site: bool = False  # a static page with classifier.js on onnxruntime-web's wasm build: what `pipeline demo` serves
    readme: tuple[str, ...] = ()  # lines its device README adds at the end of the steps
    deploy: str | None = None  # the DEPLOY row (report.json's "recommended" key) a device running it measures


BUNDLES: tuple[BundleTarget, ...] = (
    BundleTarget("jetson", "python", "Python, bench.py", engines=True, deploy="tensorrt", readme=(
        "On a Jetson, set and record the power mode first (`sudo nvpmodel -m 0`, `sudo jetson_clocks`);",
        "bench.py --json records `nvpmodel -q` and `jetson_clocks --show` with the results.",
        "`python3 build_engines.py --dla-core 0` builds the fp16 and int8 engines for a DLA core (static",
        "profile: batch = --max-batch; GPU fallback on); the layers that run on the GPU, read from the",
        "built engine, are printed and stored in the sidecar.")),
    BundleTarget("gpu", "python", "Python, bench.py", engines=True, deploy="tensorrt"),
    BundleTarget("cpu", "python", "Python, bench.py", deploy="cpu"),
    BundleTarget("openvino", "openvino", "Python, bench.py on OpenVINO", deploy="intel"),
    BundleTarget("android", "mobile", "the .pte and .tflite files, app snippets, check.py", deploy="mobile"),
    BundleTarget("node", "js", "onnxruntime-node, classify.mjs"),
    BundleTarget("web", "js", "static page, classifier.js, onnxruntime-web wasm", site=True, deploy="browser"),
)
#: every ``pipeline bundle --target`` value, in table order
TARGETS = tuple(t.name for t in BUNDLES)
#: the bundle of the OpenVINO IR files (bench.py on openvino and numpy alone)
OPENVINO = next(t.name for t in BUNDLES if t.runner == "openvino")
#: the bundle of the phone formats (ExecuTorch .pte, LiteRT .tflite): files, contract, golden vectors, app snippets
MOBILE = next(t.name for t in BUNDLES if t.runner == "mobile")
#: the targets run by Python (bench.py; the engine targets also build TensorRT engines on the device)
PYTHON_TARGETS = tuple(t.name for t in BUNDLES if t.runner == "python")
#: the targets run by JavaScript (onnxruntime-node's classify.mjs, the web page's classifier.js), both with the JS
#: preprocessing module
JS_TARGETS = tuple(t.name for t in BUNDLES if t.runner == "js")
#: the targets whose runner runs ONNX files (bench.py on onnxruntime, onnxruntime-node, onnxruntime-web); the openvino
#: and android bundles hold their runtimes' own formats
ONNX_TARGETS = PYTHON_TARGETS + JS_TARGETS
#: the targets whose bundle builds TensorRT engines on the device (from the files whose row says ``tensorrt``)
ENGINE_TARGETS = tuple(t.name for t in BUNDLES if t.engines)
#: the bundle that is a web site (``pipeline demo`` builds and serves it)
SITE = next(t.name for t in BUNDLES if t.site)
#: what a device measurement's ``target`` may be -> the DEPLOY row it measures: the Python bundles (measured by
#: ``pipeline device run``/``add``) and ``browser``, a phone's browser measuring the web site (``pipeline demo --lan``)
DEVICE = {**{t.name: t.deploy for t in BUNDLES if t.runner == "python"}, "browser": next(t.deploy for t in BUNDLES if t.site)}


class _ByName(Mapping):
    """``--target`` value -> :class:`BundleTarget`."""

    def __getitem__(self, name: str) -> BundleTarget:
        for t in BUNDLES:
            if t.name == name:
                return t
        raise KeyError(name)

    def __iter__(self):
        return iter(TARGETS)

    def __len__(self) -> int:
        return len(BUNDLES)


BUNDLE: Mapping[str, BundleTarget] = _ByName()


def help_text() -> str:
    """``--target``'s help: the names, each run of names sharing a runner followed by what runs them."""
    parts, names = [], []
    for i, t in enumerate(BUNDLES):
        names.append(t.name)
        if i + 1 == len(BUNDLES) or BUNDLES[i + 1].says != t.says:
            parts.append(f"{' | '.join(names)} ({t.says})")
            names = []
    return " | ".join(parts)


@dataclass(frozen=True)
class DeployTarget:
    key: str  # its key in report.json's "recommended"
    title: str
    # which report rows are measurements on this target: every (field, value) of ``where`` matches the row's, and
    # none of ``unless`` does
    # (a tuple of values: any of them)
    where: tuple[tuple[str, str | tuple[str, ...]], ...]
    bundle: str  # the BUNDLES name whose bundle carries build_from's file
    build_from: str  # the variant whose file to start from when nothing measured here qualifies
    command: str  # what measures it on the device; {model} is the --model value, {folder} the bundle folder
    note: str = ""  # added to the reason when the target is not measured here
    proxy: str = ""  # added to the reason when it is: how this host's measurement stands in for the device's
    unless: tuple[tuple[str, str], ...] = ()

    def measures(self, row: dict) -> bool:
        """Whether a report row (a dict of report.json's ``variants``) is a measurement on this target."""
        return (all(row.get(k) in (want if isinstance(want, tuple) else (want,)) for k, want in self.where)
                and not any(row.get(k) == no for k, no in self.unless))


DEPLOY: tuple[DeployTarget, ...] = (
    # Any x86/ARM CPU: the fastest verified file of every runtime measured on this CPU (onnxruntime, OpenVINO, ExecuTorch,
    # LiteRT), with the bundle that carries it. Q/DQ-as-written rows (ort_optimization "basic") are TensorRT files timed
    # the way TensorRT computes: neither their CPU latency nor, on CPUs without VNNI, onnxruntime's default (fused)
    # accuracy is what a CPU app gets. The torch row is the reference, not a deployable file.
    DeployTarget("cpu", "x86/ARM CPU, any runtime", (("provider", "cpu"),), "cpu",
                 "onnx-fp32", "pipeline bundle --target cpu --model {model}; then, on the device, in the unpacked "
                 "{folder}/: python3 bench.py", unless=(("ort_optimization", "basic"), ("backend", "torch"))),
    DeployTarget("browser", "Browser, onnxruntime-web (wasm)", (("provider", "wasm"),), "web", "onnx-fp32",
                 "pipeline bundle --target web --model {model}; then serve {folder}/ (pipeline demo --model {model}) "
                 "and open the page in the target browser: it shows p50/p99 batch-1 latency in wasm",
                 note="the web-wasm rows are measured in headless Chromium when it is installed (and not "
                      "--no-browser); the web bundle ships this file, and the Node bundle too (node classify.mjs "
                      "--test-set measures its accuracy in Node)"),
    DeployTarget("tensorrt", "NVIDIA GPU or Jetson, TensorRT", (("provider", "cuda"),), "jetson", "onnx-fp32",
                 "pipeline bundle --target jetson --model {model}; then, on the device, in the unpacked {folder}/: "
                 "python3 build_engines.py && python3 bench.py --engines",
                 note="no NVIDIA GPU with TensorRT here; the bundle also carries the FP16 and INT8 files, "
                      "build_engines.py builds an engine from each, and bench.py --engines checks and times them all: "
                      "ship the fastest that passes. FP32 is the file held to exact parity here"),
    DeployTarget("intel", "Intel CPU, iGPU or NPU, OpenVINO", (("backend", "openvino"),), OPENVINO, "openvino-fp32",
                 "pipeline bundle --target openvino --model {model}; then, on the device, in the unpacked {folder}/: "
                 "python3 bench.py (--device GPU or NPU for the iGPU or NPU)",
                 note="OpenVINO is not installed here (pip install -e .[openvino])",
                 proxy="timed with OpenVINO's CPU plugin on this host's CPU; an iGPU or NPU is not here"),
    DeployTarget("mobile", "Android or iOS, ExecuTorch (XNNPACK) or LiteRT", (("backend", ("executorch", "litert")),),
                 MOBILE, "executorch-fp32",
                 "pipeline bundle --target android --model {model}; then python3 check.py in the unpacked {folder}/, "
                 "and load the file in the app as its README shows",
                 note="neither ExecuTorch nor LiteRT is installed here (pip install -e .[executorch,litert])",
                 proxy="timed on this host's CPU with the same runtimes (ExecuTorch's XNNPACK, LiteRT's CPU kernels), "
                       "not on a phone: the ranking on a phone's ARM cores can differ, so time it there"),
)
