import hashlib

import pytest

from pipeline import dataset as data
from pipeline.config import DataConfig
from pipeline.errors import PipelineError


def test_offline_materialization_matches_published_md5(data_root):
    raw = data_root / "MNIST" / "raw"
    for name, (_, md5) in data.RAW_FILES.items():
        assert hashlib.md5((raw / name).read_bytes()).hexdigest() == md5


def test_splits_are_disjoint_normalized_and_sized(data_root):
    s = data.load_splits(DataConfig(root=data_root, val_size=5000))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (55000, 5000, 10000)
    assert tuple(s.train_x.shape[1:]) == (1, 28, 28)
    # normalized with training-split statistics
    assert abs(float(s.train_x.mean())) < 1e-3 and abs(float(s.train_x.std()) - 1) < 1e-3
    assert 0.12 < s.mean < 0.14 and 0.29 < s.std < 0.32
    # the three splits share no image (MNIST holds no exact duplicates, so this is exact)
    def keys(x):
        return {hashlib.sha1(r.numpy().tobytes()).digest() for r in x}

    train, val, test = keys(s.train_x), keys(s.val_x), keys(s.test_x)
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert not (train & val) and not (val & test) and not (train & test)


def test_split_is_deterministic(data_root):
    a = data.load_splits(DataConfig(root=data_root, val_size=1000, max_train=500))
    b = data.load_splits(DataConfig(root=data_root, val_size=1000, max_train=500))
    assert (a.val_y == b.val_y).all() and (a.train_y == b.train_y).all()


def test_corrupted_raw_file_is_reported_not_replaced(tmp_path, data_root):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data_root, root)
    bad = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(PipelineError, match="corrupted"):
        data.ensure_raw(root)
    assert bad.read_bytes() == bytes(blob)  # the user's file is left for them to inspect


def test_no_offline_copy_and_no_download_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_offline_zarr", lambda: None)
    monkeypatch.setattr(data, "_download", lambda root: None)
    with pytest.raises(PipelineError, match="could not be obtained"):
        data.ensure_raw(tmp_path)
