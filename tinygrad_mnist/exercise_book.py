"""The ten exercises that `tinygrad_mnist.exercises` grades: what each one is, and what it knows.

For each op exercise (a `Function` whose backward the learner writes): its cases (shapes,
broadcasting and edge values, and whether finite differences apply), its reference (the same op
in the engine's own terms, which the learner's gradients are compared with), and its known
mistakes, each a hint and the gradients that mistake gives, so the grader can name it. For the
last exercise, a 2-layer MLP's backward by hand in NumPy: its cases, its reference (the engine's
backward through `nn`'s layers) and its known mistakes (a backward by hand with one step wrong).

Only data and reference rules live here; the grading and the diagnosis are in `exercises`, which
imports this module (never the reverse). The answers are in demos/exercise_solutions.py.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import Tensor, grad
from .nn import Linear, cross_entropy

__all__ = ["Mistake", "Case", "OpExercise", "OPS", "MLP_ABOUT", "MLP_PARAMS", "MLP_SHAPES", "MLPCase",
           "MLP_CASES", "MLP_MISTAKES", "mlp_engine", "mlp_by_hand", "grad_arrays"]

# --------------------------------------------------------------------------- the op exercises

Mistake = tuple[str, Callable[..., Sequence[Any]]]  # a hint, and the gradients that mistake gives


@dataclass(frozen=True)
class Case:
    what: str  # how a message names this case
    inputs: tuple[np.ndarray, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    numeric: bool = True  # finite differences apply: no kink within their step of an input


@dataclass(frozen=True)
class OpExercise:
    """A Function exercise. Each mistake is `(hint, wrong)`, where `wrong(g, out, *inputs,
    **options)` gives in NumPy the gradients (None: no opinion) that mistake would return."""

    name: str
    about: str
    formula: str  # the op in the engine's own terms
    inputs: tuple[str, ...]
    reference: Callable[..., Tensor]
    cases: tuple[Case, ...]
    mistakes: tuple[Mistake, ...] = ()
    shape_hint: str = ""  # said when backward's shapes do not line up
    exact_shape: bool = False  # backward must sum over broadcast axes itself (the engine would)


def _rand(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, shape)


def _away_from_0(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """0.5 <= |v| <= 2, either sign: safe to divide by, and far from ReLU's kink."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def _softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _onehot(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    onehot = np.zeros_like(z)
    onehot[np.arange(len(labels)), labels] = 1.0
    return onehot


def _kept(shape: tuple[int, ...], axis: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axis else n for i, n in enumerate(shape))


_MATMUL_SHAPES = ("a matrix product's shapes must line up: for x (N, K) @ y (K, M), g is (N, M), "
                  "d/dx = g @ yᵀ is (N, K) and d/dy = xᵀ @ g is (K, M): a missing transpose?")

