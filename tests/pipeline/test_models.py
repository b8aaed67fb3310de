import pytest
import torch

from pipeline import models
from pipeline.errors import PipelineError
from tests.helpers import invoke


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
    ("tests.fixtures.user_models:NotAModule", "names the class NotAModule, not a subclass of torch.nn.Module"),
    (":Net", "package.module:ClassName"),
])
def test_bad_model_specs_explain_themselves(spec, message):
    with pytest.raises(PipelineError) as e:
        models.build(spec)
    assert message in str(e.value)


UM = "tests.fixtures.user_models"
#: --model values that must be refused before anything runs, with a piece of the paragraph each gives
BAD_USER_MODELS = [
    # not an nn.Module class: refused before it is called (exit() would end the program, os.system run a shell)
    ("builtins:exit", "names an object of type Quitter, not a subclass of torch.nn.Module; nothing of it was called"),
    ("builtins:print", "names the function print, not a subclass"),
    ("os:system", "names the function system, not a subclass"),
    ("math:pi", "names an object of type float, not a subclass"),
    ("collections:OrderedDict", "names the class OrderedDict, not a subclass"),
    (f"{UM}:a_function", "names the function a_function, not a subclass"),
    (f"{UM}:AN_INSTANCE", "names an object of type TinyNet, not a subclass"),
    (f"{UM}:NotAModule", "names the class NotAModule, not a subclass"),
    # user code that exits or raises
    ("tests.fixtures.exits_on_import:Net", "Could not import module 'tests.fixtures.exits_on_import'"
                                           " for --model 'tests.fixtures.exits_on_import:Net': it called sys.exit(3)"),
    (f"{UM}:ExitsInInit", "failed while being constructed with no arguments (user models must be constructible "
                          "without arguments): it called sys.exit(0) or exit() (SystemExit)"),
    (f"{UM}:ExitBuiltinInForward", "failed while running a (1, 1, 28, 28) input (models must take normalized MNIST "
                                   "batches of shape (N, 1, 28, 28)): it called sys.exit(None)"),
    (f"{UM}:ExitsWithMessageInForward", "it called sys.exit('bye')"),
    (f"{UM}:RaisesInInit", "failed while being constructed with no arguments (user models must be constructible "
                           "without arguments): RuntimeError: no GPU here"),
    (f"{UM}:NeedsArgs", "TypeError"),
    (f"{UM}:RaisesInForward", "failed while running a (1, 1, 28, 28) input"),
    (f"{UM}:FailsOnlyWhenCounted", "failed while counting its MACs on a (1, 1, 28, 28) input: RuntimeError: "
                                   "unsupported under a dispatch mode"),
    # models that run but are not MNIST classifiers
    (f"{UM}:NoParameters", "has no trainable parameters, so there is nothing to train"),
    (f"{UM}:FrozenParameters", "has no trainable parameters"),
    (f"{UM}:SqueezesBatch", "for N=1 it returned a torch.float32 tensor of shape (10,)"),
    (f"{UM}:HardCodedBatch", "for N=3 it returned a torch.float32 tensor of shape (2, 10)"),
    (f"{UM}:ReturnsTuple", "for N=1 it returned a tuple"),
    (f"{UM}:ReturnsList", "for N=1 it returned a list"),
    (f"{UM}:ReturnsIntegers", "for N=1 it returned a torch.int64 tensor of shape (1, 10)"),
    (f"{UM}:WrongOutput", "must return (N, 10) logits as a float tensor; for N=1"),
]


@pytest.mark.parametrize("spec, message", BAD_USER_MODELS, ids=[s for s, _ in BAD_USER_MODELS])
def test_every_failing_user_model_is_a_paragraph(spec, message):
    with pytest.raises(PipelineError) as e:
        models.build(spec)
    assert message in str(e.value)


@pytest.mark.parametrize("spec, message", BAD_USER_MODELS, ids=[s for s, _ in BAD_USER_MODELS])
def test_run_refuses_failing_user_models_before_any_stage(tmp_path, data_root, spec, message):
    artifacts = tmp_path / "artifacts"
    r = invoke("run", "all", "--quick", "--model", spec, "--artifacts", artifacts, "--data-root", data_root)
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert out.startswith("error: ") and message in out and "Traceback" not in out
    assert not artifacts.exists()  # no stage ran, not even data; no folder was made
