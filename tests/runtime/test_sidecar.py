"""runtime/sidecar.py: where a .pte's or .tflite's sidecar lives, and a damaged one refused naming the runtime."""
import json

import pytest

from runtime import sidecar


def test_the_sidecar_sits_beside_the_file_and_reads_back(tmp_path):
    model = tmp_path / "model-int8.pte"
    assert sidecar.path(model) == tmp_path / "model-int8.pte.json"
    sidecar.path(model).write_text(json.dumps({"normalization_mean": "[0.13]", "max_batch": 1024}))
    assert sidecar.read(model, "ExecuTorch") == {"normalization_mean": "[0.13]", "max_batch": 1024}


@pytest.mark.parametrize("text, says", [(None, "missing or not JSON (FileNotFoundError)"),
                                        ("{not json", "missing or not JSON (JSONDecodeError)"),
                                        ("[1, 2]", "is not a JSON object")])
def test_a_missing_damaged_or_foreign_sidecar_is_refused_naming_the_runtime_and_file(tmp_path, text, says):
    model = tmp_path / "model-fp32.tflite"
    if text is not None:
        sidecar.path(model).write_text(text)
    with pytest.raises(ValueError) as e:
        sidecar.read(model, "LiteRT")
    assert str(e.value).startswith(f"LiteRT sidecar {sidecar.path(model)} ") and says in str(e.value)
