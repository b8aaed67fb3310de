"""pipeline/training/qat.py's recipe mechanics on real MNIST images and the default model, without a training run:
BatchNorm folded before fake quantization, observers frozen after ``qat_observer_steps`` optimizer steps, the
weight EMA (``qat_ema``) being what is converted. The exported QAT file (per-channel weight scales) is tested
on the quick run in tests/pipeline/stages/test_quantize.py; docs/qat.md says why the recipe is what it is."""
import pytest
import torch

from pipeline import models
from pipeline.config import DataConfig, QuantConfig
from pipeline.errors import PipelineError
from pipeline.training.qat import Recipe, prepare
from pipeline.training.fit import Trainer, run_epoch


@pytest.fixture(scope="module")
def splits(data_root):
    from pipeline.dataset import load_splits

    return load_splits(DataConfig(root=data_root, val_size=1000, max_train=256))


def _prepared(splits):
    torch.manual_seed(0)
    return prepare(models.edgenet(), splits.train_x[:2])


def _train(prepared, splits, cfg: QuantConfig, record, steps: int = 8, lr: float = 0.05):
    """``steps`` SGD steps of 32 images through the recipe; ``record(step)`` after each."""
    from torchao.quantization.pt2e import move_exported_model_to_train

    recipe = Recipe(prepared, cfg)

    def after():
        recipe.step()
        record(recipe.steps)

    opt = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    run_epoch(Trainer(prepared, opt, None, torch.Generator().manual_seed(0), splits.train_x, splits.train_y,
                      batch_size=32, epochs=1, what="QAT", advice="-", images=32 * steps,
                      set_train_mode=move_exported_model_to_train, after_step=after), 1)
    return recipe


def _fake_quants(prepared):
    from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize

    return {n: m for n, m in prepared.named_modules() if isinstance(m, FusedMovingAvgObsFakeQuantize)}


def _scales(prepared) -> dict:
    return {n: m.scale.detach().clone() for n, m in _fake_quants(prepared).items()}


def test_batchnorm_is_folded_before_fake_quantization(splits):
    """No BatchNorm op is left in the prepared graph: its statistics are frozen (folded into the convs) from
    the first QAT step, and QAT fine-tunes exactly the weights that ship."""
    prepared = _prepared(splits)
    ops = {str(n.target) for n in prepared.graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "batch_norm" in op], sorted(ops)
    assert any("conv2d" in op for op in ops)


def test_observers_freeze_after_the_warmup_steps(splits):
    """With qat_observer_steps=3 the fake-quant scales move during steps 1-3 and never after; with 0 they keep
    moving: the observers are what the setting stops."""
    seen = {}
    prepared = _prepared(splits)
    _train(prepared, splits, QuantConfig(qat_observer_steps=3), lambda t: seen.__setitem__(t, _scales(prepared)))
    assert len(seen[1]) >= 10  # every conv's input and weight, the linear's
    assert any(not torch.equal(seen[1][k], seen[3][k]) for k in seen[1]), "the observers never ran"
    for t in range(4, 9):
        for k in seen[3]:
            assert torch.equal(seen[t][k], seen[3][k]), (t, k)
    assert all(int(m.observer_enabled[0]) == 0 for m in _fake_quants(prepared).values())
    assert all(int(m.fake_quant_enabled[0]) == 1 for m in _fake_quants(prepared).values())

    seen.clear()
    prepared = _prepared(splits)
    _train(prepared, splits, QuantConfig(qat_observer_steps=0), lambda t: seen.__setitem__(t, _scales(prepared)))
    assert any(not torch.equal(seen[8][k], seen[3][k]) for k in seen[3])


def test_the_weight_ema_is_what_finish_leaves(splits):
    """With qat_ema=d, finish() leaves every parameter at the EMA of its values after each step (decay warmed up
    as min(d, (1+t)/(10+t))), not at the last step's; the observers' buffers stay the live ones."""
    decay = 0.5
    prepared = _prepared(splits)
    start = {k: p.detach().clone() for k, p in prepared.named_parameters()}
    expected = {k: v.clone() for k, v in start.items()}

    def record(t):
        d = min(decay, (1 + t) / (10 + t))
        for k, p in prepared.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.detach()

    recipe = _train(prepared, splits, QuantConfig(qat_ema=decay, qat_observer_steps=4), record)
    last = {k: p.detach().clone() for k, p in prepared.named_parameters()}
    scales = _scales(prepared)
    recipe.finish()
    moved = False
    for k, p in prepared.named_parameters():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-5, atol=1e-6)
        moved |= not torch.allclose(p.detach(), last[k], atol=1e-4)
    assert moved, "finish() left the last step's weights"
    assert all(torch.equal(scales[k], v) for k, v in _scales(prepared).items())


def test_recipe_settings_are_checked():
    with pytest.raises(PipelineError, match="qat_observer_steps"):
        QuantConfig(qat_observer_steps=-1)
    with pytest.raises(PipelineError, match="qat_ema"):
        QuantConfig(qat_ema=1.0)
    with pytest.raises(PipelineError, match="qat_ema"):
        QuantConfig(qat_ema=float("nan"))
