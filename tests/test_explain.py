"""explain and prepare_digit: every number checked against an independent computation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.digit_image import prepare_digit
from tinygrad_mnist.explain import explain
from tinygrad_mnist.nn import MLP, Linear, Sequential
from tinygrad_mnist.tensor import Tensor, grad


def float64_mlp(sizes=(784, 16, 10), seed=0) -> MLP:
    """A random MLP in float64, so finite differences are accurate; biases made non-zero."""
    model = MLP(list(sizes), seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.parameters():
        p.data = p.data.astype(np.float64) + (0.1 * rng.standard_normal(p.shape) if p.ndim == 1 else 0)
    return model


@pytest.fixture
def digit():
    """Random pixels that float32 holds exactly, so explain's float32 input loses nothing."""
    return np.random.default_rng(3).random((28, 28), dtype=np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir, val_size=0)


def numpy_mlp(params, x, label):
    """Forward and hand-written backward of a one-hidden-layer MLP in NumPy: the independent check."""
    w1, b1, w2, b2 = params
    h_pre = x @ w1 + b1
    h = np.maximum(h_pre, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max())
    p /= p.sum()
    dz = p.copy()
    dz[label] -= 1
    dh = (w2 @ dz) * (h_pre > 0)
    grads = [np.outer(x, dh), dh, np.outer(h, dz), dz]
    return h_pre, h, z, p, grads


def test_numbers_agree_with_the_forward(digit):
    model = float64_mlp()
    e = explain(model, digit)
    logits = model(Tensor(digit.reshape(1, 784))).data[0]
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(e.probs, softmax, rtol=1e-12)
    assert e.prediction == int(np.argmax(softmax)) and e.target == e.prediction and e.label is None
    h_pre, h, z, _, _ = numpy_mlp([p.data for p in model.parameters()], digit.ravel(), 0)
    assert [layer.name for layer in e.layers] == ["Linear(784→16)", "Linear(16→10)"]
    np.testing.assert_allclose(e.layers[0].pre, h_pre, rtol=1e-12)
    np.testing.assert_allclose(e.layers[0].post, h, rtol=1e-12)
    np.testing.assert_allclose(e.layers[1].pre, z, rtol=1e-12)
    assert e.layers[1].post is None and e.after_step is None
    np.testing.assert_array_equal(e.input, digit.astype(np.float32))


def test_saliency_is_the_margins_gradient_and_matches_finite_differences(digit):
    model = float64_mlp()
    label = 3
    e = explain(model, digit, label=label)
    assert e.saliency.shape == (28, 28) and e.target == label

    def log_p(x):  # the margin: the label's logit minus the log-sum-exp of the other nine
        z = model(Tensor(x.reshape(1, 784))).data[0]
        return z[label] - np.log(np.exp(np.delete(z, label)).sum())

    strongest = np.argsort(-np.abs(e.saliency).ravel())[:3]
    weakest_nonzero = np.flatnonzero(e.saliency.ravel())[:2]
    for k in [*strongest, *weakest_nonzero]:
        bumped = [digit.ravel().copy() for _ in range(2)]
        bumped[0][k] += 1e-6
        bumped[1][k] -= 1e-6
        numerical = (log_p(bumped[0]) - log_p(bumped[1])) / 2e-6
        assert e.saliency.flat[k] == pytest.approx(numerical, rel=1e-5, abs=1e-9)


def test_after_step_and_grad_norms_match_a_hand_written_sgd_step(digit):
    model = float64_mlp()
    label, lr = 7, 0.05
    params = [p.data.copy() for p in model.parameters()]
    e = explain(model, digit, label=label, lr=lr)
    x = digit.ravel()
    _, _, _, p_before, grads = numpy_mlp(params, x, label)
    names = ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    assert list(e.grad_norms) == names
    for name, g in zip(names, grads):
        assert e.grad_norms[name] == pytest.approx(np.linalg.norm(g), rel=1e-10)
    stepped = [w - lr * g for w, g in zip(params, grads)]
    _, _, _, p_after, _ = numpy_mlp(stepped, x, label)
    step = e.after_step
    np.testing.assert_allclose(step.probs, p_after, rtol=1e-10)
    np.testing.assert_allclose(step.weight_change, -lr * grads[0], rtol=1e-9, atol=1e-15)
    assert step.loss_before == pytest.approx(-np.log(p_before[label]), rel=1e-10)
    assert step.loss_after == pytest.approx(-np.log(p_after[label]), rel=1e-10)
    assert step.loss_after < step.loss_before and step.lr == lr


