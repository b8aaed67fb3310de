
import pytest
import torch

from pipeline.store import checkpoint
from pipeline import models
from pipeline.errors import PipelineError

PWNED = []


class Exploit:
    """Unpickling this would run code; a weights_only load must refuse it."""

    def __reduce__(self):
        return (PWNED.append, ("ran",))


def _payload(model=None):
    model = model or models.build("lenet5")
    return {"model": "lenet5", "state_dict": model.state_dict(),
            "normalization": {"mean": [0.13], "std": [0.31]}, "classes": [str(i) for i in range(10)],
            "input": {"name": "input", "shape": [1, 28, 28]}, "train_config": {"epochs": 1}}


def test_roundtrip_restores_identical_weights(tmp_path):
    torch.manual_seed(7)
    ref = models.build("lenet5").eval()
    p = checkpoint.save(tmp_path / "m.pt", _payload(ref))
    ckpt = checkpoint.load(p)
    m = checkpoint.restore(ckpt)
    assert ckpt["format"] == checkpoint.FORMAT
    restored, original = m.state_dict(), ref.state_dict()
    assert restored.keys() == original.keys()
    for k in original:
        assert torch.equal(restored[k], original[k]), k
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    # a model with other random weights is not what came back (the comparison above can fail)
    assert not torch.equal(models.build("lenet5").state_dict()["0.weight"], restored["0.weight"])


def test_code_running_pickle_is_refused_never_executed(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "payload": Exploit()}, p)
    with pytest.raises(PipelineError, match="Refused to load"):
        checkpoint.load(p)
    assert PWNED == []


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupted_files_are_reported(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(PipelineError, match="corrupted or not a PyTorch file"):
        checkpoint.load(p)


def test_truncated_real_checkpoint_is_reported(tmp_path):
    p = checkpoint.save(tmp_path / "m.pt", _payload())
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(PipelineError, match="corrupted"):
        checkpoint.load(p)


def test_foreign_checkpoint_is_reported(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save(models.build("lenet5").state_dict(), p)  # a bare state_dict from another tool
    with pytest.raises(PipelineError, match="not written by this pipeline"):
        checkpoint.load(p)


def test_weights_for_another_architecture_are_reported(tmp_path):
    payload = _payload() | {"model": "mlp"}
    p = checkpoint.save(tmp_path / "m.pt", payload)
    with pytest.raises(PipelineError, match="do not fit model 'mlp'"):
        checkpoint.restore(checkpoint.load(p))
