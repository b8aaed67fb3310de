"""runtime.Classifier and `pipeline predict`: real MNIST digits, files of any mode, every bad input."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from runtime.classifier import Classifier
from runtime.errors import RuntimeInputError
from runtime.preprocess import load_image, to_mnist_array
from tests.conftest import invoke


def _test_images(data_root, n=None):
    raw = data_root / "MNIST" / "raw"
    x = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    return (x, y) if n is None else (x[:n], y[:n])


@pytest.fixture(scope="module")
def model(quick_run):
    return quick_run["dir"] / "export" / "model-fp32.onnx"


def test_classifies_all_test_images_to_the_reported_accuracy(model, data_root, quick_run):
    x, y = _test_images(data_root)
    with Classifier(model) as clf:
        pred = clf.predict(x)
    acc = float((pred.indices == y).mean())
    reported = next(v["accuracy"] for v in quick_run["report"]["variants"] if v["name"] == "onnx-fp32")
    assert acc == reported
    assert pred.probabilities.shape == (10000, 10) and np.allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    assert pred.labels[:3] == [str(i) for i in pred.indices[:3]]


def test_single_batch_and_channel_forms_agree(model, data_root):
    x, _ = _test_images(data_root, 16)
    with Classifier(model) as clf:
        a = clf.predict(x).indices
        b = clf.predict(x[:, None]).indices
        c = np.array([clf.predict(img).indices[0] for img in x])
        d = clf.predict(list(x)).indices
    assert (a == b).all() and (a == c).all() and (a == d).all()


def test_pil_pictures_are_converted_like_mnist(model, data_root):
    x, y = _test_images(data_root, 50)
    with Classifier(model) as clf:
        ref = clf.predict(x).indices
        pics = [Image.fromarray(255 - im).resize((150, 200)).convert("RGB") for im in x]  # black ink on white
        got = clf.predict(pics).indices
    assert (got == ref).sum() >= 45
    arr = to_mnist_array(pics[0])
    assert arr.shape == (28, 28) and arr.dtype == np.uint8 and arr[0].max() == 0  # black border


@pytest.mark.parametrize("bad, message", [
    (np.zeros((28, 27), np.uint8), "expected one 28x28 image"),
    (np.zeros((2, 3, 28, 28), np.uint8), "expected one 28x28 image"),
    (np.full((28, 28), np.nan, np.float32), "NaN"),
    (np.zeros((0, 28, 28), np.uint8), "empty batch"),
    ([], "empty batch"),
    (np.zeros((28, 28), bool), "dtype bool"),
    (np.full((28, 28), 300.0), "0..255"),
])
def test_bad_arrays_are_refused_clearly(model, bad, message):
    with Classifier(model) as clf, pytest.raises(RuntimeInputError, match=message):
        clf.predict(bad)


def test_bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(RuntimeInputError, match="not an image"):
        load_image(text)
    good = tmp_path / "d.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RuntimeInputError, match="truncated or corrupted"):
        load_image(trunc)
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    with pytest.raises(RuntimeInputError, match="no digit found"):
        load_image(blank)
    with pytest.raises(RuntimeInputError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_model_without_metadata_needs_explicit_preprocessing(model, tmp_path, data_root):
    m = onnx.load(str(model))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(RuntimeInputError, match="mean, std, classes"):
        Classifier(bare)
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    import json

    x, _ = _test_images(data_root, 8)
    with Classifier(bare, mean=json.loads(meta["normalization_mean"]), std=json.loads(meta["normalization_std"]),
                    classes=[str(i) for i in range(10)]) as clf, Classifier(model) as ref:
        assert (clf.predict(x).indices == ref.predict(x).indices).all()


def test_predict_command(model, data_root, tmp_path):
    x, y = _test_images(data_root, 3)
    files = []
    for i, im in enumerate(x):
        f = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - im).resize((112, 112)).save(f)
        files.append(f)
    r = invoke("predict", *files, "--model", model, "--top", "3")
    assert r.exit_code == 0, r.output
    assert all(f.name in r.output for f in files)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    r = invoke("predict", files[0], bad, "--model", model)
    assert r.exit_code == 2 and "bad.jpg" in r.output and "Traceback" not in r.output


def test_classifier_never_imports_torch(model, data_root):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any attempt to import torch now fails
        "import numpy as np\n"
        "from runtime import Classifier\n"
        f"x = np.frombuffer(open(r'{data_root / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte'}', 'rb').read(), np.uint8,"
        " offset=16).reshape(-1, 28, 28)[:100]\n"
        f"print(Classifier(r'{model}').predict(x).labels[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("[")
