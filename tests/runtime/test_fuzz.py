"""Random bytes, fuzzed images and fuzzed arrays to `pipeline predict` and `runtime.Classifier` (hypothesis).

The contract under test: every input either classifies (a label per image, probabilities summing to 1) or
raises :class:`RuntimeInputError` / exits 2 with a one-paragraph message. Nothing else: no crash inside Pillow or
onnxruntime, no traceback, no NaN probabilities.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime import Classifier
from runtime.errors import RuntimeInputError
from runtime.preprocess import load_image
from tests.helpers import invoke

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def clf(quick_run):
    with Classifier(quick_run["dir"] / "export" / "model-fp32.onnx") as c:
        yield c


def _valid(pred, n: int) -> None:
    assert len(pred.labels) == n and pred.probabilities.shape == (n, 10)
    assert np.isfinite(pred.probabilities).all()
    assert np.allclose(pred.probabilities.sum(1), 1.0, atol=1e-5)


def _encoded_image(draw) -> bytes:
    """A real PNG/JPEG/BMP/GIF/TIFF of random size, mode and content."""
    from PIL import Image

    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"]))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode in ("I;16", "I", "F"):  # 16-bit and 32-bit grayscale, as scanners and microscopes write them
        img = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
        img = img if mode == "I;16" else img.convert("I") if mode == "I" else img.convert("I").convert("F")
    else:
        img = Image.fromarray(pixels).convert(mode)
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]))
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # this format cannot store this mode: store it as PNG
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@st.composite
def image_files(draw) -> bytes:
    """Random bytes, or a real image with random bytes overwritten, cut off or appended."""
    kind = draw(st.sampled_from(["random", "intact", "corrupted", "truncated", "appended"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    data = bytearray(_encoded_image(draw))
    if kind == "corrupted":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "appended":
        data += draw(st.binary(min_size=1, max_size=256))
    return bytes(data)


@FUZZ
@given(data=image_files())
def test_load_image_returns_a_digit_or_a_clear_error(tmp_path, data):
    f = tmp_path / "input.img"
    f.write_bytes(data)
    try:
        arr = load_image(f)
    except RuntimeInputError as e:
        assert str(f) in str(e)
        return
    assert arr.shape == (28, 28) and arr.dtype == np.uint8


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=image_files())
def test_predict_cli_classifies_or_exits_2(tmp_path, quick_run, data):
    f = tmp_path / "input.png"
    f.write_bytes(data)
    r = invoke("predict", f, "--model", quick_run["dir"] / "export" / "model-fp32.onnx")
    assert r.exit_code in (0, 2), r.output
    assert "Traceback" not in r.output
    if r.exit_code == 2:
        assert r.output.lstrip().startswith("error:") and "input.png" in r.output


_dtypes = st.sampled_from([np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64,
                           np.bool_, np.complex64])


@FUZZ
@given(arr=hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=30)))
def test_classifier_takes_any_array_or_refuses_it(clf, arr):
    try:
        pred = clf.predict(arr)
    except RuntimeInputError as e:
        assert str(e)
        return
    n = 1 if arr.ndim == 2 else arr.shape[0]
    _valid(pred, n)


@FUZZ
@given(arr=hnp.arrays(np.uint8, st.sampled_from([(28, 28), (3, 28, 28), (5, 1, 28, 28)])))
def test_classifier_accepts_every_uint8_digit_shape(clf, arr):
    pred = clf.predict(arr)
    _valid(pred, 1 if arr.shape == (28, 28) else arr.shape[0])


@FUZZ
@given(values=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 256.0, 1e30]), min_size=1, max_size=4))
def test_classifier_refuses_non_finite_or_out_of_range_floats(clf, values):
    x = np.zeros((28, 28), np.float32)
    x.flat[: len(values)] = values
    with pytest.raises(RuntimeInputError):
        clf.predict(x)
