"""Answers to the exercises (tinygrad_mnist.exercises, demos/exercises.ipynb): look only when stuck.

Each class is the notebook's exercise with its backward filled in, written with Tensor ops so
that the gradient can be differentiated again; the notebook's cells tagged `solution` are
these same definitions, word for word. `SOLUTIONS` maps each exercise name to its answer.
It lives beside the notebook, not in the package, whose every Function subclass is in ops.py:

    import sys; sys.path.insert(0, "demos")
    from exercise_solutions import SOLUTIONS
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, no install

from tinygrad_mnist import Function, Tensor  # noqa: E402

__all__ = ["Mul", "Div", "Exp", "Tanh", "Sum", "BroadcastTo", "MatMul", "ReLU", "CrossEntropy",
           "mlp_backward", "SOLUTIONS"]


class Mul(Function):
    def forward(ctx, x: Tensor, y: Tensor) -> np.ndarray:
        ctx.save(x, y)
        return x.data * y.data

    def backward(ctx, out: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        x, y = ctx.saved
        return g * y, g * x


class Div(Function):
    def forward(ctx, x: Tensor, y: Tensor) -> np.ndarray:
        ctx.save(x, y)
        return x.data / y.data

    def backward(ctx, out: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        x, y = ctx.saved
        return g / y, -g * x / (y * y)


class Exp(Function):
    def forward(ctx, x: Tensor) -> np.ndarray:
        return np.exp(x.data)

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        return g * out


class Tanh(Function):
    def forward(ctx, x: Tensor) -> np.ndarray:
        return np.tanh(x.data)

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        return g * (1 - out * out)


class Sum(Function):
    def forward(ctx, x: Tensor, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
        ctx.save(x.shape, axis)
        return x.data.sum(axis=axis, keepdims=keepdims)

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        shape, axis = ctx.saved
        kept = tuple(1 if i in axis else n for i, n in enumerate(shape))
        return g.reshape(kept).broadcast_to(shape)


class BroadcastTo(Function):
    def forward(ctx, x: Tensor, shape: tuple[int, ...]) -> np.ndarray:
        ctx.save(x.shape)
        return np.broadcast_to(x.data, shape).copy()

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        (shape,) = ctx.saved
        g = g.sum(axis=tuple(range(g.ndim - len(shape))))  # the axes added in front
        return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


class MatMul(Function):
    def forward(ctx, x: Tensor, y: Tensor) -> np.ndarray:
        ctx.save(x, y)
        return x.data @ y.data

    def backward(ctx, out: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        x, y = ctx.saved
        return g @ y.T, x.T @ g


class ReLU(Function):
    def forward(ctx, x: Tensor) -> np.ndarray:
        ctx.save(x)
        return np.maximum(x.data, 0)

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        (x,) = ctx.saved
        return g * Tensor(x.data > 0, dtype=x.dtype)  # 0 at x == 0, as in PyTorch


class CrossEntropy(Function):
    def forward(ctx, logits: Tensor, labels: np.ndarray) -> np.ndarray:
        ctx.save(logits, labels)
        z = logits.data - logits.data.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(len(labels)), labels].mean()

    def backward(ctx, out: Tensor, g: Tensor) -> Tensor:
        logits, labels = ctx.saved
        onehot = np.zeros(logits.shape)
        onehot[np.arange(len(labels)), labels] = 1.0
        return (logits.softmax(axis=1) - Tensor(onehot)) * (g / len(labels))


def mlp_backward(x: np.ndarray, labels: np.ndarray, W1: np.ndarray, b1: np.ndarray,
                 W2: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, ...]:
    n = len(x)
    pre = x @ W1 + b1
    h = np.maximum(pre, 0)
    logits = h @ W2 + b2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    dlogits = probs.copy()
    dlogits[np.arange(n), labels] -= 1.0
    dlogits /= n
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(axis=0)
    dh = dlogits @ W2.T
    dpre = dh * (pre > 0)
    dW1 = x.T @ dpre
    db1 = dpre.sum(axis=0)
    return dW1, db1, dW2, db2


SOLUTIONS: dict[str, Any] = {"mul": Mul, "div": Div, "exp": Exp, "tanh": Tanh, "sum": Sum,
                             "broadcast": BroadcastTo, "matmul": MatMul, "relu": ReLU,
                             "cross_entropy": CrossEntropy, "mlp": mlp_backward}
