"""runtime/classifier.py (Classifier) and `pipeline predict`: real MNIST, pictures of any mode through
runtime.preprocess, every bad input. (runtime/preprocess.py alone: tests/runtime/test_preprocess.py.)"""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from runtime.classifier import Classifier, Prediction
from runtime.errors import RuntimeInputError
from runtime.onnxrt import OnnxrtRunner
from runtime.preprocess import load_image, to_mnist_array
from tests.fixtures import onnx_graphs
from tests.helpers import ROOT, invoke, mnist_test_images



@pytest.fixture(scope="module")
def model(quick_run):
    return quick_run["dir"] / "export" / "model-fp32.onnx"


@pytest.fixture(scope="module")
def clf(model):
    with Classifier(model, threads=1) as c:
        yield c


# ---------------------------------------------------------------------------- real digits
def test_matches_onnxruntime_run_directly_on_2000_test_images(clf, model, data_root):
    x, y = mnist_test_images(data_root, 2000)
    pred = clf.predict(x)
    assert isinstance(pred, Prediction) and len(pred) == 2000

    with OnnxrtRunner(model, threads=1) as runner:  # the reference: metadata applied by hand
        props = runner.metadata_props()
        mean, std = json.loads(props["normalization_mean"])[0], json.loads(props["normalization_std"])[0]
        scale = float(props["pixel_scale"])
        feed = ((x[:, None].astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std))
        logits = runner.infer({runner.input_names[0]: feed.astype(np.float32)})[props["output_name"]]
        classes = json.loads(props["classes"])
    ref = logits.argmax(1)

    assert (pred.indices == ref).all()  # identical predictions, so identical accuracy
    assert float((pred.indices == y).mean()) == float((ref == y).mean()) > 0.9
    np.testing.assert_allclose(pred.logits, logits, atol=1e-5)
    assert pred.probabilities.shape == (2000, 10) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    assert (pred.probabilities.argmax(1) == pred.indices).all()
    np.testing.assert_array_equal(pred.confidence, pred.probabilities.max(1))
    assert pred.labels == [classes[i] for i in ref] and clf.classes == tuple(classes)
    assert clf.metadata.mean == (mean,) and clf.metadata.input_shape == (1, 28, 28)


def test_single_batch_channel_list_and_float_forms_agree(clf, data_root):
    x, _ = mnist_test_images(data_root, 16)
    batch = clf.predict(x)
    for other in (clf.predict(x[:, None]), clf.predict(list(x)), clf.predict([im[None] for im in x]),
                  clf.predict(x.astype(np.float32)), clf.predict(x.astype(np.int64))):
        assert (other.indices == batch.indices).all()
        np.testing.assert_allclose(other.logits, batch.logits, atol=1e-5)
    single = [clf.predict(im) for im in x]
    assert [p.labels[0] for p in single] == batch.labels
    np.testing.assert_allclose(np.concatenate([p.logits for p in single]), batch.logits, atol=1e-4)


def test_softmax_is_stable_for_huge_logits():
    from runtime.classifier import softmax

    p = softmax(np.array([[1e4, 0, -1e4], [-1e30, -1e30, -1e30]], dtype=np.float32))
    assert np.isfinite(p).all() and np.allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])


def test_explicit_classes_override_the_metadata(model, data_root):
    x, _ = mnist_test_images(data_root, 4)
    with Classifier(model, threads=1, classes=list("abcdefghij")) as c:
        pred = c.predict(x)
    assert pred.labels == ["abcdefghij"[i] for i in pred.indices]


# ---------------------------------------------------------------------------- pictures
def test_pil_pictures_are_converted_like_mnist(clf, data_root):
    x, _ = mnist_test_images(data_root, 50)
    ref = clf.predict(x).indices
    pics = [Image.fromarray(255 - im).resize((200, 150)).convert("RGB") for im in x]  # black ink on white, stretched
    got = clf.predict(pics).indices
    assert (got == ref).sum() >= 45
    one = clf.predict(pics[0])
    assert one.indices[0] == got[0]
    arr = to_mnist_array(pics[0])
    assert arr.shape == (28, 28) and arr.dtype == np.uint8 and arr.max() == 255
    assert arr[:2].max() == 0 and arr[:, :2].max() == 0 and arr[-2:].max() == 0  # black margin, as in MNIST
    cy, cx = (np.indices(arr.shape) * arr).sum((1, 2)) / arr.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # centred by centre of mass


