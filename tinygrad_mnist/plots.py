"""Pictures of a training run: learning curves, predictions, confusion matrix, mistakes, weights.
(One digit's way through the network is drawn by explain_plot.py.)

Figures are built as plain `matplotlib.figure.Figure` objects rendered by Agg, never through
pyplot: no global figure registry to leak or close, no display needed, and safe to call from
any thread. Each `plot_*` function writes its PNG atomically (temporary file in the same
directory, then `os.replace`), so a crash never leaves a half-written picture behind, and
returns the path. The `_*_figure` helpers return the unsaved Figure so tests can inspect it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .data import SIDE
from .files import atomic_writer, picture_format

WRONG_COLOR = "#d62728"  # red: a misclassified digit
RIGHT_COLOR = "black"
_HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


# --------------------------------------------------------------------------- public API

def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts (n_classes, n_classes) int64: row = true label, column = predicted label."""
    labels, preds = _check_classes(labels, preds, n_classes)
    flat = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def plot_learning_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch, train against validation: shows over- and under-fitting.

    Rows need "epoch" (1-based), "train_loss", "train_acc", "val_loss", "val_acc" (accuracies
    in [0, 1]); other keys such as "lr" and "seconds" are ignored. A value of None (say, no
    validation set) leaves a gap in its line.
    """
    return save_figure(_learning_curves_figure(history), path)


def plot_digits(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                title: str | None = None, ncols: int = 8) -> Path:
    """A grid of digits, each titled with its label: what the data looks like."""
    return save_figure(_digits_figure(images, labels, title, ncols), path)


def plot_augmented(images: np.ndarray, versions: list[np.ndarray], moves: list[np.ndarray],
                   path: str | os.PathLike) -> Path:
    """Training digits (top row) and the distorted copies the network sees in later epochs (one
    row per epoch, each titled with its distortion): augmentation made visible. `moves` are
    the rows of `augment.epoch_moves` that made each version: (dy, dx) shifts, or affine /
    elastic rows (turn, scale, shear, dy, dx, field, variant)."""
    return save_figure(_augmented_figure(images, versions, moves), path)


def _augmented_figure(images: np.ndarray, versions: list[np.ndarray],
                      moves: list[np.ndarray]) -> Figure:
    rows = [_check_images(images)] + [_check_images(v) for v in versions]
    width = {np.shape(m)[-1] for m in moves} if moves else {2}
    if any(r.shape != rows[0].shape for r in rows) or len(moves) != len(versions) or \
            len(width) != 1 or width - {2, 7} or any(len(m) != len(rows[0]) for m in moves):
        raise ValueError(f"every version must have the originals' shape {rows[0].shape} and "
                         f"one row of moves per digit: a (dy, dx) shift, or 7 affine numbers")
    captions = [""] * len(rows[0]) + [_move_caption(m) for epoch in moves for m in epoch]
    if width == {2}:
        most = max((int(np.abs(m).max()) for m in moves), default=0)
        what = (f"moves each training digit by up to {most} pixel{'s' * (most != 1)} "
                f"(arrows: pixels down/up, right/left)")
    else:
        bent = any(m[5] >= 0 for epoch in moves for m in epoch)
        what = ("turns, scales, slants and moves each training digit a little"
                + (", and bends it" if bent else "") + " (↻/↺ turn, × size)")
    title = (f"What the network trains on: every epoch {what}\n"
             f"new pictures, same labels, so it cannot just memorise them")
    return _tiles_figure(np.concatenate(rows), captions, len(rows[0]), title, size=1.0,
                         row_labels=["original"] + [f"epoch {r}" for r in range(1, len(rows))],
                         centre_lines=True)


def _move_caption(move: np.ndarray) -> str:
    if len(move) == 2:
        dy, dx = (int(v) for v in move)
        parts = [f"{'↓' if dy > 0 else '↑'}{abs(dy)}" if dy else "",
                 f"{'→' if dx > 0 else '←'}{abs(dx)}" if dx else ""]
        return " ".join(p for p in parts if p) or "not moved"
    turn = float(np.degrees(move[0]))
    return f"{'↻' if turn >= 0 else '↺'}{abs(turn):.0f}° ×{move[1]:.2f}" + (" bent" if move[5] >= 0 else "")


def plot_predictions(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                     path: str | os.PathLike, probs: np.ndarray | None = None,
                     title: str | None = None, ncols: int = 8) -> Path:
    """A grid of digits titled "true 7 · pred 7", mistakes in red with a red frame.

    `probs` (N,), if given, is the confidence of each prediction, shown as " (99%)".
    """
    return save_figure(_predictions_figure(images, labels, preds, probs, title, ncols), path)


def plot_confusion_matrix(labels: np.ndarray, preds: np.ndarray, path: str | os.PathLike,
                          n_classes: int = 10) -> Path:
    """The confusion matrix with its count in every cell: shows which digits get mixed up."""
    return save_figure(_confusion_figure(labels, preds, n_classes), path)


def plot_confident_mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                            path: str | os.PathLike, k: int = 16) -> Path:
    """The k mistakes the model was surest of: often mislabelled or truly ambiguous digits.

    `probs` (N, n_classes) are softmax outputs; the prediction is their argmax.
    """
    images = _check_images(images)
    labels, probs = _check_probs(labels, probs, len(images))
    chosen = _confident_mistake_indices(labels, probs, k)
    if len(chosen) == 0:
        return save_figure(_message_figure(f"no mistakes: all {len(labels)} predictions are right"), path)
    preds = probs.argmax(axis=1)
    n_wrong = int(np.count_nonzero(preds != labels))
    title = f"the {len(chosen)} most confident mistakes (of {n_wrong} in {len(labels)})"
    fig = _predictions_figure(images[chosen], labels[chosen], preds[chosen],
                              probs[chosen, preds[chosen]], title, ncols=8)
    return save_figure(fig, path)


def plot_first_layer_weights(weight: np.ndarray, path: str | os.PathLike,
                             n: int | None = 64) -> Path:
    """The first n hidden units' input weights as 28x28 images: the strokes each unit looks for.

    `weight` is the first Linear layer's (784, H) matrix (stored in x out); n=None shows all H.
    """
    return save_figure(_weights_figure(weight, n), path)


# --------------------------------------------------------------------------- figures

def _learning_curves_figure(history: list[dict]) -> Figure:
    """Two panels, loss and accuracy (%), each with train and validation lines."""
    cols = _check_history(history)
    epochs = cols["epoch"]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, scale, ylabel in ((loss_ax, "loss", 1, "loss"), (acc_ax, "acc", 100, "accuracy (%)")):
        ax.plot(epochs, cols[f"train_{key}"] * scale, "o-", ms=4, label="train")
        ax.plot(epochs, cols[f"val_{key}"] * scale, "s-", ms=4, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)  # else one epoch gets ticks 0.95..1.05
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    last = cols["val_acc"][-1]
    if np.isfinite(last):
        fig.suptitle(f"after epoch {int(epochs[-1])}: validation accuracy {last:.2%}")
    return fig


def _predictions_figure(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                        probs: np.ndarray | None = None, title: str | None = None,
                        ncols: int = 8) -> Figure:
    """The grid behind `plot_predictions`; returned unsaved so its caption colours can be checked."""
    images = _check_images(images)
    labels = _check_vector("labels", labels, len(images))
    preds = _check_vector("preds", preds, len(images))
    if probs is not None:
        probs = _check_vector("probs", probs, len(images))
    captions = [f"true {int(t)} · pred {int(p)}" + ("" if probs is None else f" ({probs[i]:.0%})")
                for i, (t, p) in enumerate(zip(labels, preds))]
    return _tiles_figure(images, captions, ncols, title, wrong=labels != preds, size=1.3)


def _digits_figure(images: np.ndarray, labels: np.ndarray, title: str | None,
                   ncols: int) -> Figure:
    images = _check_images(images)
    labels = _check_vector("labels", labels, len(images))
    return _tiles_figure(images, [f"label {int(v)}" for v in labels], ncols, title, size=1.05,
                         fontsize=9)


def _tiles_figure(images: np.ndarray, captions: list[str], ncols: int, title: str | None, *,
                  wrong: np.ndarray | None = None, row_labels: list[str] | None = None,
                  centre_lines: bool = False, size: float = 1.2, fontsize: float = 8) -> Figure:
    """Digits in a grid, each `size` inches wide with its caption above and a frame (red and
    thick where `wrong`), dark ink on white paper. All of it is one image on one axes, with the
    figure sized around it: one axes per digit and a layout engine cost far more to draw."""
    ncols = min(_check_positive_int("ncols", ncols), len(images))
    nrows = math.ceil(len(images) / ncols)
    inch = size / SIDE  # inches per pixel
    gap, band = 6, math.ceil(1.8 * fontsize / 72 / inch)  # pixels between tiles, for a caption
    width, height = ncols * (SIDE + gap) - gap, nrows * (band + SIDE)
    mosaic = np.full((height, width), np.nan)  # NaN: drawn as white paper
    corners = [(r * (band + SIDE) + band, c * (SIDE + gap))
               for r, c in (divmod(i, ncols) for i in range(len(images)))]
    for (y, x), image in zip(corners, images):
        mosaic[y:y + SIDE, x:x + SIDE] = image
    left, right, bottom = (0.45 if row_labels else 0.1), 0.1, 0.1
    top = 0.15 + 0.25 * (title.count("\n") + 1) if title else 0.05
    fig_w, fig_h = left + width * inch + right, top + height * inch + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width * inch / fig_w, height * inch / fig_h))
    ax.imshow(mosaic, cmap=colormaps["gray_r"].with_extremes(bad="white"), vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    marked = np.zeros(len(images), bool) if wrong is None else np.asarray(wrong, bool)
    for (y, x), caption, bad in zip(corners, captions, marked):
        color = WRONG_COLOR if bad else RIGHT_COLOR
        ax.text(x + SIDE / 2, y - 1.5, caption, ha="center", va="bottom", fontsize=fontsize,
                color=color, fontweight="bold" if bad else "normal")
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), SIDE, SIDE, fill=False, clip_on=False,
                               edgecolor=WRONG_COLOR if bad else "lightgray", lw=2.5 if bad else 0.8))
    if centre_lines:  # the frame's centre lines, to see a digit move
        segments = [[(x - 0.5, y + 13.5), (x + 27.5, y + 13.5), (np.nan, np.nan),
                     (x + 13.5, y - 0.5), (x + 13.5, y + 27.5), (np.nan, np.nan)] for y, x in corners]
        xs, ys = np.array([p for seg in segments for p in seg]).T
        ax.plot(xs, ys, color="tab:blue", lw=0.5, alpha=0.4)
    for r, label in enumerate(row_labels or []):
        ax.text(-4, r * (band + SIDE) + band + SIDE / 2, label, rotation=90, ha="right",
                va="center", fontsize=10)
    if title:
        fig.suptitle(title, y=1 - 0.08 / fig_h, va="top", fontsize=11)
    return fig


def _confusion_figure(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> Figure:
    """Counts as a heat map with numbers, white on dark cells and black on light ones."""
    counts = confusion_matrix(labels, preds, n_classes)
    total = counts.sum()
    if total == 0:
        raise ValueError("labels is empty: there is no confusion matrix to plot")
    fig = Figure(figsize=(1.0 + 0.6 * n_classes, 0.6 + 0.6 * n_classes), layout="constrained")
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues", vmin=0)
    fontsize = 9 if n_classes <= 10 else 7
    for (row, col), count in np.ndenumerate(counts):
        ink = "white" if count > counts.max() / 2 else ("lightgray" if count == 0 else "black")
        ax.text(col, row, str(count), ha="center", va="center", color=ink, fontsize=fontsize)
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"confusion matrix: accuracy {np.trace(counts) / total:.2%} of {total}")
    return fig


def _weights_figure(weight: np.ndarray, n: int | None) -> Figure:
    """One 28x28 tile per unit, each coloured symmetrically around 0 on its own scale so the sign
    is visible, laid out in one image (one imshow, not one axes per unit, which draws slowly)."""
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.shape[0] != SIDE * SIDE:
        raise ValueError(f"weight must be (784, H), the first Linear layer's in x out matrix, "
                         f"got shape {weight.shape}")
    if weight.shape[1] == 0:
        raise ValueError("weight has no columns (H = 0): there are no units to plot")
    hidden = weight.shape[1]
    n = hidden if n is None else min(_check_positive_int("n", n), hidden)
    mosaic = weight_mosaic(weight[:, :n])
    ncols = (mosaic.shape[1] + 1) // (SIDE + 1)
    fig = Figure(figsize=(max(0.9 * ncols, 7.0), 0.9 * mosaic.shape[0] / (SIDE + 1) + 0.7),
                 layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(f"first-layer weights of units 0-{n - 1} of {hidden}, one 28x28 tile each (left "
                 f"to right, top to bottom)\nred = positive, blue = negative, each tile on its "
                 f"own scale", fontsize=10)
    return fig


def weight_mosaic(weight: np.ndarray) -> np.ndarray:
    """Each column of `weight` (784, n) as a 28x28 tile divided by its largest |weight|, tiles in
    a near-square grid separated by NaN (drawn as white) lines."""
    n = weight.shape[1]
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    bounds = np.abs(weight).max(axis=0)
    tiles = (weight / np.where(bounds > 0, bounds, 1.0)).T.reshape(n, SIDE, SIDE)
    mosaic = np.full((nrows * (SIDE + 1) - 1, ncols * (SIDE + 1) - 1), np.nan)
    for unit, tile in enumerate(tiles):  # n tiles of 784 pixels: a loop over units is cheap
        r, c = divmod(unit, ncols)
        mosaic[r * (SIDE + 1):r * (SIDE + 1) + SIDE, c * (SIDE + 1):c * (SIDE + 1) + SIDE] = tile
    return mosaic


def panel_text(ax: Axes, heading: str, caption: str) -> None:
    ax.set_title(heading, fontsize=14, fontweight="bold", loc="left")
    ax.set_xlabel(caption, fontsize=12, loc="left", labelpad=8)


def no_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _message_figure(message: str) -> Figure:
    """A small picture that only says `message`, where the usual plot would be empty."""
    fig = Figure(figsize=(5, 1.5))
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    return fig


# --------------------------------------------------------------------------- selection

def _confident_mistake_indices(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the (at most) k wrong predictions with the highest predicted probability."""
    k = _check_positive_int("k", k)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:k]]


