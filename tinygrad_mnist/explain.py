"""One digit inside the network, and what one backprop step on it does.

`explain` runs a digit (prepared by `digit_image.prepare_digit`) through the model layer by
layer and backpropagates, all with the engine's Tensor and backward: nothing here
differentiates by hand. Computing only: the pictures are drawn by `explain_plot.plot_explanation`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .data import SIDE
from .digit_image import network_input
from .grad_mode import no_grad
from .nn import Dropout, Linear, Module, ReLU, Sequential, cross_entropy
from .ops import Margin
from .optim import SGD
from .tensor import Tensor, grad

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
    saliency: np.ndarray  # (28, 28) d margin(target) / d pixel: > 0 brighter pushes toward target
    grad_norms: dict[str, float]  # with a label: parameter name -> norm of d loss / d param
    after_step: AfterStep | None  # only when a label is given

    def to_dict(self, weight_change: bool = True) -> dict[str, Any]:
        """Plain lists, floats and ints for json.dumps. The first layer's weight change is
        784 x hidden numbers (megabytes of JSON for a big layer): weight_change=False drops it."""
        d = _jsonable(self)
        if d["after_step"] is not None and not weight_change:
            del d["after_step"]["weight_change"]
        return d


def explain(model: Module, image: Any, label: int | None = None, lr: float = 0.1) -> Explanation:
    """Run one digit through `model` (in eval mode) and backpropagate from it: to the pixels
    (the saliency, for the label if given, else for the prediction), and with a label to
    every weight (`grad_norms`, and the SGD step of `after_step`).

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
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)) \
            or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    digit = network_input(image)

    x = Tensor(digit.reshape(1, -1).astype(params[0].dtype), requires_grad=True)
    activity, logits = _forward(_layers(model.frozen()), x)  # gradients flow to the pixels only
    logp = logits.log_softmax(axis=1)
    probs = np.exp(logp.data[0])
    prediction = int(probs.argmax())
    target = prediction if label is None else label
    saliency = grad(Margin.apply(logits, target=target)[0], [x])[0]
    assert saliency is not None  # the logits always depend on the input
    with no_grad():
        loss = cross_entropy(logits, [target]).item()
    grad_norms: dict[str, float] = {}
    if label is not None:  # the lesson backprop takes from this digit: every weight's gradient
        _, real = _forward(layers, Tensor(x.data))
        named = list(model.named_parameters())
        grads = grad(cross_entropy(real, [label]), [p for _, p in named])
        grad_norms = {n: float(np.linalg.norm(g.data)) if g is not None else 0.0
                      for (n, _), g in zip(named, grads)}
    return Explanation(input=digit, layers=activity, probs=probs, prediction=prediction,
                       label=label, target=target, loss=float(loss),
                       saliency=saliency.data.reshape(SIDE, SIDE), grad_norms=grad_norms,
                       after_step=None if label is None else _one_step(model, x.data, label, lr))


def sgd_step(model: Module, digit: np.ndarray, label: int, lr: float) -> float:
    """One plain SGD step on one digit, through the engine's backward: the lesson of "this is
    a `label`". Changes `model`'s weights; returns the loss before the step."""
    model.zero_grad()  # a leftover .grad must not leak into the step
    loss = cross_entropy(model(Tensor(digit.reshape(1, -1))), [label])
    loss.backward()
    SGD(model.parameters(), lr=lr).step()
    model.zero_grad()
    return loss.item()


def _one_step(model: Module, x: np.ndarray, label: int, lr: float) -> AfterStep:
    """Loss and probabilities after one plain SGD step on this digit, on a copy of the model."""
    twin = copy.deepcopy(model).eval()
    first = twin.parameters()[0]
    before = first.data.copy()
    loss_before = sgd_step(twin, x, label, lr)
    with no_grad():
        _, after = _forward(_layers(twin), Tensor(x))
        loss_after = cross_entropy(after, [label]).item()
    return AfterStep(lr=float(lr), loss_before=float(loss_before), loss_after=float(loss_after),
                     probs=after.softmax(axis=1).data[0], weight_change=first.data - before)


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

