"""One digit's way through the network, drawn as a flowchart: the pixels, each hidden layer's
activations, the ten outputs, the saliency, and what one backprop step on it does. The numbers
come from `explain.explain`; this module only draws them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .explain import Explanation
from .plots import WRONG_COLOR, no_ticks, panel_text, save_figure


def plot_explanation(explanation: Explanation, path: str | os.PathLike) -> Path:
    """One digit's way through the network, left to right like a flowchart: the pixels, each
    hidden layer's activations, the ten outputs, the saliency, and (with a label) what one
    backprop step on this digit does. `explanation` comes from `explain.explain`."""
    return save_figure(_explanation_figure(explanation), path)


def _explanation_figure(e: Explanation) -> Figure:
    """Panels in one row with arrows between them; each caption says what to look at."""
    hidden = [layer for layer in e.layers if layer.post is not None]
    n_panels = 3 + len(hidden) + (e.after_step is not None)
    ratios = [r for _ in range(n_panels) for r in (1.0, 0.16)][:-1]
    fig = Figure(figsize=(3.5 * n_panels + 0.5, 6.6), layout="constrained")
    axes = fig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    panels, arrows = list(axes[::2]), list(axes[1::2])
    for ax in arrows:
        ax.set_axis_off()
        ax.annotate("", xy=(1, 0.5), xytext=(0, 0.5), xycoords="axes fraction",
                    arrowprops={"arrowstyle": "-|>", "lw": 2.5, "color": "0.45", "mutation_scale": 25})
    target, pred = e.target, e.prediction
    names = iter(panels)

    ax = next(names)
    ax.imshow(e.input, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    no_ticks(ax)
    panel_text(ax, "1. the digit goes in", "784 pixel brightnesses (28 × 28):\n"
                "white = ink = 1, black = 0")

    for i, layer in enumerate(hidden):
        ax = next(names)
        post = np.asarray(layer.post, dtype=float)
        cols = _grid_columns(post.size)
        grid = np.full(cols * math.ceil(post.size / cols), np.nan)
        grid[:post.size] = post
        ax.imshow(grid.reshape(-1, cols), cmap="gray", vmin=0, vmax=max(float(post.max()), 1e-12),
                  interpolation="nearest")
        ax.set_facecolor("#dde6f0")
        no_ticks(ax)
        active = int(np.count_nonzero(post > 0))
        panel_text(ax, f"{i + 2}. hidden layer {i + 1}: {post.size} neurons",
                    f"one square per neuron, brighter =\nmore active. Each adds up weighted\n"
                    f"{'pixels' if i == 0 else 'activations'} + a bias; ReLU turns a\nnegative "
                    f"sum to 0 (black).\n{active} of {post.size} neurons fire")

    ax = next(names)
    _probability_bars(ax, e.probs, pred, e.label)
    verdict = "" if e.label is None else \
        (" — right" if pred == e.label else f" — wrong, it is a {e.label}")
    panel_text(ax, f"{len(hidden) + 2}. ten output neurons",
                f"softmax turns them into\nprobabilities; the highest is the\nprediction: "
                f"{pred}{verdict}")

    ax = next(names)
    bound = float(np.abs(e.saliency).max()) or 1.0
    ax.imshow(e.saliency, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.contour(e.input, levels=[0.5], colors="0.35", linewidths=0.8)
    no_ticks(ax)
    panel_text(ax, f"{len(hidden) + 3}. which pixels mattered for “{target}”",
               f"by backprop, per pixel: the gradient of\n“{target}”'s lead (its output minus a\n"
               f"smooth max of the other nine). Red: more\nink here widens the lead; blue: narrows "
               f"it.\nColours up to ±{bound:.2g}; grey: the outline")

    step = e.after_step
    if step is not None and e.label is not None:
        ax = next(names)
        _probability_bars(ax, step.probs, pred, e.label, before=e.probs)
        panel_text(ax, f"{len(hidden) + 4}. one backprop step toward “{e.label}”",
                    f"backprop gives every weight its share\nof the loss; one SGD step (lr "
                    f"{step.lr:g}) on\nthis digit alone: loss {step.loss_before:.3g} → "
                    f"{max(step.loss_after, 0.0) + 0.0:.3g}.\nGrey: before, blue: after. Training "
                    f"\naverages a batch of digits, so each\none moves the weights far less.")
    title = f"How the network reads one digit: predicted {pred}"
    if e.label is not None:
        title += f", true label {e.label}" + (" (right)" if pred == e.label else " (a mistake)")
    fig.suptitle(title, fontsize=17)
    return fig


def _probability_bars(ax: Axes, probs: np.ndarray, pred: int, label: int | None,
                      before: np.ndarray | None = None) -> None:
    """Horizontal bars, digit 0 at the top; the prediction and the true label are marked.
    With `before`, grey bars show the probabilities before and blue ones after a step."""
    digits = np.arange(len(probs))
    if before is None:
        ax.barh(digits, probs, height=0.7, color=["#1f77b4" if d == pred else "0.7" for d in digits])
    else:
        ax.barh(digits - 0.2, before, height=0.4, color="0.72")
        ax.barh(digits + 0.2, probs, height=0.4, color="#1f77b4")
    wrong = label is not None and pred != label
    for d in digits:
        marks = (["prediction"] if d == pred else []) + (["true label"] if d == label else [])
        if before is None:
            text = f"{probs[d]:.0%}" + (f"  ← {' and '.join(marks)}" if marks else "")
        elif marks:
            text = f"{before[d]:.0%} → {probs[d]:.0%}  ← " + \
                ("true label" if d == label else "the prediction before")
        else:
            continue
        ax.text(max(probs[d], 0 if before is None else before[d]) + 0.03, int(d), text, va="center",
                fontsize=10.5, color=WRONG_COLOR if wrong and marks else "black")
    ax.set_yticks(digits)
    ax.set_ylim(len(probs) - 0.5, -0.5)
    ax.set_xlim(0, 1.75)
    ax.set_xticks([0, 0.5, 1])
    ax.set_xticklabels(["0", "50%", "100%"])
    ax.set_ylabel("digit")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _grid_columns(n: int) -> int:
    """Columns of a near-square grid for n squares: an exact rectangle when n has a divisor
    near its square root (32 -> 4 x 8, 512 -> 16 x 32), else a square with a few left blank."""
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n // rows if 2 * rows >= math.isqrt(n) else math.ceil(math.sqrt(n))
