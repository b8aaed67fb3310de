"""pipeline/store/manifest.py: what a run records beside its files. (Damaged manifests: tests/pipeline/store/test_manifest_damage.py
and tests/test_faults.py; the TensorRT version it records is also checked in tests/exporters/test_tensorrt.py.)"""
import sys


def test_manifest_finds_tensorrt_under_its_cuda_specific_distribution(monkeypatch):
    from importlib import metadata

    from pipeline.store import manifest

    real = metadata.version

    def only_cu12(name):
        if name == "tensorrt-cu12":
            return "10.3.0"
        if name.startswith("tensorrt"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not imported: fall back to the distributions
    monkeypatch.setattr(metadata, "version", only_cu12)
    assert manifest.versions()["tensorrt"] == "10.3.0"