def test_the_model_passed_in_never_changes(digit):
    model = MLP([784, 32, 16, 10], dropout=0.2, seed=1)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    leftover = Tensor(np.ones((784, 32), np.float32))
    model.parameters()[0].grad = leftover  # a leftover gradient must neither change nor leak
    e1 = explain(model, digit, label=2, lr=0.5)
    e2 = explain(model, digit, label=2, lr=0.5)
    for k, v in model.state_dict().items():
        assert v.tobytes() == before[k].tobytes()
    assert model.parameters()[0].grad is leftover and model.parameters()[1].grad is None
    assert model.training  # still in train mode; explain ran in eval mode (no dropout) ...
    np.testing.assert_array_equal(e1.probs, e2.probs)  # ... so two runs agree exactly
    np.testing.assert_array_equal(e1.after_step.probs, e2.after_step.probs)
    assert len(e1.layers) == 3 and e1.layers[1].post is not None


def test_explanation_turns_into_json(digit):
    e = explain(float64_mlp(), digit, label=1)
    d = json.loads(json.dumps(e.to_dict()))
    assert np.array(d["input"]).shape == (28, 28) and np.array(d["saliency"]).shape == (28, 28)
    assert d["prediction"] == e.prediction and d["label"] == 1
    assert d["probs"] == pytest.approx(e.probs.tolist())
    assert np.array(d["after_step"]["weight_change"]).shape == (784, 16)
    assert d["layers"][1]["post"] is None and len(d["layers"][0]["post"]) == 16
    light = e.to_dict(weight_change=False)
    assert "weight_change" not in light["after_step"] and light["probs"] == d["probs"]
    assert explain(float64_mlp(), digit).to_dict(weight_change=False)["after_step"] is None


def test_input_rules(mnist):
    model = float64_mlp()
    flat = mnist.test_x[0]
    np.testing.assert_array_equal(explain(model, flat).input, flat.reshape(28, 28))
    as_uint8 = (flat.reshape(28, 28) * 255).round().astype(np.uint8)
    prepared = explain(model, as_uint8).input  # not in [0, 1]: goes through prepare_digit
    np.testing.assert_array_equal(prepared, prepare_digit(as_uint8))


@pytest.mark.parametrize("kwargs, message", [
    ({"label": 10}, "label must be an integer class in [0, 10)"),
    ({"label": -1}, "label must be an integer class in [0, 10)"),
    ({"label": 2.0}, "label must be an integer class"),
    ({"label": True}, "label must be an integer class"),
    ({"label": 1, "lr": 0}, "lr must be a positive number, got 0"),
    ({"label": 1, "lr": "0.1"}, "lr must be a positive number, got '0.1'"),  # not a TypeError
])
def test_bad_arguments_are_clear(digit, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        explain(float64_mlp(), digit, **kwargs)


def test_a_model_explain_cannot_read_is_refused(digit):
    with pytest.raises(TypeError, match="Sequential of Linear/ReLU/Dropout"):
        explain(Linear(784, 10), digit)
    with pytest.raises(TypeError, match="understands Linear, ReLU and Dropout"):
        explain(Sequential(Linear(784, 10), Sequential()), digit)


@pytest.fixture(scope="module")
def checkpoint(mnist_dir, tmp_path_factory):
    """A small real model: 3000 digits, one epoch, 784-32-10 (about 83 % right)."""
    from tinygrad_mnist.config import TrainConfig
    from tinygrad_mnist.train import train
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(hidden=(32,), epochs=1, train_limit=3000, val_size=1000)
    train(config, run, data_dir=mnist_dir, progress=False, log=lambda *_: None)
    return run / "checkpoint.npz"


def test_one_step_on_a_real_mistake_moves_toward_the_label(mnist, checkpoint):
    from tinygrad_mnist.checkpoint import load_checkpoint
    from tinygrad_mnist.predict import predict_proba
    model = load_checkpoint(checkpoint).model
    preds = predict_proba(model, mnist.test_x[:500]).argmax(axis=1)
    i = int(np.flatnonzero(preds != mnist.test_y[:500])[0])
    e = explain(model, mnist.test_x[i], label=int(mnist.test_y[i]), lr=0.1)
    assert e.prediction == preds[i] != e.label
    assert e.after_step.probs[e.label] > e.probs[e.label]
    assert e.after_step.loss_after < e.after_step.loss_before


def cli(*args):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tinygrad_mnist.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, env=env, timeout=300)


