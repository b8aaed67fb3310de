"""pipeline.dataset.read_test_set: the one reader of the MNIST test set's raw bytes (the bundles and the JS golden set use it)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.dataset import TEST_FILES, ensure_raw, read_test_set
from pipeline.errors import PipelineError


def test_it_reads_what_torchvision_reads(data_root):
    from torchvision import datasets

    images, labels = read_test_set(ensure_raw(data_root))
    tv = datasets.MNIST(str(data_root), train=False, download=False)
    assert images.dtype == labels.dtype == np.uint8 and images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.array_equal(images, tv.data.numpy()) and np.array_equal(labels, tv.targets.numpy())


@pytest.mark.parametrize("damage", ["truncated", "header", "labels of another length"])
def test_a_damaged_file_is_one_paragraph_naming_it(data_root, tmp_path, damage):
    raw = ensure_raw(data_root)
    for name in TEST_FILES:
        shutil.copy2(raw / name, tmp_path / name)
    images, labels = (tmp_path / n for n in TEST_FILES)
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:-1])
        bad = images
    elif damage == "header":
        data = bytearray(images.read_bytes())
        data[2] = 0x09  # signed bytes, not uint8
        images.write_bytes(bytes(data))
        bad = images
    else:
        labels.write_bytes(labels.read_bytes()[:8 + 9999])  # a consistent IDX file, one label short
        data = bytearray(labels.read_bytes())
        data[4:8] = (9999).to_bytes(4, "big")
        labels.write_bytes(bytes(data))
        bad = labels
    with pytest.raises(PipelineError) as e:
        read_test_set(tmp_path)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
