import numpy as np
import pytest

from pipeline.errors import ParityError
from pipeline.validate import check_parity, compare
from pipeline.variants import BY_NAME


def test_compare_counts_agreement_flips_and_delta():
    ref = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    out = ref.copy()
    out[3] = np.eye(10)[5]  # one flipped prediction
    labels = np.array([0, 1, 2, 3])
    f = compare(out, ref, labels)
    assert f["agreement"] == 0.75 and f["flips"] == [3] and f["accuracy"] == 0.75
    assert f["accuracy_delta"] == pytest.approx(-25.0) and f["max_abs_diff"] == 1.0


def test_parity_failure_lists_every_broken_variant():
    rows = [{"name": "torch-fp32", "agreement": 1.0, "max_abs_diff": 0.0},
            {"name": "onnx-fp32", "agreement": 0.999, "max_abs_diff": 3e-3}]
    with pytest.raises(ParityError) as e:
        check_parity(rows, BY_NAME)
    assert "onnx-fp32" in str(e.value) and "agreement 0.9990" in str(e.value) and e.value.exit_code == 3


def test_parity_passes_within_tolerance():
    check_parity([{"name": "onnx-fp32", "agreement": 1.0, "max_abs_diff": 5e-5}], BY_NAME)
