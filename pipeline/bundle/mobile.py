"""The edge-runtime bundles' own parts: ``pipeline bundle --target android`` (ExecuTorch ``.pte`` and LiteRT ``.tflite``
for an app) and what the OpenVINO bundle adds to the Python bundle.

The android bundle holds the phone files with their sidecars (the preprocessing contract: neither format has free-form
metadata), golden vectors (the run's ``golden.npz``: the first test images as the pipeline fed them, normalized, with
PyTorch's logits; and ``golden-images.npz``, the same images as raw bytes, so the contract is checked too), the report,
a README with the app snippets (:data:`FILES`/README.md) and ``check.py``, which reruns the golden vectors with each
runtime's Python API and holds every file to what the report says of it. No phone was here: check.py runs on the build
host (x86); the Kotlin, Java and C++ snippets were written from the runtimes' documentation and never compiled here.

The OpenVINO bundle is a Python bundle (bench.py picks OpenVINO for an ``.xml``): this module gives its README step,
its model list, and ``also_runs``: the report's openvino-bf16 row, which runs the FP32 IR with a bf16 hint and so
ships no file of its own, rides on that file's MANIFEST entry.

:func:`read_contract` reads the preprocessing contract of any file a bundle ships, by its suffix, and
:func:`skipped_rows` says which of a target's rows the run could not make (their runtime was missing, or their
converter refused the model), so a bundle ships what exists and says what is not there.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from . import layout
from pipeline import targets, variants
from pipeline.errors import PipelineError
from pipeline.store.paths import RunDir, atomic_write

FILES = Path(__file__).parent / "files" / "android"
#: the raw (uint8) golden images beside the run's golden.npz, so check.py checks the preprocessing contract too
GOLDEN_IMAGES = f"{layout.DATA}/golden-images.npz"

OPENVINO_STEP = (
    "2. Parity and latency on OpenVINO: `python3 bench.py` (CPU; `--device GPU` or `--device NPU` for an Intel iGPU",
    "   or NPU). It runs every IR with INFERENCE_PRECISION_HINT f32 (OpenVINO's CPU plugin would otherwise run an FP32",
    "   model in bfloat16 on CPUs with BF16), and the FP32 IR once more with the bf16 hint where the CPU has BF16 (the",
    "   report's openvino-bf16 row). It checks each model as strictly as the pipeline's validate stage (finite logits,",
    "   same accuracy, the same flipped test images, and agreement 1.0 within atol for FP32) and exits 1 if a CPU check",
    "   with the f32 hint fails. The bf16 row and the GPU and NPU runs are shown, not counted (their arithmetic differs",
    "   between chips). Only the CPU plugin was run where this bundle was made; no Intel iGPU or NPU was there.",
    "   The preprocessing contract is in each IR's rt_info (section `edge_export_pipeline`) and in MANIFEST.json.",
)


def read_contract(path: Path) -> dict[str, str]:
    """The preprocessing contract of a file a bundle ships: ONNX metadata, an IR's rt_info, else its JSON sidecar."""
    path = Path(path)
    if path.suffix == ".onnx":
        from exporters.onnx import read_metadata

        return read_metadata(path)
    if path.suffix == ".xml":
        from runtime.errors import BackendUnavailable, RuntimeInputError
        from runtime.openvino import read_metadata as read_ir

        try:
            meta = read_ir(path)
        except (BackendUnavailable, RuntimeInputError) as e:
            raise PipelineError(f"Cannot read the preprocessing contract of {path}: {e}") from None
        if not meta:
            raise PipelineError(f"{path} carries no preprocessing contract in its rt_info; rerun `pipeline run all "
                                "--force`.")
        return meta
    from runtime import sidecar

    side = sidecar.path(path)  # .pte and .tflite: the sidecar the exporter wrote, verified by the run's manifest
    try:
        data = sidecar.read(path, "The")
    except ValueError as e:
        raise PipelineError(f"{e} Rerun `pipeline run all --force`.") from None
    if not all(k in data for k in ("normalization_mean", "normalization_std")):
        raise PipelineError(f"The sidecar {side} holds no preprocessing contract; rerun `pipeline run all --force`.")
    return {str(k): v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for k, v in data.items()}


def also_runs(v: variants.Variant, rows: dict, target: str) -> dict:
    """For the OpenVINO bundle: the report rows that run ``v``'s file with another precision hint and ship no file of
    their own (openvino-bf16 on the FP32 IR), as ``{"also": [...]}`` for its MANIFEST entry; ``{}`` otherwise."""
    if targets.BUNDLE[target].runner != "openvino":
        return {}
    also = []
    for o in variants.VARIANTS:
        if o.file == v.file and o.backend == v.backend and o is not v and not o.bundle and o.name in rows:
            row = rows[o.name]
            also.append({"variant": o.name, "precision": o.precision, "accuracy": row["accuracy"],
                         "agreement": row["agreement"], "max_abs_diff": row["max_abs_diff"],
                         "flips": row.get("flips"), "atol": o.atol, "budget_pp": o.budget_pp})
    return {"also": also} if also else {}


def skipped_rows(target: str, report: dict) -> dict[str, str]:
    """The rows ``target`` would ship that this run has no file for: name -> why (the report's reason, when it has one)."""
    done = {v["name"] for v in report.get("variants", [])}
    reasons = {s.get("name"): s.get("reason") for s in report.get("skipped", []) if isinstance(s, dict)}
    return {v.name: str(reasons.get(v.name) or "not in this run's report (made before the row existed?)")
            for v in variants.VARIANTS if target in v.bundle and v.name not in done}