OPS = (
    OpExercise(
        "mul", "x * y: the product rule, and what broadcasting does to a gradient", "x * y",
        ("x", "y"), lambda x, y: x * y,
        (Case("x (2, 3) * y (2, 3)", (_rand((2, 3), 1), _rand((2, 3), 2))),
         Case("x (3, 4) * y (4,): y is broadcast over the 3 rows", (_rand((3, 4), 3), _rand((4,), 4))),
         Case("x (2, 1, 3) * y (4, 1): both are broadcast, to (2, 4, 3)",
              (_rand((2, 1, 3), 5), _rand((4, 1), 6))),
         Case("x () * y (2, 3): a single number times a matrix", (np.array(1.5), _rand((2, 3), 7))),
         Case("x and y with zeros", (np.array([0.0, 1.0, -2.0, 0.0]), np.array([3.0, 0.0, 0.5, 0.0])))),
        (("each input's gradient is g times the *other* input: d/dx (x·y) = y, d/dy (x·y) = x",
          lambda g, out, x, y: (g * x, g * y)),)),
    OpExercise(
        "div", "x / y: the quotient rule", "x / y", ("x", "y"), lambda x, y: x / y,
        (Case("x (2, 3) / y (2, 3)", (_rand((2, 3), 11), _away_from_0((2, 3), 12))),
         Case("x (3, 4) / y (3, 1): y is broadcast along each row",
              (_rand((3, 4), 13), _away_from_0((3, 1), 14))),
         Case("x () / y (3,): a single number divided by a vector",
              (np.array(-1.2), _away_from_0((3,), 15))),
         Case("x with zeros, y negative",
              (np.array([0.0, 0.0, 1.5, -1.0]), np.array([-0.5, 2.0, -1.0, -0.8])))),
        (("d/dy (x / y) = −x / y²: y is squared", lambda g, out, x, y: (None, -g * x / y)),
         ("d/dy (x / y) = −x / y²: the x is missing", lambda g, out, x, y: (None, -g / y ** 2)),
         ("d/dx (x / y) = 1 / y: divide g by y, don't multiply", lambda g, out, x, y: (g * y, None))),
        shape_hint="x and y have their own shapes: write each rule as if shapes matched, "
                   "the engine sums the broadcast axes away"),
    OpExercise(
        "exp", "exp(x): the function that is its own derivative", "x.exp()", ("x",), lambda x: x.exp(),
        (Case("x (2, 3)", (_rand((2, 3), 21),)),
         Case("large and small x: −30, −5, 0, 5, 10", (np.array([-30.0, -5.0, 0.0, 5.0, 10.0]),)),
         Case("x (): a single number", (np.array(0.3),))),
        (("d/dx eˣ = eˣ: multiply g by the output (out), not by x", lambda g, out, x: (g * x,)),
         ("d/dx eˣ = eˣ, with no extra factor x",
          lambda g, out, x: (g * out * x,)),
         ("the local derivative eˣ is missing: you passed g through unchanged", lambda g, out, x: (g,)))),
    OpExercise(
        "tanh", "tanh(x): 1 − tanh², from the output", "x.tanh()", ("x",), lambda x: x.tanh(),
        (Case("x (2, 3)", (_rand((2, 3), 31),)),
         Case("saturated and zero: x = −10, −3, 0, 3, 10", (np.array([-10.0, -3.0, 0.0, 3.0, 10.0]),)),
         Case("x (4,)", (_rand((4,), 32),))),
        (("d/dx tanh(x) = 1 − tanh²(x): the output is squared", lambda g, out, x: (g * (1 - out),)),
         ("d/dx tanh(x) = 1 − tanh²(x), with the output tanh(x), not the input x",
          lambda g, out, x: (g * (1 - x * x),)),
         ("d/dx tanh(x) = 1 − tanh²(x): minus, not plus", lambda g, out, x: (g * (1 + out * out),)))),
    OpExercise(
        "sum", "x.sum(axis, keepdims): the gradient is g broadcast back", "x.sum(axis, keepdims)",
        ("x",), lambda x, axis, keepdims: x.sum(axis, keepdims),
        (Case("x (3, 3) summed over axis 1", (_rand((3, 3), 41),), {"axis": (1,), "keepdims": False}),
         Case("x (3, 4) summed over axis 0 with keepdims=True: out is (1, 4)", (_rand((3, 4), 42),),
              {"axis": (0,), "keepdims": True}),
         Case("x (2, 3) summed over every axis: out is a single number", (_rand((2, 3), 43),),
              {"axis": (0, 1), "keepdims": False}),
         Case("x (2, 3, 4) summed over axes 0 and 2: out is (3,)", (_rand((2, 3, 4), 44),),
              {"axis": (0, 2), "keepdims": False})),
        (("put the summed axes back as size 1 (reshape g to the keepdims shape) before broadcasting: "
          "without them g lines up with the wrong axis",
          lambda g, out, x, axis, keepdims: (np.broadcast_to(g, x.shape),)),
         ("a sum passes g unchanged to every element it added up; dividing by their count is mean's "
          "gradient", lambda g, out, x, axis, keepdims: (
              np.broadcast_to(g.reshape(_kept(x.shape, axis)), x.shape) * (out.size / x.size),))),
        shape_hint="reshape g to the keepdims shape (the summed axes as size 1), then broadcast it "
                   "to x's shape"),
    OpExercise(
        "broadcast", "broadcast_to(x, shape): the gradient is summed over the broadcast axes",
        "x.broadcast_to(shape)", ("x",), lambda x, shape: x.broadcast_to(shape),
        (Case("x (3,) to (2, 3): a new leading axis", (_rand((3,), 51),), {"shape": (2, 3)}),
         Case("x (3, 1) to (3, 4): an axis of size 1 stretched", (_rand((3, 1), 52),), {"shape": (3, 4)}),
         Case("x (1, 3) to (2, 4, 3): both at once", (_rand((1, 3), 53),), {"shape": (2, 4, 3)}),
         Case("x () to (2, 2): a single number", (np.array(0.7),), {"shape": (2, 2)}),
         Case("x (2, 3) to (2, 3): nothing is stretched", (_rand((2, 3), 54),), {"shape": (2, 3)})),
        (("every copy of an element sends its gradient back, and they add up: sum over the broadcast "
          "axes, don't average", lambda g, out, x, shape: (g * (x.size / g.size),)),),
        shape_hint="sum g over the axes broadcasting added in front and over those where x has "
                   "size 1 (keepdims=True)",
        exact_shape=True),
    OpExercise(
        "matmul", "x @ y: two products, two transposes", "x @ y", ("x", "y"), lambda x, y: x @ y,
        (Case("x (3, 3) @ y (3, 3)", (_rand((3, 3), 61), _rand((3, 3), 62))),
         Case("x (2, 3) @ y (3, 4)", (_rand((2, 3), 63), _rand((3, 4), 64))),
         Case("x (1, 4) @ y (4, 1): a row times a column", (_rand((1, 4), 65), _rand((4, 1), 66))),
         Case("x (4, 2) @ y (2, 3)", (_rand((4, 2), 67), _rand((2, 3), 68)))),
        (("a missing transpose: d/dx (x @ y) = g @ yᵀ", lambda g, out, x, y: (g @ y, None)),
         ("a missing transpose: d/dy (x @ y) = xᵀ @ g", lambda g, out, x, y: (None, x @ g)),
         ("matrix products do not commute: d/dx = g @ yᵀ (g first), d/dy = xᵀ @ g (g last)",
          lambda g, out, x, y: (y.T @ g, g @ x.T)),
         ("the two gradients are swapped: return (gradient of x, gradient of y), in the order of the "
          "inputs", lambda g, out, x, y: (x.T @ g, g @ y.T))),
        shape_hint=_MATMUL_SHAPES),
    OpExercise(
        "relu", "relu(x): a 0/1 mask, and what happens at 0", "x.relu()", ("x",), lambda x: x.relu(),
        (Case("x (2, 4)", (_away_from_0((2, 4), 71),)),
         Case("x exactly 0 and −0.0, ± the smallest float, and ±1.5",
              (np.array([0.0, -0.0, 5e-324, -5e-324, 1.5, -1.5]),), numeric=False),
         Case("x (3, 5)", (_away_from_0((3, 5), 72),))),
        (("at x = 0 (and −0.0) ReLU has a kink; its gradient there is 0 by convention, here and in "
          "PyTorch: mask with x > 0, not x >= 0", lambda g, out, x: (g * (x >= 0),)),
         ("multiply g by the 0/1 mask (x > 0), not by relu(x) itself", lambda g, out, x: (g * out,)),
         ("the mask is 0 or 1: negative inputs get 0, not −1", lambda g, out, x: (g * np.sign(x),)),
         ("the mask is flipped: g passes where x > 0 and stops where x <= 0",
          lambda g, out, x: (g * (x <= 0),)),
         ("ReLU passes g only where x > 0; you let it through everywhere", lambda g, out, x: (g,)))),
    OpExercise(
        "cross_entropy", "log-softmax + cross-entropy: (softmax − onehot) / N",
        "cross_entropy(logits, labels)", ("logits",), lambda z, labels: cross_entropy(z, labels),
        (Case("logits (4, 3), labels [0, 2, 1, 2]", (_rand((4, 3), 81),),
              {"labels": np.array([0, 2, 1, 2])}),
         Case("one example: logits (1, 5), label 3", (_rand((1, 5), 82),), {"labels": np.array([3])}),
         Case("large logits, ±800: exp overflows unless each row's max is subtracted first",
              (np.array([[800.0, -800.0, 0.0], [-800.0, 800.0, 799.0]]),), {"labels": np.array([1, 2])})),
        (("the softmax is missing: the gradient is (softmax(logits) − onehot) / N, not −onehot / N",
          lambda g, out, z, labels: (-_onehot(z, labels) * g / len(z),)),
         ("the one-hot part is missing: subtract 1 at each row's label",
          lambda g, out, z, labels: (_softmax(z) * g / len(z),)),
         ("the loss is the mean over the N examples: divide by N",
          lambda g, out, z, labels: ((_softmax(z) - _onehot(z, labels)) * g,)),
         ("softmax runs along each row (axis=1, over the classes), not down the columns",
          lambda g, out, z, labels: ((_softmax(z, axis=0) - _onehot(z, labels)) * g / len(z),)))),
)


