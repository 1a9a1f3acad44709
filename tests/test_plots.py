"""The pictures: each plot writes a real PNG atomically, marks what it promises, and rejects bad input.

Small synthetic data only (random 28x28 images); no MNIST needed.
"""
import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from tinygrad_mnist import explain_plot, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED, BLACK = to_rgba(plots.WRONG_COLOR), to_rgba(plots.RIGHT_COLOR)


@pytest.fixture
def data():
    """12 random flat images, their labels, and predictions wrong at indices 2 and 5."""
    rng = np.random.default_rng(0)
    images = rng.random((12, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 12)
    preds = labels.copy()
    preds[[2, 5]] = (labels[[2, 5]] + 1) % 10
    return images, labels, preds


def history(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.9 + 0.005 * e, "val_loss": 1.2 / e,
                 "val_acc": 0.88 + 0.005 * e, "lr": 0.1, "seconds": 2.0} for e in range(1, epochs + 1)]


def assert_png(path) -> None:
    """The file starts with the PNG signature and decodes to an RGB(A) image."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and min(pixels.shape[:2]) > 50


def test_every_plot_writes_a_png_creating_its_directory(tmp_path, data):
    images, labels, preds = data
    probs = np.eye(10)[preds] * 0.9 + 0.01
    out = tmp_path / "new" / "dir"
    written = [
        plots.plot_learning_curves(history(3), out / "curves.png"),
        plots.plot_predictions(images, labels, preds, out / "preds.png", probs=probs.max(1), title="t"),
        plots.plot_confusion_matrix(labels, preds, str(out / "confusion.png")),
        plots.plot_confident_mistakes(images, labels, probs, out / "mistakes.png", k=4),
        plots.plot_first_layer_weights(np.random.default_rng(1).normal(size=(784, 5)), out / "w.png"),
    ]
    for name, path in zip(["curves", "preds", "confusion", "mistakes", "w"], written):
        assert path == out / f"{name}.png"
        assert_png(path)
    # atomic writes leave nothing else behind: no temporary files
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, data, monkeypatch):
    _images, labels, preds = data
    path = plots.plot_confusion_matrix(labels, preds, tmp_path / "c.png")
    before = path.read_bytes()

    def broken_savefig(self, f, **kwargs):
        f.write(b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_confusion_matrix(labels, preds, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_confusion_matrix_hand_made_example():
    counts = plots.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), n_classes=3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert counts.dtype == np.int64
    wider = plots.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], n_classes=4)
    np.testing.assert_array_equal(wider[:3, :3], counts)
    assert wider[3].sum() == wider[:, 3].sum() == 0


def test_confusion_matrix_agrees_with_counting_one_by_one():
    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(labels, preds):
        expected[t, p] += 1
    np.testing.assert_array_equal(plots.confusion_matrix(labels, preds), expected)


def test_confusion_figure_labels_axes_and_reports_accuracy():
    fig = plots._confusion_figure(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted label", "true label")
    assert "75.00%" in ax.get_title()
    cells = {t.get_text() for t in ax.texts}
    assert len(ax.texts) == 9 and cells == {"0", "1"}


def _tiles(fig):
    """The captions (text, colour, bold) and frames (edge colour) of a tiles figure, in order."""
    (ax,) = fig.axes
    captions = [(t.get_text(), to_rgba(t.get_color()), t.get_fontweight() == "bold")
                for t in ax.texts if t.get_rotation() == 0]
    return ax, captions, [to_rgba(p.get_edgecolor()) for p in ax.patches]


def test_predictions_mark_mistakes_in_red(data):
    images, labels, preds = data
    fig = plots._predictions_figure(images.reshape(-1, 28, 28), labels, preds, ncols=5)
    ax, captions, frames = _tiles(fig)
    assert len(captions) == len(frames) == 12
    for i, (text, color, bold) in enumerate(captions):
        wrong = i in (2, 5)
        assert text == f"true {labels[i]} · pred {preds[i]}"
        assert color == (RED if wrong else BLACK) and bold == wrong
        assert (frames[i] == RED) == wrong
    assert not ax.axison


def test_tiles_put_each_digit_in_its_place_on_white_paper(data):
    images, labels, preds = data
    fig = plots._predictions_figure(images[:7], labels[:7], preds[:7], probs=np.full(7, 0.994),
                                    ncols=3)
    ax, captions, frames = _tiles(fig)
    assert captions[0][0] == f"true {labels[0]} · pred {preds[0]} (99%)"
    (image,) = ax.images
    assert image.get_cmap().name.startswith("gray_r") and image.get_clim() == (0.0, 1.0)
    mosaic = np.ma.filled(image.get_array(), np.nan)
    digits = images[:7].reshape(-1, 28, 28)
    for i, frame in enumerate(ax.patches):  # each frame surrounds its own digit's pixels
        x, y = (int(v + 0.5) for v in frame.get_xy())
        np.testing.assert_array_equal(mosaic[y:y + 28, x:x + 28], digits[i])
        assert (y, x) > tuple(int(v + 0.5) for v in ax.patches[i - 1].get_xy()[::-1]) or i == 0
    assert np.isnan(mosaic).sum() == mosaic.size - 7 * 784  # the rest is blank paper
    assert len({int(p.get_xy()[1]) for p in ax.patches}) == 3  # 7 digits in rows of 3


def test_augmented_rows_show_each_move_under_its_epoch(data):
    images = data[0][:3].reshape(-1, 28, 28)
    moves = [np.array([[1, 2], [0, 0], [-2, -1]]), np.array([[0, -1], [2, 0], [0, 0]])]
    versions = [np.roll(images, 1, axis=1), np.roll(images, 2, axis=1)]  # any pixels will do
    fig = plots._augmented_figure(images, versions, moves)
    ax, captions, frames = _tiles(fig)
    assert [c[0] for c in captions] == ["", "", "", "↓1 →2", "not moved", "↑2 ←1", "←1", "↓2",
                                        "not moved"]
    assert [t.get_text() for t in ax.texts if t.get_rotation() == 90] == ["original", "epoch 1",
                                                                          "epoch 2"]
    mosaic = np.ma.filled(ax.images[0].get_array(), np.nan)
    for i, frame in enumerate(ax.patches):  # row r holds versions[r - 1], in the given order
        x, y = (int(v + 0.5) for v in frame.get_xy())
        np.testing.assert_array_equal(mosaic[y:y + 28, x:x + 28],
                                      ([images] + versions)[i // 3][i % 3])
    assert "up to 2 pixels" in fig.texts[0].get_text()
    with pytest.raises(ValueError, match="one row of moves per digit"):
        plots._augmented_figure(images, versions, moves[:1])


def test_confident_mistake_indices_pick_the_surest_wrong_predictions():
    labels = np.array([0, 1, 2, 0, 1])
    probs = np.array([[0.9, 0.1, 0.0],    # right
                      [0.7, 0.3, 0.0],    # wrong, 0.7
                      [0.05, 0.95, 0.0],  # wrong, 0.95
                      [0.2, 0.0, 0.8],    # wrong, 0.8
                      [0.0, 1.0, 0.0]])   # right
    np.testing.assert_array_equal(plots._confident_mistake_indices(labels, probs, 2), [2, 3])
    np.testing.assert_array_equal(plots._confident_mistake_indices(labels, probs, 10), [2, 3, 1])
    assert plots._confident_mistake_indices(labels[[0, 4]], probs[[0, 4]], 3).size == 0


def test_confident_mistakes_plot_titles_and_the_no_mistakes_case(tmp_path, data, monkeypatch):
    images, labels, _ = data
    probs = np.full((12, 10), 0.01)
    probs[np.arange(12), labels] = 0.91
    assert_png(plots.plot_confident_mistakes(images, labels, probs, tmp_path / "none.png"))
    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig) or path)
    plots.plot_confident_mistakes(images, labels, probs, tmp_path / "none.png")
    assert [t.get_text() for t in saved[0].texts] == ["no mistakes: all 12 predictions are right"]

    probs[3], probs[7] = 0.0, 0.0
    probs[3, (labels[3] + 1) % 10], probs[3, labels[3]] = 0.97, 0.03
    probs[7, (labels[7] + 2) % 10], probs[7, labels[7]] = 0.6, 0.4
    plots.plot_confident_mistakes(images, labels, probs, tmp_path / "m.png", k=16)
    titles = [text for text, _, _ in _tiles(saved[1])[1]]
    assert titles == [f"true {labels[3]} · pred {(labels[3] + 1) % 10} (97%)",
                      f"true {labels[7]} · pred {(labels[7] + 2) % 10} (60%)"]


@pytest.mark.parametrize("epochs", [1, 4])
def test_learning_curves_plot_loss_and_accuracy_in_percent(epochs):
    fig = plots._learning_curves_figure(history(epochs))
    loss_ax, acc_ax = fig.axes
    rows = history(epochs)
    train_acc, val_acc = (line.get_ydata() for line in acc_ax.lines)
    np.testing.assert_allclose(train_acc, [100 * r["train_acc"] for r in rows])
    np.testing.assert_allclose(val_acc, [100 * r["val_acc"] for r in rows])
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [r["val_loss"] for r in rows])
    for ax in (loss_ax, acc_ax):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]
        assert all(line.get_marker() not in (None, "None", "") for line in ax.lines)
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_first_layer_weights_symmetric_colours_per_unit():
    weight = np.random.default_rng(3).normal(size=(784, 6))
    weight[:, 4] = 0.0  # a dead unit must not break the colour scale
    fig = plots._weights_figure(weight, n=5)
    (image,) = fig.axes[0].images
    assert image.get_clim() == (-1.0, 1.0)
    mosaic = np.ma.filled(image.get_array(), np.nan)
    assert mosaic.shape == (2 * 29 - 1, 3 * 29 - 1)  # 5 tiles in a 2 x 3 grid
    for unit in range(5):
        r, c = divmod(unit, 3)
        tile = mosaic[29 * r:29 * r + 28, 29 * c:29 * c + 28]
        bound = np.abs(weight[:, unit]).max() or 1.0
        np.testing.assert_allclose(tile, weight[:, unit].reshape(28, 28) / bound)
    assert np.isnan(mosaic[28]).all() and np.isnan(mosaic[29:, 2 * 29:]).all()  # gap, empty tile
    assert plots.weight_mosaic(weight).shape == (2 * 29 - 1, 3 * 29 - 1)  # n=None: all 6
    assert "units 0-5 of 6" in plots._weights_figure(weight, n=100).texts[0].get_text()


@pytest.mark.parametrize("call, message", [
    (lambda d, p: plots.plot_predictions(d[0][:, :700], d[1], d[2], p), r"\(N, 784\) or \(N, 28, 28\)"),
    (lambda d, p: plots.plot_predictions(d[0][:0], d[1][:0], d[2][:0], p), "images is empty"),
    (lambda d, p: plots.plot_predictions(d[0], d[1][:5], d[2], p), r"labels must be 1-D .* \(12,\)"),
    (lambda d, p: plots.plot_predictions(d[0], d[1], d[2], p, probs=np.ones(3)), "probs must be"),
    (lambda d, p: plots.plot_predictions(d[0], d[1], d[2], p, ncols=0), "ncols must be a positive"),
    (lambda d, p: plots.plot_confusion_matrix(d[1], d[2][:3], p), "same length"),
    (lambda d, p: plots.plot_confusion_matrix(d[1], d[2] + 10, p), r"preds must lie in \[0, 10\)"),
    (lambda d, p: plots.plot_confusion_matrix(d[1] * 0.5, d[2], p), "labels must be integer"),
    (lambda d, p: plots.plot_confusion_matrix(d[1][:0], d[2][:0], p), "labels is empty"),
    (lambda d, p: plots.plot_confident_mistakes(d[0], d[1], np.ones(12), p),
     r"probs must be \(N, n_classes\)"),
    (lambda d, p: plots.plot_confident_mistakes(d[0], d[1], np.ones((12, 10)), p, k=0), "k must be"),
    (lambda d, p: plots.plot_first_layer_weights(np.ones((10, 784)), p), r"weight must be \(784, H\)"),
    (lambda d, p: plots.plot_first_layer_weights(np.ones((784, 3)), p, n=-1), "n must be a positive"),
    (lambda d, p: plots.plot_learning_curves([], p), "history is empty"),
    (lambda d, p: plots.plot_learning_curves([{"epoch": 1, "train_loss": 1.0}], p), r"lacks \['train_acc'"),
])
def test_bad_input_raises_value_error_and_writes_nothing(tmp_path, data, call, message):
    with pytest.raises(ValueError, match=message):
        call(data, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- plot_explanation


def _explanation(label, hidden=(12, 6)):
    from tinygrad_mnist.explain import explain
    from tinygrad_mnist.nn import MLP
    digit = np.random.default_rng(2).random((28, 28), dtype=np.float32)
    return explain(MLP([784, *hidden, 10], seed=0), digit, label=label)


def _texts(fig) -> str:
    """Every title, axis caption and in-plot text of the figure, joined."""
    parts = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        parts += [ax.get_title(loc="left"), ax.get_xlabel()] + [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def test_explanation_reads_left_to_right_with_a_backprop_step(tmp_path):
    e = _explanation(label=3)
    fig = explain_plot._explanation_figure(e)
    headings = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert headings == ["1. the digit goes in", "2. hidden layer 1: 12 neurons",
                        "3. hidden layer 2: 6 neurons", "4. ten output neurons",
                        "5. which pixels mattered for “3”", "6. one backprop step toward “3”"]
    text = _texts(fig)
    assert "← prediction" in text and "true label 3" in fig._suptitle.get_text()
    assert f"{e.probs[3]:.0%} → {e.after_step.probs[3]:.0%}  ← true label" in text
    n_fired = int((e.layers[0].post > 0).sum())
    assert f"{n_fired} of 12 neurons fire" in text
    saliency_ax = fig.axes[8]
    np.testing.assert_array_equal(saliency_ax.images[0].get_array(), e.saliency)
    lo, hi = saliency_ax.images[0].get_clim()
    assert lo == -hi == -np.abs(e.saliency).max()  # symmetric: white means "no effect"
    assert_png(explain_plot.plot_explanation(e, tmp_path / "explain.png"))


def test_explanation_without_label_has_no_step_panel():
    fig = explain_plot._explanation_figure(_explanation(label=None, hidden=(8,)))
    headings = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert len(headings) == 4 and "backprop step" not in _texts(fig)
    assert "true label" not in _texts(fig)


def test_activation_grid_is_a_rectangle_when_it_can_be():
    assert [explain_plot._grid_columns(n) for n in (32, 512, 256, 16, 10, 31)] == [8, 32, 16, 4, 5, 6]


def test_affine_rows_are_captioned_with_their_turn_and_size(data):
    images = data[0][:2].reshape(-1, 28, 28)
    moves = [np.array([[np.deg2rad(7), 1.06, 0.1, 0.5, -1, -1, 0],
                       [np.deg2rad(-11), 0.93, 0, 0, 0, 12, 3]])]
    fig = plots._augmented_figure(images, [images[::-1]], moves)
    _, captions, _ = _tiles(fig)
    assert [c[0] for c in captions] == ["", "", "↻7° ×1.06", "↺11° ×0.93 bent"]
    assert "turns, scales, slants and moves" in fig.texts[0].get_text()
    assert "bends it" in fig.texts[0].get_text()
