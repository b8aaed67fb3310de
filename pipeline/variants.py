"""The one table of deployable variants: what each is, where its file lives, how it is run and judged.

Every fact about a variant is a column here and is read from here: the validate stage (which variants
run, how each runner is built, which tolerance or budget applies), the report, the engines stage (which
engines, from which ONNX file), the export and quantize stages (file names) and ``pipeline bundle`` (which
files a target ships, which get a TensorRT engine on the device). Adding a variant whose file some stage
already writes is one row (Ultralytics' ``export_formats()`` habit); ``tests/pipeline/test_variants.py`` proves it.

The code that chooses variants (the validate and engines stages, the report, the bundle) reads the table
through this module at call time (``variants.VARIANTS``, or :data:`BY_NAME`, a live view of it), never a
copy taken at import, so a row added at run time is seen everywhere. The table imports only the targets table
(:mod:`pipeline.targets`, whose names the ``bundle`` column uses): how a backend's runner is built, and whether
this machine can run a row, is :mod:`pipeline.measure.runners`'s business; how a row's file is made is its
``recipe``'s handler (:mod:`pipeline.stages.recipes`).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pipeline.targets import MOBILE, ONNX_TARGETS, OPENVINO, PYTHON_TARGETS, SITE

#: the variant every other one is compared with (agreement, max |logit diff|, accuracy delta); the first row
REFERENCE = "torch-fp32"
#: the row every other runtime's speed is stated against (report.json's ``speedup_vs_onnx_fp32``): onnxruntime FP32 on the
#: CPU, what an app gets with the most common runtime and no conversion; timed in the same interleaved rounds as they are
BASELINE = "onnx-fp32"
#: the backend measured in a web browser rather than by a Python runner: every row with it is run in one headless
#: Chromium session (:mod:`pipeline.measure.browser`) by the validate stage, through the web bundle's own classifier.js
BROWSER = "onnxruntime-web"


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # torch | onnxruntime | tensorrt | openvino | executorch | litert (measure.runners.RUNNERS) | BROWSER
    provider: str  # cpu | cuda | wasm (onnxruntime-web's WebAssembly build, single-threaded as classifier.js runs it)
    precision: str  # fp32 | fp16 | bf16 | int8
    file: str | None  # file name under <run>/export/ (None for the torch reference: it runs the checkpoint)
    atol: float | None = None  # enforced parity: max |logit diff| vs REFERENCE (and agreement 1.0)
    budget_pp: float | None = None  # accuracy drop vs REFERENCE we aim to stay within (percentage points)
    quant: str | None = None  # which QuantConfig switch builds it: ptq | qat | cpu (None: always built)
    # how its file is made: a key of pipeline.stages.recipes.RECIPES (fp32, fp16: the export stage; ptq, qat, ptq-cpu,
    # qat-cpu: the quantize stage). None: the row makes no file (the torch reference; rows that run another row's
    # file elsewhere; TensorRT engines, which the engines stage builds from ``source``)
    recipe: str | None = None
    # hardware/backend it needs: cuda (onnxruntime-gpu) | tensorrt | browser (Chromium) | openvino | openvino-bf16 (and
    # a CPU with BF16) | executorch | litert: the keys of measure.runners.REQUIRES, which says how each is checked
    requires: str | None = None
    source: str | None = None  # for engines: the ONNX file (another row's file) they are built from
    # onnxruntime graph optimizations: "all" (what an app gets by default) or "basic", which runs Q/DQ exactly as
    # written (dequantize -> float op -> quantize), i.e. what TensorRT computes. The TensorRT-targeted INT8 files
    # use "basic": onnxruntime's fused x86 int8 kernels saturate 16-bit intermediates on CPUs without VNNI (such
    # as the AVX2 machine this was built on), which would misreport those files' accuracy by several points.
    ort_optimization: str = "all"
    # the ONNX file is made for TensorRT: jetson/gpu bundles build an engine from it on the device, and an INT8
    # one keeps TensorRT's Q/DQ placement (exporters.qdq.check_qdq, which the quantizer enforces before writing)
    tensorrt: bool = False
    bundle: tuple[str, ...] = ()  # the bundle targets (pipeline.targets.BUNDLES) that ship this file (and its figures)
    # the files that belong to ``file`` and travel with it (size, manifest, bundles): an OpenVINO IR's weights (.bin),
    # and the sidecar holding the preprocessing contract of a format without free-form metadata (.pte, .tflite)
    extra: tuple[str, ...] = ()


#: node ships onnx-fp32 only: it is the file whose accuracy the Node bundle proves (its golden set and the 10,000 test
#: images); onnxruntime-node is another onnxruntime release than Python's, so other files would need proving there too.
#: web ships onnx-fp32 and the CPU INT8 file, the two files the web-wasm-* rows measure in the browser (on all 10,000
#: test images, through classifier.js), so the browser recommendation is always a file the web bundle carries.
#: onnxruntime-web's wasm build runs fp16 without fp16 kernels, and the TensorRT INT8 files are for TensorRT.
VARIANTS: tuple[Variant, ...] = (
    Variant("torch-fp32", "torch", "cpu", "fp32", None),
    Variant("onnx-fp32", "onnxruntime", "cpu", "fp32", "model-fp32.onnx", atol=1e-4, recipe="fp32", tensorrt=True,
            bundle=ONNX_TARGETS),
    Variant("onnx-fp16", "onnxruntime", "cpu", "fp16", "model-fp16.onnx", budget_pp=0.02, recipe="fp16", tensorrt=True,
            bundle=PYTHON_TARGETS),
    Variant("onnx-int8-ptq", "onnxruntime", "cpu", "int8", "model-int8-ptq.onnx", budget_pp=0.15, quant="ptq", recipe="ptq",
            ort_optimization="basic", tensorrt=True, bundle=PYTHON_TARGETS),
    Variant("onnx-int8-qat", "onnxruntime", "cpu", "int8", "model-int8-qat.onnx", budget_pp=0.05, quant="qat", recipe="qat",
            ort_optimization="basic", tensorrt=True, bundle=PYTHON_TARGETS),
    Variant("onnx-int8-cpu", "onnxruntime", "cpu", "int8", "model-int8-cpu.onnx", budget_pp=0.15, quant="cpu",
            recipe="ptq-cpu", bundle=PYTHON_TARGETS + (SITE,)),  # the PTQ budget: the same calibration, another operator placement
    # the QAT weights and learned scales in onnx-int8-cpu's fused placement (exporters.cpu_placement); QAT's budget
    Variant("onnx-int8-qat-cpu", "onnxruntime", "cpu", "int8", "model-int8-qat-cpu.onnx", budget_pp=0.05, quant="qat",
            recipe="qat-cpu", bundle=PYTHON_TARGETS),
    # The edge runtimes (issue 24): each built by its own converter from the checkpoint (OpenVINO from the FP32 ONNX
    # file), run by its own runner, judged like the ONNX rows. FP32 is held to the same parity tolerance; INT8 to the
    # PTQ budget (each is that runtime's own post-training quantization of the same calibration images). openvino-bf16
    # runs the FP32 IR with OpenVINO's bfloat16 inference hint, only on CPUs that offer BF16 (else skipped, saying so).
    # A missing runtime or a converter that cannot lower the model skips its rows, with the reason, and the run goes on.
    Variant("openvino-fp32", "openvino", "cpu", "fp32", "model-fp32.xml", atol=1e-4, recipe="openvino-fp32",
            requires="openvino", extra=("model-fp32.bin",), bundle=(OPENVINO,)),
    Variant("openvino-bf16", "openvino", "cpu", "bf16", "model-fp32.xml", budget_pp=0.02, requires="openvino-bf16",
            extra=("model-fp32.bin",)),
    Variant("openvino-int8", "openvino", "cpu", "int8", "model-int8.xml", budget_pp=0.15, quant="ptq",
            recipe="openvino-int8", requires="openvino", extra=("model-int8.bin",), bundle=(OPENVINO,)),
    Variant("executorch-fp32", "executorch", "cpu", "fp32", "model-fp32.pte", atol=1e-4, recipe="executorch-fp32",
            requires="executorch", extra=("model-fp32.pte.json",), bundle=(MOBILE,)),
    Variant("executorch-int8", "executorch", "cpu", "int8", "model-int8.pte", budget_pp=0.15, quant="ptq",
            recipe="executorch-int8", requires="executorch", extra=("model-int8.pte.json",), bundle=(MOBILE,)),
    Variant("litert-fp32", "litert", "cpu", "fp32", "model-fp32.tflite", atol=1e-4, recipe="litert-fp32",
            requires="litert", extra=("model-fp32.tflite.json",), bundle=(MOBILE,)),
    Variant("litert-int8", "litert", "cpu", "int8", "model-int8.tflite", budget_pp=0.15, quant="ptq",
            recipe="litert-int8", requires="litert", extra=("model-int8.tflite.json",), bundle=(MOBILE,)),
    Variant("web-wasm-fp32", BROWSER, "wasm", "fp32", "model-fp32.onnx", atol=1e-4, requires="browser"),
    Variant("web-wasm-int8", BROWSER, "wasm", "int8", "model-int8-cpu.onnx", budget_pp=0.15, quant="cpu",
            requires="browser"),
    Variant("onnx-fp32-cuda", "onnxruntime", "cuda", "fp32", "model-fp32.onnx", requires="cuda"),
    Variant("trt-fp32", "tensorrt", "cuda", "fp32", "model-fp32.engine", requires="tensorrt",
            source="model-fp32.onnx"),
    Variant("trt-fp16", "tensorrt", "cuda", "fp16", "model-fp16.engine", budget_pp=0.05, requires="tensorrt",
            source="model-fp16.onnx"),
    Variant("trt-int8", "tensorrt", "cuda", "int8", "model-int8-ptq.engine", budget_pp=0.15, requires="tensorrt",
            quant="ptq", source="model-int8-ptq.onnx"),
)


def files_of(v: Variant) -> tuple[str, ...]:
    """The file names of ``v`` under ``<run>/export/``: its file, then what travels with it (:attr:`Variant.extra`)."""
    return ((v.file,) if v.file else ()) + v.extra


class _ByName(Mapping):
    """Name -> row, looked up in :data:`VARIANTS` at each access (never a copy), so it always agrees with it."""

    def __getitem__(self, name: str) -> Variant:
        for v in VARIANTS:
            if v.name == name:
                return v
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (v.name for v in VARIANTS)

    def __len__(self) -> int:
        return len(VARIANTS)


BY_NAME: Mapping[str, Variant] = _ByName()
