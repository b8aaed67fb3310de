import pytest
import torch

from pipeline import models
from pipeline.errors import PipelineError


@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_registry_models_map_mnist_to_ten_logits(name):
    m = models.build(name).eval()
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert models.param_count(m) > 0 and models.macs_per_image(m) > 0


def test_seed_networks_have_the_tutorials_sizes():
    # parameter counts follow from the layers in shared/SEEDS.md
    expected = {"mlp": 784 * 128 + 128 + 128 * 400 + 400 + 400 * 10 + 10,
                "mlp_small": 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10,
                "lenet5": 61706}
    for name, count in expected.items():
        assert models.param_count(models.build(name)) == count
    cnn = models.build("cnn")
    assert [m.out_features for m in cnn if isinstance(m, torch.nn.Linear)] == [256, 10]
    assert [m.in_features for m in cnn if isinstance(m, torch.nn.Linear)] == [576, 256]
    bn = models.build("cnn_bn")
    assert [m.negative_slope for m in bn if isinstance(m, torch.nn.LeakyReLU)] == [0.2] * 3
    assert [m.out_channels for m in bn if isinstance(m, torch.nn.Conv2d)] == [3, 16, 32]


def test_user_model_loads_by_path():
    m = models.build("tests.fixtures.user_models:TinyNet")
    assert m(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodel", "Unknown model 'nosuchmodel'. Valid names: edgenet, mlp"),
    ("no_such_pkg.mod:Net", "Could not import module"),
    ("tests.fixtures.user_models:Missing", "has no attribute"),
    ("tests.fixtures.user_models:WrongOutput", "must return (N, 10) logits"),
    ("tests.fixtures.user_models:NeedsArgs", "constructible without arguments"),
    ("tests.fixtures.user_models:NotAModule", "not a torch.nn.Module"),
    (":Net", "package.module:ClassName"),
])
def test_bad_model_specs_explain_themselves(spec, message):
    with pytest.raises(PipelineError) as e:
        models.build(spec)
    assert message in str(e.value)