@pytest.mark.parametrize("make", [
    lambda im: (lambda a: (a.putalpha(Image.fromarray(im).resize((120, 120))), a)[1])(
        Image.new("RGBA", (120, 120), (0, 0, 0, 0))),  # black ink drawn by alpha on a transparent sheet
    lambda im: Image.fromarray(255 - im).resize((64, 64)).convert("P"),
    lambda im: Image.fromarray(255 - im).resize((112, 112)).convert("1"),
    lambda im: Image.fromarray((255 - im).astype(np.uint16) * 257).resize((100, 100)),  # 16-bit, full range
    lambda im: Image.fromarray((200 - im * 0.7).astype(np.uint8)).resize((90, 90)),  # grey ink on grey paper
    lambda im: (lambda cv: (cv.paste(Image.fromarray(im).resize((84, 84)), (250, 30)), cv)[1])(
        Image.new("L", (400, 300))),  # small digit off-centre in a big black picture
], ids=["RGBA-alpha", "P", "1", "I;16", "grey-paper", "off-centre"])
def test_every_mode_is_converted(clf, data_root, make):
    x, _ = mnist_test_images(data_root, 50)
    assert (clf.predict([make(im) for im in x]).indices == clf.predict(x).indices).sum() >= 45


def test_load_image_reads_files_like_pil_images(clf, data_root, tmp_path):
    x, _ = mnist_test_images(data_root, 3)
    for i, im in enumerate(x):
        f = tmp_path / f"d{i}.jpg"
        Image.fromarray(255 - im).resize((140, 140)).convert("RGB").save(f, quality=80)
        arr = load_image(f)
        assert arr.shape == (28, 28) and arr.dtype == np.uint8
        assert clf.predict(arr).indices[0] == clf.predict(im).indices[0]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, message", [
    (np.zeros((28, 27), np.uint8), r"expected one 28x28 image or a batch shaped \(N, 28, 28\) or \(N, 1, 28, 28\); "
                                   r"got shape \(28, 27\)"),
    (np.zeros((2, 3, 28, 28), np.uint8), r"\(N, 1, 28, 28\); got shape \(2, 3, 28, 28\)"),
    (np.zeros((28, 28, 3), np.uint8), "Colour images"),
    (np.zeros((4, 28, 28, 1), np.uint8), "channels-last"),
    (np.full((28, 28), np.nan, np.float32), "NaN"),
    (np.full((2, 28, 28), np.inf), "NaN or infinite"),
    (np.zeros((0, 28, 28), np.uint8), "empty batch"),
    ([], "empty batch"),
    (np.zeros((28, 28), bool), "got dtype bool"),
    (np.zeros((28, 28), complex), "got dtype complex128"),
    (np.array([None] * 784).reshape(28, 28), "got dtype object"),
    (np.full((28, 28), 300.0), r"0\.\.255 \(got 300\.\.300\)"),
    (np.full((28, 28), -1, np.int16), r"0\.\.255"),
    ([np.zeros((28, 28)), np.zeros((28, 27))], "same shape"),
    ("digit.png", "load_image"),
])
def test_bad_arrays_are_refused_clearly(clf, bad, message):
    with pytest.raises(RuntimeInputError, match=message):
        clf.predict(bad)


def test_float_pixels_in_0_1_warn(clf, data_root):
    x, _ = mnist_test_images(data_root, 1)
    with pytest.warns(UserWarning, match="0..255 scale"):
        clf.predict(x / 255.0)