# --------------------------------------------------------------------------- the MLP by hand

MLP_ABOUT = "a 2-layer MLP's whole backward by hand in NumPy, checked against the engine"
MLP_PARAMS = ("W1", "b1", "W2", "b2")
MLP_SHAPES = ("with x (N, D), W1 (D, H) and W2 (H, C): dW2 = hᵀ @ dlogits, dh = dlogits @ W2ᵀ, "
              "dW1 = xᵀ @ dpre; a missing transpose?")


@dataclass(frozen=True)
class MLPCase:
    what: str
    x: np.ndarray
    labels: np.ndarray
    params: tuple[np.ndarray, ...]  # W1, b1, W2, b2


def _mlp_case(what: str, n: int, seed: int, zero_row: bool = False) -> MLPCase:
    rng = np.random.default_rng(seed)
    d, h, c = 4, 6, 3
    x = rng.standard_normal((n, d))
    b1 = 0.1 * rng.standard_normal(h)
    if zero_row:  # an all-zero example and no bias: its pre-activations are exactly 0
        x[0], b1 = 0.0, np.zeros(h)
    params = (rng.standard_normal((d, h)), b1, rng.standard_normal((h, c)), 0.1 * rng.standard_normal(c))
    return MLPCase(what, x, rng.integers(0, c, n), params)


