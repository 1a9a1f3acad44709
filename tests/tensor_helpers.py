"""Shared helpers of the engine's tests: reproducible inputs and the two-order gradient check."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tinygrad_mnist import Tensor, gradcheck, gradgradcheck


def rand(shape: tuple, low: float = -2.0, high: float = 2.0, seed: int = 0,
         requires_grad: bool = True) -> Tensor:
    """A float64 tensor of uniform values, reproducible."""
    data = np.random.default_rng(seed).uniform(low, high, shape)
    return Tensor(data, requires_grad=requires_grad)


def away_from_zero(shape: tuple, seed: int = 0) -> Tensor:
    """Values with |x| >= 0.2, for ops with a kink at 0 (finite differences straddle it)."""
    rng = np.random.default_rng(seed)
    data = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)
    return Tensor(np.asarray(data), requires_grad=True)  # shape (): a NumPy scalar otherwise


def distinct(shape: tuple, seed: int = 0) -> Tensor:
    """Values without ties (a shuffled, spaced range), for max's gradgradcheck."""
    n = int(np.prod(shape))
    data = np.random.default_rng(seed).permutation(n).reshape(shape) * 0.37 - 1.0
    return Tensor(np.asarray(data, np.float64), requires_grad=True)


def check_grads(fn: Callable[..., Tensor], *inputs: Tensor, **tol: float) -> None:
    """First and second derivatives both match finite differences."""
    assert gradcheck(fn, inputs, **tol)
    assert gradgradcheck(fn, inputs, **tol)


def recorded_nodes(root: Tensor) -> list[Tensor]:
    """Every tensor in root's graph that was produced by a recorded op."""
    out, seen, stack = [], set(), [root]
    while stack:
        t = stack.pop()
        if id(t) in seen or t._ctx is None:
            continue
        seen.add(id(t))
        out.append(t)
        stack.extend(t._ctx.parents)
    return out