def nothing_to_ship(target: str, report: dict) -> str:
    """The one paragraph when none of ``target``'s rows was made by this run."""
    why = "; ".join(f"{name}: {reason}" for name, reason in skipped_rows(target, report).items())
    extra = {"mobile": "executorch,litert", "openvino": "openvino"}.get(targets.BUNDLE[target].runner)
    return (f"This run has none of the files the {target} bundle ships ({why or 'no row of the table ships to it'}), so "
            "no bundle was written." + (f" Install the runtimes (`pip install -e .[{extra}]`) and rerun "
                                        "`pipeline run all --force`." if extra else ""))


def model_lines(models: dict) -> list[str]:
    """The "Models:" list of a README whose MANIFEST keys are stems of IR files (the OpenVINO bundle)."""
    lines = ["Models:", ""]
    for stem, m in models.items():
        lines.append(f"- `models/{stem}.xml` + `.bin`: {m['variant']}, {m['precision']}, reported accuracy "
                     f"{100 * m['accuracy']:.2f} % on the 10,000 MNIST test images")
        lines += [f"  - the same file with the {a['precision']} hint: {a['variant']}, reported accuracy "
                  f"{100 * a['accuracy']:.2f} %" for a in m.get("also", [])]
    return lines


def fill_mobile(folder: Path, run: RunDir, report: dict, models: dict, raw: Path, reference: dict) -> None:
    """The android bundle's own files: golden vectors (the run's golden.npz, and its images as raw bytes read from the
    test set), check.py and the README. The golden inputs must be what the contract makes of those bytes, or the
    bundle would teach an app a preprocessing the models were not checked with: refused then."""
    from pipeline.dataset import read_test_set

    images, labels = read_test_set(raw)
    golden = np.load(run.golden)
    n = len(golden["labels"])
    if not np.array_equal(golden["labels"], labels[:n]):
        raise PipelineError(f"{run.golden} does not hold the first {n} test images of {raw}; rerun `pipeline run all "
                            "--force` with this --data-root.")
    for name, m in models.items():
        try:
            x = normalize(images[:n], m["metadata"])
        except (ValueError, TypeError) as e:  # a contract with no finite mean/std or pixel scale
            raise PipelineError(f"The preprocessing contract of {name} is not usable ({e}); rerun `pipeline run all "
                                "--force`.") from None
        diff = float(np.abs(x - golden["input"]).max())
        if not diff <= 1e-5:
            raise PipelineError(f"The preprocessing contract of {name} does not reproduce the golden inputs of "
                                f"{run.golden} (max diff {diff:.2e}); rerun `pipeline run all --force`.")
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images[:n], labels=labels[:n])
    atomic_write(folder / GOLDEN_IMAGES, buf.getvalue())
    shutil.copy2(run.golden, folder / layout.GOLDEN)
    shutil.copy2(FILES / "check.py", folder / "check.py")
    atomic_write(folder / "README.md", readme(report["model"], models, skipped_rows(targets.MOBILE, report), n))


def normalize(images_u8: np.ndarray, meta: dict) -> np.ndarray:
    """What an app computes from raw bytes with the contract (check.py's own copy is the one shipped); the contract is
    parsed by :class:`runtime.metadata.ModelMetadata`, the runtime's own reader (finite numbers only)."""
    from runtime.metadata import ModelMetadata

    contract = ModelMetadata.from_props({k: str(v) for k, v in meta.items()})
    mean = np.asarray(contract.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(contract.std, np.float32).reshape(1, -1, 1, 1)
    return ((images_u8[:, None].astype(np.float32) * np.float32(contract.pixel_scale) - mean) / std).astype(np.float32)


def readme(model: str, models: dict, skipped: dict, n: int) -> str:
    """README.md: the template in files/android with the model list, the contract and what was not shipped."""
    first = next(iter(models.values()))["metadata"]
    rows = []
    for name, m in models.items():
        io = "int8 input and output tensors (quantize/dequantize as shown)" if m["metadata"].get("io_dtype") == "int8" \
            else "float32 input and output"
        bound = f", batch at most {m['metadata']['max_batch']}" if "max_batch" in m["metadata"] else \
            f", batch {m['metadata']['batch']} (fixed)" if str(m["metadata"].get("batch")) == "1" else ""
        rows.append(f"| `models/{name}` | {m['variant']} | {m['precision']} | {100 * m['accuracy']:.2f} % | "
                    f"{m['agreement']:.4f} | {len(m['flips'] or [])} | {io}{bound} |")
    missing = ["", "Not in this bundle (the run could not make them):", ""] + \
        [f"- {name}: {why}" for name, why in skipped.items()] if skipped else []
    text = (FILES / "README.md").read_text(encoding="utf-8")
    fields = {"MODEL": model, "N": str(n), "MODELS": "\n".join(rows), "MISSING": "\n".join(missing),
              "SCALE": str(first.get("pixel_scale")), "MEAN": first["normalization_mean"],
              "STD": first["normalization_std"], "LAYOUT": str(first.get("input_layout", "NCHW")),
              "SHAPE": str(first.get("input_shape")), "CLASSES": str(first.get("classes"))}
    for key, value in fields.items():  # plain markers: the Kotlin, Java and C++ snippets are full of braces
        text = text.replace(f"@@{key}@@", value)
    return text