MLP_CASES = (
    _mlp_case("N = 5 examples, D = 4 inputs, H = 6 hidden units, C = 3 classes", 5, 91),
    _mlp_case("a single example (N = 1)", 1, 92),
    _mlp_case("an all-zero example and b1 = 0: pre-activations exactly 0", 4, 93, zero_row=True),
)


def mlp_engine(case: MLPCase) -> dict[str, np.ndarray]:
    """The reference: the same network as nn's layers, differentiated by the engine, in float64."""
    w1, b1, w2, b2 = case.params
    first = Linear(w1.shape[0], w1.shape[1], dtype=np.float64)
    second = Linear(w2.shape[0], w2.shape[1], dtype=np.float64)
    first.load_state_dict({"weight": w1, "bias": b1})
    second.load_state_dict({"weight": w2, "bias": b2})
    loss = cross_entropy(second(first(Tensor(case.x)).relu()), case.labels)
    return dict(zip(MLP_PARAMS, grad_arrays(grad(loss, first.parameters() + second.parameters()))))


def mlp_by_hand(case: MLPCase, softmax: bool = True, onehot: bool = True, mean: bool = True,
                mask: str = ">") -> dict[str, np.ndarray]:
    """What a backward by hand gives, with one of its steps done wrong (a known mistake)."""
    x, (w1, b1, w2, b2) = case.x, case.params
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    logits = h @ w2 + b2
    probs = _softmax(logits) if softmax else np.zeros_like(logits)
    dlogits = probs - (_onehot(logits, case.labels) if onehot else 0)
    dlogits = dlogits / len(x) if mean else dlogits
    dh = dlogits @ w2.T
    dpre = dh * (pre > 0) if mask == ">" else dh * (pre >= 0) if mask == ">=" else dh
    return {"W1": x.T @ dpre, "b1": dpre.sum(axis=0), "W2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}


MLP_MISTAKES = (
    ("the softmax is missing: dlogits = (softmax(logits) − onehot) / N, not −onehot / N", {"softmax": False}),
    ("the one-hot part is missing: dlogits = (softmax(logits) − onehot) / N", {"onehot": False}),
    ("the loss is the mean over the N examples: dlogits has a 1/N", {"mean": False}),
    ("the ReLU is missing: dpre = dh where pre > 0, and 0 elsewhere", {"mask": ""}),
    ("ReLU at 0: the gradient is 0 where pre is exactly 0 (mask with pre > 0, not pre >= 0)",
     {"mask": ">="}),
)


def grad_arrays(grads: Sequence[Tensor | None]) -> tuple[np.ndarray, ...]:
    """Gradients as arrays; None (an input the output does not depend on) as 0."""
    return tuple(np.zeros(()) if t is None else t.data for t in grads)
