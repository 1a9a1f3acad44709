"""One digit inside the network, and what one backprop step on it does.

`prepare_digit` turns any picture of a digit into what the network expects (MNIST's own
recipe); `explain` runs it through the model layer by layer and backpropagates, all with the
engine's Tensor and backward — nothing here differentiates by hand. Computing only: the
pictures are drawn by `plots.plot_explanation`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .nn import Dropout, Linear, Module, ReLU, Sequential, cross_entropy
from .optim import SGD
from .tensor import Tensor, grad, no_grad

SIDE = 28  # MNIST digits are 28x28, the ink scaled to fit a BOX x BOX square, and its centre
BOX = 20  # of mass CENTRE px from the top and left edges: the middle of pixel (14, 14),
CENTRE = 14.5  # where the average MNIST digit's centre of mass lies


# ----------------------------------------------------------------------------- the digit


def prepare_digit(image: Any) -> np.ndarray:
    """A (28, 28) float32 digit in [0, 1], white ink on black, made the way MNIST was made.

    `image` is a 2-D array of any size and value range (uint8 0-255, float, bool), either
    dark ink on light paper or light on dark (the border decides), or a path to a PNG/JPEG
    (transparency composited on white, colour turned grey). The ink is cropped, its longer
    side scaled to 20 px (anti-aliased, aspect kept), and placed in 28x28 with its centre of
    mass in the middle. Raises ValueError for a blank image, a wrong shape or a non-image file.
    """
    a = _read_image(image) if isinstance(image, (str, os.PathLike)) else _as_2d(image)
    a = _normalized(a)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 0.5:  # light paper: make the ink the bright part, as in MNIST
        a, border = 1.0 - a, 1.0 - border
    background = float(np.median(border))
    a = np.clip((a - background) / max(a.max() - background, 1e-12), 0.0, 1.0)
    rows, cols = np.nonzero(a > 0.1)
    if rows.size == 0:
        raise ValueError("the image is blank: no ink stands out from the background")
    ink = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = BOX / max(ink.shape)  # output pixels per input pixel
    total = ink.sum()
    cy = (ink.sum(axis=1) * np.arange(ink.shape[0])).sum() / total + 0.5  # centre of mass,
    cx = (ink.sum(axis=0) * np.arange(ink.shape[1])).sum() / total + 0.5  # pixel edges at 0, 1, ..
    # the input point that lands on the canvas centre: the centre of mass, unless that would
    # push the ink over an edge of the canvas
    half = CENTRE / scale
    cy = float(np.clip(cy, ink.shape[0] - (SIDE - CENTRE) / scale, half))
    cx = float(np.clip(cx, ink.shape[1] - (SIDE - CENTRE) / scale, half))
    pad = int(np.ceil(SIDE / scale)) + 1  # room around the ink, so the box below stays inside
    padded = np.pad(ink, pad).astype(np.float32)
    box = (cx + pad - half, cy + pad - half, cx + pad - half + SIDE / scale,
           cy + pad - half + SIDE / scale)
    resized = Image.fromarray(padded).resize((SIDE, SIDE), Image.Resampling.LANCZOS, box=box)
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # Lanczos rings past the range
    if out.max() <= 0:
        raise ValueError("the image is blank: no ink is left at 28x28 pixels")
    return out


def _read_image(path: str | os.PathLike) -> np.ndarray:
    """Grey levels in [0, 1] of a picture file, transparent parts as white paper."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
                grey = Image.alpha_composite(paper, img.convert("RGBA")).convert("L")
            else:
                grey = img.convert("L")
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image (expected a PNG or JPEG): {e}") from None
    return np.asarray(grey, dtype=np.float64) / 255.0


def _as_2d(image: Any) -> np.ndarray:
    raw = np.asarray(image)
    if raw.ndim != 2:
        raise ValueError(f"a digit image must be a 2-D array (height, width) or a file path, "
                         f"got shape {raw.shape}")
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"a digit image must hold numbers, got dtype {raw.dtype}")
    if min(raw.shape) < 2:
        raise ValueError(f"a digit image must be at least 2x2 pixels, got shape {raw.shape}")
    a = raw.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the image contains NaN or infinite values")
    return a / 255.0 if raw.dtype == np.uint8 else a


def _normalized(a: np.ndarray) -> np.ndarray:
    """Stretch the values to [0, 1]; refuse an image with (almost) no contrast."""
    lo, hi = float(a.min()), float(a.max())
    # in a known range ([0, 1], or uint8 scaled to it) less than 5 % contrast is blank paper
    if hi - lo <= (0.05 if lo >= 0 and hi <= 1 else 0.0):
        raise ValueError(f"the image is blank: all values lie in [{lo:.3g}, {hi:.3g}]")
    return (a - lo) / (hi - lo)


# ----------------------------------------------------------------------------- explanation


@dataclass
class LayerActivity:
    """What one Linear layer computed for the digit."""

    name: str  # e.g. "Linear(784→128)"
    pre: np.ndarray  # (out,) the weighted sums x @ W + b; for the last layer, the logits
    post: np.ndarray | None  # (out,) after ReLU for a hidden layer; None for the output layer


@dataclass
class AfterStep:
    """One SGD step on this digit alone, taken on a copy of the model."""

    lr: float
    loss_before: float  # cross-entropy against the label before the step ...
    loss_after: float  # ... and after it
    probs: np.ndarray  # (10,) probabilities after the step
    weight_change: np.ndarray  # (784, hidden) new minus old weights of the first layer


