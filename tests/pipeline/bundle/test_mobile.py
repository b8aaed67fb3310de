"""pipeline/bundle/mobile.py: `pipeline bundle --target android` (what it holds, a run without some or all of its files,
damaged or foreign files refused by the run's manifest, `pipeline verify` on it). Its check.py is run in
tests/pipeline/bundle/files/android/test_check.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import invoke, one_paragraph, quick_bundle, snapshot

PHONE_FILES = {"models/model-fp32.pte", "models/model-fp32.pte.json", "models/model-int8.pte",
               "models/model-int8.pte.json", "models/model-fp32.tflite", "models/model-fp32.tflite.json",
               "models/model-int8.tflite", "models/model-int8.tflite.json"}


@pytest.fixture(scope="module")
def android_bundle(quick_run, data_root, tmp_path_factory):
    return quick_bundle(quick_run, data_root, tmp_path_factory.mktemp("android-bundles"), "android")


def test_android_bundle_contents(android_bundle, quick_run, data_root):
    names = {str(p.relative_to(android_bundle)) for p in android_bundle.rglob("*") if p.is_file()}
    assert names == PHONE_FILES | {"MANIFEST.json", "README.md", "check.py", "report.json", "data/golden.npz",
                                   "data/golden-images.npz"}  # no ONNX file, no bench.py: the phone formats only
    manifest = json.loads((android_bundle / "MANIFEST.json").read_text())
    assert manifest["target"] == "android" and "skipped" not in manifest
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}
    for name, m in manifest["models"].items():
        side = json.loads((android_bundle / "models" / f"{name}.json").read_text())
        assert m["metadata"]["normalization_mean"] == side["normalization_mean"]  # the contract, in the manifest too
        assert m["accuracy"] == reported[m["variant"]]["accuracy"] and m["flips"] == reported[m["variant"]]["flips"]
    assert manifest["models"]["model-fp32.pte"]["atol"] == 1e-4 and manifest["models"]["model-int8.tflite"]["atol"] is None
    # the golden images are the raw bytes of the inputs the pipeline fed (the first test images)
    from tests.helpers import mnist_test_images

    images, labels = mnist_test_images(data_root, 64)
    raw = np.load(android_bundle / "data" / "golden-images.npz")
    assert np.array_equal(raw["images"], images) and np.array_equal(raw["labels"], labels)
    readme = (android_bundle / "README.md").read_text()
    for needle in ("No phone was used", "not compiled", "Module.load(", "module.forward(", "from_blob(",
                   "Interpreter(File(filesDir", "quantizationParams()", "int8", "litert-int8"):
        assert needle in readme, needle
    assert "@@" not in readme  # every marker filled
    assert invoke("verify", android_bundle).exit_code == 0


def _drop_rows(run, names, reason="ExecuTorch is not installed: `pip install -e .[executorch]`"):
    """The run as if made without some runtime: its rows moved to the report's skipped list (re-recorded in the
    run's manifest, as the report stage would have written it), their files gone."""
    from pipeline import variants
    from pipeline.store import manifest
    from pipeline.store.paths import sha256_file

    report = json.loads((run / "report.json").read_text())
    report["variants"] = [v for v in report["variants"] if v["name"] not in names]
    report["skipped"] += [{"name": n, "reason": reason} for n in names]
    for rec in (report.get("recommended") or {}).values():  # as the report says of a target nothing here measured
        if rec.get("variant") in names:
            rec["measured"] = False
    (run / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    record = manifest.load(run / "stages.json")
    for info in record.values():
        for rel in list(info["outputs"]):
            if rel == "report.json":
                info["outputs"][rel]["sha256"] = sha256_file(run / rel)
                info["outputs"][rel]["size"] = (run / rel).stat().st_size
            if any(rel == f"export/{f}" for n in names for f in variants.files_of(variants.BY_NAME[n])):
                info["outputs"].pop(rel)
                (run / rel).unlink()
    manifest.save(run / "stages.json", record)


def test_a_run_without_executorch_ships_litert_and_says_what_is_missing(quick_copy, data_root, tmp_path):
    _drop_rows(quick_copy / "edgenet", ["executorch-fp32", "executorch-int8"])
    r = invoke("bundle", "--target", "android", "--artifacts", quick_copy, "--out", tmp_path / "out",
               "--data-root", data_root)
    assert r.exit_code == 0, r.output
    folder = tmp_path / "out" / "edgenet-android-bundle"
    assert not list((folder / "models").glob("*.pte*")) and (folder / "models" / "model-int8.tflite").is_file()
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert set(manifest["skipped"]) == {"executorch-fp32", "executorch-int8"}
    assert "pip install -e .[executorch]" in manifest["skipped"]["executorch-int8"]
    readme = (folder / "README.md").read_text()
    assert "Not in this bundle" in readme and "- executorch-fp32: ExecuTorch is not installed" in readme


def test_a_run_without_any_phone_file_is_refused_in_one_paragraph(quick_copy, data_root, tmp_path):
    _drop_rows(quick_copy / "edgenet", ["executorch-fp32", "executorch-int8", "litert-fp32", "litert-int8"],
               reason="neither runtime is installed")
    r = invoke("bundle", "--target", "android", "--artifacts", quick_copy, "--out", tmp_path / "out",
               "--data-root", data_root)
    out = one_paragraph(r)
    assert "none of the files the android bundle ships" in out and "litert-int8: neither runtime is installed" in out
    assert "pip install -e .[executorch,litert]" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _flip(rel):
    def damage(run):
        blob = bytearray((run / rel).read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (run / rel).write_bytes(bytes(blob))
    return damage


def _foreign_sidecar(run):
    side = json.loads((run / "export" / "model-int8.tflite.json").read_text())
    side["normalization_std"] = "[1.0]"  # valid JSON, another contract
    (run / "export" / "model-int8.tflite.json").write_text(json.dumps(side))


DAMAGE = {
    ".pte one bit flipped": (_flip("export/model-int8.pte"), "altered (SHA-256 differs from the manifest): "
                                                              "export/model-int8.pte"),
    "sidecar from elsewhere": (_foreign_sidecar, "export/model-int8.tflite.json"),
    ".tflite deleted": (lambda run: (run / "export" / "model-fp32.tflite").unlink(), "missing: export/model-fp32.tflite"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_or_foreign_phone_files_are_refused(case, quick_copy, android_bundle, data_root, tmp_path):
    import shutil

    damage, expected = DAMAGE[case]
    damage(quick_copy / "edgenet")
    out = tmp_path / "out"
    shutil.copytree(android_bundle, out / android_bundle.name)
    before = snapshot(out)
    r = invoke("bundle", "--target", "android", "--artifacts", quick_copy, "--out", out, "--data-root", data_root)
    assert expected in one_paragraph(r), r.output
    assert snapshot(out) == before


def test_verify_catches_an_altered_phone_file(android_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(android_bundle, copy)
    blob = bytearray((copy / "models" / "model-fp32.tflite").read_bytes())
    blob[-10] ^= 0x01
    (copy / "models" / "model-fp32.tflite").write_bytes(bytes(blob))
    r = invoke("verify", copy)
    assert r.exit_code == 1 and "altered: models/model-fp32.tflite" in r.output


def test_the_golden_inputs_are_what_the_contract_makes_of_the_raw_images(quick_run, data_root):
    """normalize (the contract as an app applies it to raw bytes, parsed by the runtime's metadata reader) reproduces
    the run's golden inputs from each phone file's sidecar; a contract without finite numbers is refused."""
    from pipeline.bundle import mobile
    from pipeline.dataset import ensure_raw, read_test_set

    images, _ = read_test_set(ensure_raw(data_root))
    golden = np.load(quick_run["dir"] / "export" / "golden.npz")["input"]
    for name in ("model-fp32.pte", "model-int8.tflite"):
        meta = mobile.read_contract(quick_run["dir"] / "export" / name)
        assert np.abs(mobile.normalize(images[:len(golden)], meta) - golden).max() <= 1e-5, name
        assert np.abs(mobile.normalize(images[1:len(golden) + 1], meta) - golden).max() > 0.1  # other images differ
        with pytest.raises(ValueError, match="normalization_mean must be a non-empty list of finite numbers"):
            mobile.normalize(images[:2], {**meta, "normalization_mean": "[NaN]"})
