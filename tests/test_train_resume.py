"""An interrupted training continues from the last complete epoch and ends where an uninterrupted one does."""
import pytest
import torch

from pipeline import models, train
from pipeline.config import DataConfig, TrainConfig
from pipeline.data import load_splits


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
    monkeypatch.setattr(train, "_save_state", real_save)

    resumed = _run(small, cfg, state)
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
