"""pipeline/efficiency.py: MACs per image counted from an ONNX graph equal the count from the torch model."""
import onnx
import pytest

from pipeline.efficiency import onnx_macs_per_image
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
