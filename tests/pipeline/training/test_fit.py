"""An interrupted training continues from the last complete epoch and ends where an uninterrupted one does."""
import pytest
import torch

from pipeline import models
from pipeline.training import fit as train
from pipeline.config import DataConfig, TrainConfig
from pipeline.dataset import load_splits


@pytest.fixture(scope="module")
def small(data_root):
    return load_splits(DataConfig(root=data_root, val_size=500, max_train=1000))


def _run(splits, cfg, path=None):
    torch.manual_seed(0)
    return train.train(models.build("cnn_bn"), splits, cfg, resume_path=path, resume_key="k1")


def test_interrupt_then_resume_matches_an_uninterrupted_run(small, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=100, threads=1)
    reference = _run(small, cfg)

    state = tmp_path / "resume.pt"
    real_save = train._save_state
    calls = []

    def save_then_die(path, st):
        real_save(path, st)
        calls.append(st["epoch"])
        if st["epoch"] == 2:
            raise KeyboardInterrupt  # like Ctrl-C right after epoch 2 was saved

    monkeypatch.setattr(train, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(small, cfg, state)
    assert state.is_file() and calls == [1, 2]
    trained = []

    def save_and_record(path, st):
        real_save(path, st)
        trained.append(st["epoch"])

    monkeypatch.setattr(train, "_save_state", save_and_record)
    resumed = _run(small, cfg, state)
    assert trained == [3]  # epochs 1 and 2 came from resume.pt, not from training them again
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert state.is_file()  # the train stage removes it once the checkpoint is recorded (tests/test_faults.py)
    assert resumed.val_accuracy == reference.val_accuracy and resumed.best_epoch == reference.best_epoch
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_state_for_another_config_or_corrupted_is_ignored(small, tmp_path):
    state = tmp_path / "resume.pt"
    state.write_bytes(b"garbage")
    r = _run(small, TrainConfig(epochs=1, batch_size=100, threads=1), state)
    assert [h["epoch"] for h in r.history] == [1]
    train._save_state(state, {"key": "other", "epoch": 5})
    r = _run(small, TrainConfig(epochs=1, batch_size=100, threads=1), state)
    assert [h["epoch"] for h in r.history] == [1]


class _NaNAfter(torch.nn.Module):
    """Trains normally for ``ok`` steps, then its training forward returns NaN (divergence in mid-run)."""

    def __init__(self, ok: int):
        super().__init__()
        self.fc, self.ok, self.calls = torch.nn.Linear(784, 10), ok, 0

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.ok:
                return out * float("nan")
        return out


@pytest.mark.parametrize("ok, epoch, step", [(0, 1, 1), (12, 2, 3), (19, 2, 10)])
def test_nan_loss_stops_training_naming_epoch_and_step(small, tmp_path, ok, epoch, step):
    from pipeline.errors import PipelineError

    state = tmp_path / "resume.pt"
    cfg = TrainConfig(epochs=3, batch_size=100, threads=1, lr=0.01)  # 1,000 images: 10 steps per epoch
    model = _NaNAfter(ok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PipelineError) as e:
        train.train(model, small, cfg, resume_path=state, resume_key="k1")
    msg = str(e.value)
    assert f"the loss became nan at epoch {epoch} of 3, step {step} of 10" in msg
    assert "lower --lr (now 0.01)" in msg and "--schedule (now onecycle)" in msg
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())  # no NaN update was applied
    if epoch == 1:
        assert not state.exists() and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    else:  # the state of the last complete epoch is intact and finite
        saved = torch.load(state, weights_only=True)
        assert saved["epoch"] == epoch - 1 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_nan_logits_in_eval_mode_stop_training_after_the_epoch(small):
    from pipeline.errors import PipelineError
    from tests.fixtures.user_models import NaNInEval

    with pytest.raises(PipelineError) as e:
        train.train(NaNInEval(), small, TrainConfig(epochs=2, batch_size=100, threads=1))
    assert "Training stopped after epoch 1 of 2" in str(e.value) and "validation loss is nan" in str(e.value)


def test_ema_weights_are_the_ones_validated_and_kept(small, monkeypatch):
    """With ``ema``, the returned model is the moving average of the raw weights (and BatchNorm statistics) after
    every step, computed here by hand from an otherwise identical run without EMA, and not the last raw weights."""
    cfg = TrainConfig(epochs=1, batch_size=100, threads=1, ema=0.0)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in models.build("cnn_bn").state_dict().items()}
    snapshots = []
    real_run_epoch = train.run_epoch

    def recording(loop, epoch):
        loop.after_step = lambda: snapshots.append({k: v.detach().clone() for k, v in loop.model.state_dict().items()})
        return real_run_epoch(loop, epoch)

    monkeypatch.setattr(train, "run_epoch", recording)
    raw = _run(small, cfg)
    monkeypatch.undo()
    assert len(snapshots) == 10  # 1,000 images in batches of 100
    decay = 0.9
    by_hand = dict(initial)
    for t, snap in enumerate(snapshots, start=1):
        d = min(decay, (1 + t) / (10 + t))
        by_hand = {k: (by_hand[k] + (1 - d) * (v - by_hand[k])) if v.is_floating_point() else v for k, v in snap.items()}

    kept = _run(small, TrainConfig(epochs=1, batch_size=100, threads=1, ema=decay)).model.state_dict()
    last_raw = raw.model.state_dict()
    for k, v in snapshots[-1].items():
        assert torch.equal(v, last_raw[k]), k  # the run without EMA keeps its last raw weights
    moved = 0
    for k, v in kept.items():
        assert torch.allclose(v.float(), by_hand[k].float(), rtol=1e-5, atol=1e-6), k
        moved += not torch.equal(v, last_raw[k])
    assert moved == len([v for v in kept.values() if v.is_floating_point()])  # every float tensor was averaged


def test_onecycle_with_fewer_than_five_steps_is_one_paragraph_not_a_traceback(small):
    """1,000 images in one batch of 1,000 is one step: OneCycleLR would divide by zero in its first step."""
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"onecycle needs at least 5 optimizer steps, and this run has 1"):
        _run(small, TrainConfig(epochs=1, batch_size=1000, threads=1))
    assert _run(small, TrainConfig(epochs=1, batch_size=1000, schedule="none", threads=1)).history


def test_a_rank_warps_its_share_with_the_single_process_draws(small):
    """What a data-parallel rank does (draw the global batch's matrices, warp its share, rank::world) gives each
    image the warp one process gives it, and leaves the shared generator where one process leaves it."""
    x, background = small.train_x[:101], (0.0 - small.mean) / small.std
    one = torch.Generator().manual_seed(3)
    whole = train.augment(x, background, one)
    for world in (2, 3):
        for rank in range(world):
            shared = torch.Generator().manual_seed(3)
            share = train.warp(x[rank::world], train.affine_draws(len(x), shared)[rank::world], background)
            assert torch.equal(shared.get_state(), one.get_state())
            assert torch.allclose(share, whole[rank::world], rtol=0, atol=1e-5)  # the same warp per image
    other = train.augment(x, background, torch.Generator().manual_seed(4))
    assert not torch.allclose(other, whole, rtol=0, atol=1e-2)  # the check above can tell draws apart