def test_model_without_metadata_needs_explicit_preprocessing(model, tmp_path, data_root):
    m = onnx.load(str(model))
    meta = {p.key: p.value for p in m.metadata_props}
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(RuntimeInputError, match=r"bare.onnx has no preprocessing metadata \(missing: mean, std, "
                                                r"classes\); pass mean=\.\.\., std=\.\.\., classes=\.\.\."):
        Classifier(bare)
    with pytest.raises(RuntimeInputError, match=r"missing: classes\); pass classes=\.\.\."):
        Classifier(bare, mean=[0.13], std=[0.31])

    x, _ = mnist_test_images(data_root, 64)
    with Classifier(bare, threads=1, mean=json.loads(meta["normalization_mean"]),
                    std=json.loads(meta["normalization_std"]), classes=[str(i) for i in range(10)]) as c, \
            Classifier(model, threads=1) as ref:
        assert c.image_shape == (1, 28, 28)  # from the graph's input shape
        a, b = c.predict(x), ref.predict(x)
        assert (a.indices == b.indices).all() and a.labels == b.labels


@pytest.mark.parametrize("kwargs, message", [
    (dict(std=[0.0]), "std must be positive"),
    (dict(mean=[0.1, 0.2]), "mean has 2 values but the model takes 1 channel"),
    (dict(mean="a"), "mean .* must be a number"),
    (dict(classes="0123456789"), "classes must be a list"),
    (dict(classes=["a", "b"]), "outputs 10 scores but 2 classes"),
    (dict(pixel_scale=float("nan")), "pixel_scale .* must be finite"),
    (dict(provider="tpu"), "provider must be one of"),
])
def test_bad_constructor_arguments(model, kwargs, message):
    with pytest.raises(RuntimeInputError, match=message):
        Classifier(model, **kwargs)


def test_closed_classifier_refuses_to_predict(model, data_root):
    x, _ = mnist_test_images(data_root, 1)
    c = Classifier(model, threads=1)
    c.close()
    c.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        c.predict(x)


# ---------------------------------------------------------------------------- CLI and dependencies
def test_predict_command(model, data_root, tmp_path):
    x, _ = mnist_test_images(data_root, 3)
    files = []
    for i, im in enumerate(x):
        f = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - im).resize((112, 112)).save(f)
        files.append(f)
    r = invoke("predict", *files, "--model", model, "--top", "3")
    assert r.exit_code == 0, r.output
    with Classifier(model) as c:
        p = c.predict(np.stack([load_image(f) for f in files]))
        classes = c.classes
    assert "top 3" in r.output
    for i, f in enumerate(files):
        row = next(line for line in r.output.splitlines() if f.name in line)
        top3 = ", ".join(f"{classes[k]}:{p.probabilities[i, k]:.3f}" for k in np.argsort(-p.probabilities[i])[:3])
        assert f" {p.labels[i]} " in row and f"{p.probabilities[i, p.indices[i]]:.4f}" in row, row
        assert top3 in " ".join(r.output.split()), (top3, r.output)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    r = invoke("predict", files[0], bad, "--model", model)
    assert r.exit_code == 2 and "bad.jpg" in r.output and "Traceback" not in r.output