def test_cli_explains_the_first_mistake_by_default(checkpoint, mnist, mnist_dir, tmp_path):
    from tinygrad_mnist.checkpoint import load_checkpoint
    from tinygrad_mnist.predict import predict_proba
    out = tmp_path / "why.png"
    result = cli("explain", checkpoint, "--out", out, "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    preds = predict_proba(load_checkpoint(checkpoint).model, mnist.test_x).argmax(axis=1)
    first = int(np.flatnonzero(preds != mnist.test_y)[0])
    assert result.stdout.startswith(f"test digit {first}: true label {mnist.test_y[first]}, "
                                    f"predicted {preds[first]} (wrong)")
    assert "<- prediction" in result.stdout and "<- true label" in result.stdout
    assert "one backprop step" in result.stdout
    assert out.read_bytes().startswith(b"\x89PNG")
    again = cli("explain", checkpoint, "--out", out, "--data-dir", mnist_dir, "--index", 0)
    assert again.returncode == 1 and "--overwrite" in again.stderr  # not the command's file
    assert cli("explain", checkpoint, "--out", out, "--data-dir", mnist_dir, "--index", 0,
               "--overwrite").returncode == 0


def test_cli_explains_a_picture_file(checkpoint, mnist, mnist_dir, tmp_path):
    picture = tmp_path / "mine.png"
    Image.fromarray(on_canvas(mnist.test_x[0].reshape(28, 28), 60)).save(picture)
    result = cli("explain", checkpoint, "--image", picture, "--label", mnist.test_y[0],
                 "--out", tmp_path / "e.png", "--data-dir", mnist_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"image {picture}: true label {mnist.test_y[0]}, predicted")


@pytest.mark.parametrize("args, message", [
    (["--index", 10000], "--index must be in [0, 10000) for the test split, got 10000"),
    (["--index", -1], "--index must be in [0, 10000) for the test split, got -1"),
    (["--index", 3, "--label", 10], "label must be an integer class in [0, 10), got 10"),
    (["--image", "missing.png"], "image file not found: missing.png"),
    (["--image", "missing.png", "--index", 3], "give --image or --index, not both"),
])
def test_cli_mistakes_are_one_clear_line(checkpoint, mnist_dir, tmp_path, args, message):
    result = cli("explain", checkpoint, "--out", tmp_path / "e.png", "--data-dir", mnist_dir, *args)
    assert result.returncode == 1
    assert result.stderr.strip() == f"tinygrad-mnist explain: error: {message}"
    assert not (tmp_path / "e.png").exists()


# ----------------------------------------------------------------------------- prepare_digit


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def on_canvas(digit28, size, top=17, left=5, shape=(150, 120)):
    """The digit resized to size x size, dark on light paper, somewhere in a larger canvas."""
    img = Image.fromarray((digit28 * 255).astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    canvas = np.zeros(shape, np.uint8)
    canvas[top:top + size, left:left + size] = np.asarray(img)
    return 255 - canvas


@pytest.mark.parametrize("size", [28, 56, 84])
def test_a_moved_and_rescaled_mnist_digit_comes_back(mnist, size):
    digits = mnist.test_x[:10].reshape(-1, 28, 28)
    scores = [correlation(prepare_digit(on_canvas(d, size)), d) for d in digits]
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.8, scores


def test_output_is_mnist_shaped(mnist):
    out = prepare_digit(on_canvas(mnist.test_x[1].reshape(28, 28), 60))
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.9
    ys, xs = np.nonzero(out > 0.1)
    assert max(np.ptp(ys), np.ptp(xs)) + 1 in (20, 21)  # the longer side fills the 20 px box
    cy = (out.sum(axis=1) * np.arange(28)).sum() / out.sum()
    cx = (out.sum(axis=0) * np.arange(28)).sum() / out.sum()
    assert abs(cy - 14) < 0.5 and abs(cx - 14) < 0.5


def test_polarity_and_value_range_do_not_matter(mnist):
    dark_on_light = on_canvas(mnist.test_x[2].reshape(28, 28), 40)
    reference = prepare_digit(dark_on_light)
    for variant in [255 - dark_on_light, dark_on_light / 255.0, dark_on_light.astype(np.float32) * 3 - 7,
                    (255 - dark_on_light).astype(np.int64)]:
        np.testing.assert_allclose(prepare_digit(variant), reference, atol=1e-5)
    assert prepare_digit(dark_on_light > 128).shape == (28, 28)  # a bool mask works too


def test_png_with_transparency_and_jpeg(mnist, tmp_path):
    digit = mnist.test_x[3].reshape(28, 28)
    grey = on_canvas(digit, 70)
    reference = prepare_digit(grey)
    # black ink on fully transparent *black* pixels: only compositing on white shows the digit
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., 3] = 255 - grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "digit.png")
    np.testing.assert_allclose(prepare_digit(tmp_path / "digit.png"), reference, atol=0.02)
    rgb = np.stack([grey, grey, np.full_like(grey, 255)], axis=-1)  # bluish paper
    Image.fromarray(rgb, "RGB").save(tmp_path / "digit.jpg", quality=85)
    assert correlation(prepare_digit(str(tmp_path / "digit.jpg")), reference) > 0.95


