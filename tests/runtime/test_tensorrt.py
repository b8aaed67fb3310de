"""runtime/tensorrt.py without a GPU: ``TensorRTRunner`` over the Polygraphy stand-in (tests/fixtures/trt_standins.py).

The stand-in behaves as Polygraphy 0.49's ``TrtRunner`` is documented to (a batch outside the engine's profile
fails; one host output buffer is reused by every call) and computes on the quick run's real ONNX file.
"""
import json

import numpy as np
import pytest

from tests.fixtures.trt_standins import fake_engine_file


@pytest.fixture(scope="module")
def test_images(data_root):
    """The 10,000 real MNIST test images (uint8) and labels."""
    raw = data_root / "MNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    return images, labels


def _normalized(quick_run, images):
    from exporters.onnx import read_metadata

    meta = read_metadata(quick_run["dir"] / "export" / "model-fp32.onnx")
    mean, std = json.loads(meta["normalization_mean"])[0], json.loads(meta["normalization_std"])[0]
    return ((images / 255.0 - mean) / std).astype(np.float32)


def test_trt_runner_batches_within_the_engine_profile_and_owns_its_outputs(fake_polygraphy, quick_run, test_images,
                                                                             tmp_path):
    """Bugs 1 and 2: run_logits batches to the profile maximum read from the engine, and the logits of every
    batch survive Polygraphy's reused output buffer: accuracy equals onnxruntime's on the same ONNX exactly."""
    from pipeline.measure.compare import run_logits
    from runtime.onnxrt import OnnxrtRunner
    from runtime.tensorrt import TensorRTRunner

    onnx_path = quick_run["dir"] / "export" / "model-fp32.onnx"
    x = _normalized(quick_run, test_images[0])
    engine = fake_engine_file(tmp_path / "model-fp32.engine", onnx_path)
    with TensorRTRunner(engine) as trt_runner:
        assert trt_runner.batch_range == (1, 256)
        logits = run_logits(trt_runner, x)
    assert max(fake_polygraphy[0].calls) == 256 and sum(fake_polygraphy[0].calls) == len(x)
    with OnnxrtRunner(onnx_path) as ort_runner:
        expected = run_logits(ort_runner, x)
    np.testing.assert_array_equal(logits, expected)
    reported = {v["name"]: v for v in quick_run["report"]["variants"]}["onnx-fp32"]["accuracy"]
    assert float((logits.argmax(1) == test_images[1]).mean()) == reported