# --------------------------------------------------------------------------- saving

def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` to `path`, atomically, in the format its extension names (.png, .jpg, .svg,
    .pdf; anything else is refused, so a file's name never lies about its content)."""
    fmt = picture_format(path, flag="path")
    with atomic_writer(path) as f:
        fig.savefig(f, format=fmt, dpi=110)
    return Path(path)


# --------------------------------------------------------------------------- input checks

def _check_images(images: np.ndarray) -> np.ndarray:
    """Images as (N, 28, 28), accepting the flat (N, 784) rows the model sees."""
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == SIDE * SIDE:
        images = images.reshape(-1, SIDE, SIDE)
    elif not (images.ndim == 3 and images.shape[1:] == (SIDE, SIDE)):
        raise ValueError(f"images must be (N, 784) or (N, 28, 28), got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("images is empty: there is nothing to plot")
    return images


def _check_positive_int(name: str, value: int) -> int:
    """A count such as a number of columns: a (NumPy or Python) integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_vector(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """A 1-D array of length n, one entry per image."""
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must be 1-D with one entry per image ({n},), "
                         f"got shape {values.shape}")
    return values


def _check_classes(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer class ids in [0, n_classes), labels and preds of the same length."""
    n_classes = _check_positive_int("n_classes", n_classes)
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.ndim != 1 or preds.shape != labels.shape:
        raise ValueError(f"labels and preds must be 1-D of the same length, "
                         f"got shapes {labels.shape} and {preds.shape}")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integer class ids, got dtype {values.dtype}")
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes}), "
                             f"got values from {values.min()} to {values.max()}")
    return labels.astype(np.int64), preds.astype(np.int64)


def _check_probs(labels: np.ndarray, probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """labels (n,) and probs (n, n_classes), one row of class probabilities per image."""
    labels = _check_vector("labels", labels, n)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"probs must be (N, n_classes) with one row per image (N = {n}), "
                         f"got shape {probs.shape}")
    return labels, probs


def _check_history(history: list[dict]) -> dict[str, np.ndarray]:
    """The history rows as one float array per key; None (no value) becomes NaN, a gap."""
    if not history:
        raise ValueError("history is empty: need at least one epoch's row to plot")
    for i, row in enumerate(history):
        missing = [key for key in _HISTORY_KEYS if key not in row]
        if missing:
            raise ValueError(f"history row {i} lacks {missing}; each row needs {list(_HISTORY_KEYS)}")
    return {key: np.array([row[key] for row in history], dtype=float) for key in _HISTORY_KEYS}