def test_classifier_never_imports_torch_or_onnx(model, data_root, tmp_path):
    x, _ = mnist_test_images(data_root, 100)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['onnx'] = None\n"  # importing either now raises ImportError
        "import numpy as np\n"
        "import runtime, runtime.classifier, runtime.preprocess\n"
        "assert 'PIL' not in sys.modules, 'Pillow imported at module level'\n"
        f"x = np.load(r'{tmp_path / 'x.npy'}')\n"
        f"with runtime.Classifier(r'{model}', threads=1) as c:\n"
        "    print(c.predict(x).labels[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("['")


# ---------------------------------------------------------------------------- graphs that are not image classifiers


@pytest.mark.parametrize("kind", list(onnx_graphs.NOT_CLASSIFIERS))
def test_models_that_are_not_image_classifiers_are_refused(kind, tmp_path, data_root):
    build, message, _ = onnx_graphs.NOT_CLASSIFIERS[kind]
    path = onnx_graphs.save(build(), tmp_path / f"{kind}.onnx")
    with pytest.raises(RuntimeInputError, match=message):
        Classifier(path)
    x, _ = mnist_test_images(data_root, 1)
    image = tmp_path / "digit.png"
    Image.fromarray(255 - x[0]).save(image)
    r = invoke("predict", image, "--model", path)
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and out.startswith(f"error: {kind}.onnx ") and "Traceback" not in out, r.output


def test_two_outputs_are_fine_when_the_metadata_names_the_scores(tmp_path, data_root):
    m = onnx_graphs.two_outputs_unnamed()
    onnx.helper.set_model_props(m, onnx_graphs.META)  # now with output_name = "Y"
    x, _ = mnist_test_images(data_root, 3)
    with Classifier(onnx_graphs.save(m, tmp_path / "named.onnx")) as c:
        assert c.output_name == "Y" and c.predict(x).logits.shape == (3, 10)


def test_fixed_batch_models_run_in_steps_of_their_batch(model, tmp_path, data_root):
    x, _ = mnist_test_images(data_root, 4)
    with Classifier(model, threads=1) as ref:
        expected = ref.predict(x)
    one = onnx_graphs.with_fixed_batch(model, tmp_path / "b1.onnx", 1)
    with Classifier(one, threads=1) as c:
        assert c.fixed_batch == 1
        got = c.predict(x)  # four calls of one image
    assert (got.indices == expected.indices).all()
    np.testing.assert_allclose(got.logits, expected.logits, atol=1e-5)
    two = onnx_graphs.with_fixed_batch(model, tmp_path / "b2.onnx", 2)
    with Classifier(two, threads=1) as c:
        assert (c.predict(x).indices == expected.indices).all()
        with pytest.raises(RuntimeInputError, match=r"b2.onnx takes exactly 2 images per call .* got 3"):
            c.predict(x[:3])
    images = []
    for i, im in enumerate(x[:2]):
        images.append(tmp_path / f"d{i}.png")
        Image.fromarray(255 - im).resize((56, 56)).save(images[-1])
    r = invoke("predict", *images, "--model", one)  # two images through a batch-1 model
    assert r.exit_code == 0 and "d0.png" in r.output and "d1.png" in r.output, r.output
    r = invoke("predict", images[0], "--model", two)
    assert r.exit_code == 2 and "b2.onnx takes exactly 2 images per call" in " ".join(r.output.split())


def test_failures_while_running_are_runtime_input_errors(tmp_path):
    from onnx import helper as h
    from onnx import numpy_helper

    g = onnx_graphs
    shape = numpy_helper.from_array(np.array([2, 784], np.int64), "shape")
    reshapes_to_two = g._model([h.make_node("Reshape", ["X", "shape"], ["F"]), h.make_node("MatMul", ["F", "W"], ["Y"])],
                               [g._x()], [g._y()], [g._weights(), shape])  # says (N, 10), works for N = 2 only
    averages_the_batch = g._model([*g._head("X", "L"), h.make_node("ReduceMean", ["L"], ["Y"], axes=[0], keepdims=1)],
                                  [g._x()], [g._y()], [g._weights()])  # says (N, 10), returns (1, 10)
    three = np.zeros((3, 28, 28), np.uint8)
    with Classifier(g.save(reshapes_to_two, tmp_path / "r.onnx")) as c:
        assert len(c.predict(three[:2])) == 2
        with pytest.raises(RuntimeInputError, match=r"onnxruntime could not run .*r.onnx on X float32\[3, 1, 28, 28\]"):
            c.predict(three)
    with Classifier(g.save(averages_the_batch, tmp_path / "m.onnx")) as c:
        with pytest.raises(RuntimeInputError, match=r"m.onnx returned shape \[1, 10\] for 3 images"):
            c.predict(three)


@pytest.mark.parametrize("threads", [-1, 1025, 10**9, 1.5, "2", True])
def test_absurd_thread_counts_are_refused(model, threads):
    with pytest.raises(RuntimeInputError, match="threads must be an integer from 0"):
        Classifier(model, threads=threads)
