"""pipeline/measure/efficiency.py: MACs per image counted from an ONNX graph equal the count from the torch model."""
import onnx
import pytest

from pipeline.measure.efficiency import onnx_macs_per_image
from pipeline.models import build, macs_per_image


def test_macs_of_a_qdq_file_match_torch(quick_run):
    assert onnx_macs_per_image(quick_run["dir"] / "export" / "model-int8-ptq.onnx") == macs_per_image(build("edgenet"))


@pytest.mark.parametrize("name", ["mlp", "mlp_small", "cnn", "cnn_bn", "lenet5"])  # edgenet: the test above
def test_macs_from_onnx_match_torch_for_every_zoo_model(name, tmp_path):
    from exporters.onnx import torch_to_onnx_proto

    model = build(name).eval()
    path = tmp_path / f"{name}.onnx"
    onnx.save(torch_to_onnx_proto(model, 18), str(path))
    assert onnx_macs_per_image(path) == macs_per_image(model)


def test_training_counts_three_forward_passes_per_image():
    """8 M MACs x 3 (forward + the backward's two products) x 2 FLOP x 100 images/s = 4.8 GFLOP/s: a tenth of
    a 48 GFLOP/s peak; no peak (a GPU run) gives no fraction."""
    from pipeline.measure.efficiency import training

    assert training(8_000_000, 100.0, 48.0) == {"images_per_s": 100.0, "macs_factor": 3, "gflops": 4.8,
                                               "fraction_of_peak": 0.1}
    assert training(8_000_000, 100.0, None)["fraction_of_peak"] is None