@dataclass
class Explanation:
    """A digit's way through the network. Plain NumPy arrays, floats and ints only;
    `to_dict()` gives the same as JSON-ready lists."""

    input: np.ndarray  # (28, 28) float32 in [0, 1], the digit as the network sees it
    layers: list[LayerActivity]  # one per Linear layer, input to output
    probs: np.ndarray  # (10,) softmax of the logits
    prediction: int  # argmax of probs
    label: int | None  # the true label, if given
    target: int  # the class saliency and gradients refer to: label if given, else prediction
    loss: float  # cross-entropy against target
    saliency: np.ndarray  # (28, 28) d log p(target) / d pixel: > 0 brighter pushes toward target
    grad_norms: dict[str, float]  # parameter name ("layers.0.weight") -> norm of d loss / d param
    after_step: AfterStep | None  # only when a label is given

    def to_dict(self, weight_change: bool = True) -> dict[str, Any]:
        """Plain lists, floats and ints for json.dumps. The first layer's weight change is
        784 x hidden numbers (megabytes of JSON for a big layer): weight_change=False drops it."""
        d = _jsonable(self)
        if d["after_step"] is not None and not weight_change:
            del d["after_step"]["weight_change"]
        return d


def explain(model: Module, image: Any, label: int | None = None, lr: float = 0.1) -> Explanation:
    """Run one digit through `model` (in eval mode) and backpropagate from it.

    `image` is anything `prepare_digit` takes; a 784-vector or a 28x28 float array already
    in [0, 1] is used as is. The model passed in is never changed: its weights, `.grad`s and
    train/eval mode are left alone, and the SGD step of `after_step` runs on a deep copy.
    """
    layers = _layers(model)
    params = model.parameters()
    n_classes = next(m for m in reversed(layers) if isinstance(m, Linear)).out_features
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) \
                or not 0 <= label < n_classes:
            raise ValueError(f"label must be an integer class in [0, {n_classes}), got {label!r}")
        label = int(label)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    digit = _network_input(image)

    x = Tensor(digit.reshape(1, -1).astype(params[0].dtype), requires_grad=True)
    activity, logits = _forward(layers, x)
    logp = logits.log_softmax(axis=1)
    probs = np.exp(logp.data[0])
    prediction = int(probs.argmax())
    target = prediction if label is None else label
    saliency = grad(logp[0, target], [x], retain_graph=True)[0]
    assert saliency is not None  # the logits always depend on the input
    loss = cross_entropy(logits, [target])
    names = [name for name, _ in model.named_parameters()]
    grads = grad(loss, params)
    grad_norms = {n: float(np.linalg.norm(g.data)) if g is not None else 0.0
                  for n, g in zip(names, grads)}
    return Explanation(input=digit, layers=activity, probs=probs, prediction=prediction,
                       label=label, target=target, loss=float(loss.item()),
                       saliency=saliency.data.reshape(SIDE, SIDE), grad_norms=grad_norms,
                       after_step=None if label is None else _one_step(model, x.data, label, lr))


def _one_step(model: Module, x: np.ndarray, label: int, lr: float) -> AfterStep:
    """Loss and probabilities after one plain SGD step on this digit, on a copy of the model."""
    twin = copy.deepcopy(model)
    twin.zero_grad()  # the original's leftover .grad must not leak into the step
    layers, params = _layers(twin), twin.parameters()
    before = params[0].data.copy()
    _, logits = _forward(layers, Tensor(x))
    loss = cross_entropy(logits, [label])
    loss.backward()
    SGD(params, lr=lr).step()
    with no_grad():
        _, after = _forward(layers, Tensor(x))
        loss_after = cross_entropy(after, [label]).item()
    return AfterStep(lr=float(lr), loss_before=float(loss.item()), loss_after=float(loss_after),
                     probs=after.softmax(axis=1).data[0], weight_change=params[0].data - before)


def _layers(model: Module) -> list[Module]:
    """The model's layers in order; explain reads activations between them."""
    if not isinstance(model, Sequential) or not any(isinstance(m, Linear) for m in model.layers):
        raise TypeError(f"explain needs a Sequential of Linear/ReLU/Dropout layers such as "
                         f"MLP, got {type(model).__name__}")
    for m in model.layers:
        if not isinstance(m, (Linear, ReLU, Dropout)):
            raise TypeError(f"explain understands Linear, ReLU and Dropout layers, "
                             f"got {type(m).__name__}")
    return list(model.layers)


def _forward(layers: list[Module], x: Tensor) -> tuple[list[LayerActivity], Tensor]:
    """The eval-mode forward (Dropout is the identity), noting each Linear layer's output."""
    activity: list[LayerActivity] = []
    for m in layers:
        if isinstance(m, Dropout):
            continue
        x = m(x)
        if isinstance(m, Linear):
            activity.append(LayerActivity(m.scope_label(), x.data[0].copy(), None))
        elif isinstance(m, ReLU) and activity:
            activity[-1].post = x.data[0].copy()
    return activity, x


def _network_input(image: Any) -> np.ndarray:
    """The (28, 28) float32 digit: used as is when it is already MNIST-shaped in [0, 1]."""
    if not isinstance(image, (str, os.PathLike)):
        a = np.asarray(image)
        if a.shape == (SIDE * SIDE,):
            a = a.reshape(SIDE, SIDE)
        if a.shape == (SIDE, SIDE) and a.dtype.kind == "f" and np.isfinite(a).all() \
                and a.min() >= 0 and a.max() <= 1:
            return a.astype(np.float32)
    return prepare_digit(image)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value