@pytest.mark.parametrize("image, message", [
    (np.zeros((50, 50)), "blank"),
    (np.full((50, 50), 255, np.uint8), "blank"),
    (np.full((50, 50), 0.5) + np.random.default_rng(0).random((50, 50)) * 0.01, "blank"),
    (np.zeros(784), "2-D array"),
    (np.zeros((28, 28, 3)), "2-D array"),
    (np.array([["a", "b"], ["c", "d"]]), "numbers"),
    (np.full((28, 28), np.nan), "NaN"),
])
def test_bad_images_are_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        prepare_digit(image)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        prepare_digit(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="not a readable image"):
        prepare_digit(tmp_path / "notes.png")


def test_a_confidently_right_digit_has_a_saliency_that_is_not_blank(mnist, checkpoint):
    """The gradient of log p(answer) is (1 - p) times something: on a sure answer (p = 1 in
    float32, which most digits of a trained network reach) it is ~1e-33, nothing a picture
    or a 6-decimal JSON reply can show. The margin's gradient stays readable."""
    from tinygrad_mnist.checkpoint import load_checkpoint
    from tinygrad_mnist.predict import predict_proba
    model = load_checkpoint(checkpoint).model
    last = model.parameters()[-2:]
    for p in last:  # the same ranking of the ten outputs, made very sure of itself
        p.data *= 50
    probs = predict_proba(model, mnist.test_x[:200])
    i = int(np.flatnonzero((probs.max(axis=1) == 1.0)
                           & (probs.argmax(axis=1) == mnist.test_y[:200]))[0])
    x = Tensor(mnist.test_x[i:i + 1], requires_grad=True)
    log_p = model(x).log_softmax(axis=1)[0, int(mnist.test_y[i])]
    assert np.abs(grad(log_p, [x])[0].data).max() < 1e-12  # the old map: blank
    e = explain(model, mnist.test_x[i])
    assert e.prediction == mnist.test_y[i] and e.probs.max() == 1.0
    s = np.abs(e.saliency)
    assert s.max() > 0.1 and np.count_nonzero(s > 0.1 * s.max()) >= 30
