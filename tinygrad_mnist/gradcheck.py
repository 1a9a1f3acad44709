"""Prove gradients: compare backward() with central finite differences, element by element.

For a non-scalar output the check uses vector-Jacobian products with random vectors v:
backward(v) must equal the finite difference of sum(f(x) * v), which is what backward
promises. Finite differences need float64; in float32 the rounding error swamps them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .tensor import Tensor, grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one."""


def gradcheck(fn: Callable[..., Tensor], inputs: Tensor | Sequence[Tensor], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, n_vectors: int = 2, seed: int = 0) -> bool:
    """True if fn's gradients match finite differences for every element of every input
    that requires grad; otherwise raise GradcheckError naming the input, element and values."""
    inputs = _checked(inputs, "gradcheck")
    leaves = [Tensor(x.data.copy(), requires_grad=x.requires_grad, name=x.name) for x in inputs]
    wrt = [i for i, x in enumerate(leaves) if x.requires_grad]
    out = _call(fn, leaves)
    rng = np.random.default_rng(seed)
    for _ in range(n_vectors if out.size > 1 else 1):
        v = rng.standard_normal(out.shape) if out.size > 1 else np.ones(out.shape)
        if out.requires_grad:
            analytic = grad(out, [leaves[i] for i in wrt], grad_output=v, retain_graph=True)
        else:  # the graph says out does not depend on the inputs: every derivative is 0
            analytic = [None] * len(wrt)
        for i, a in zip(wrt, analytic):
            leaf = leaves[i]
            arr = np.zeros(leaf.shape) if a is None else a.data
            flat = leaf.data.reshape(-1)  # a view: poking it perturbs the input in place
            for j in range(flat.size):
                orig = flat[j]
                flat[j] = orig + eps
                f_plus = float((_call(fn, leaves).data * v).sum())
                flat[j] = orig - eps
                f_minus = float((_call(fn, leaves).data * v).sum())
                flat[j] = orig
                numerical, analytical = (f_plus - f_minus) / (2 * eps), float(arr.flat[j])
                if not abs(numerical - analytical) <= atol + rtol * abs(numerical):
                    where = np.unravel_index(j, leaf.shape) if leaf.ndim else ()
                    raise GradcheckError(
                        f"input {_label(i, leaf)} at element {tuple(int(k) for k in where)}: "
                        f"numerical {numerical:.8g}, analytic {analytical:.8g} "
                        f"(|difference| {abs(numerical - analytical):.3g} > "
                        f"atol {atol:g} + rtol {rtol:g} * |numerical|)")
        out = _call(fn, leaves)  # a fresh graph for the next vector
    return True


def gradgradcheck(fn: Callable[..., Tensor], inputs: Tensor | Sequence[Tensor], eps: float = 1e-6,
                  atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0) -> bool:
    """gradcheck of the gradient itself: backward(create_graph=True) must be differentiable
    and right, checked through sum_i <d(f . v)/dx_i, w_i> with random v and w_i."""
    inputs = _checked(inputs, "gradgradcheck")
    rng = np.random.default_rng(seed + 1)
    out_shape = _call(fn, [x.detach() for x in inputs]).shape
    v = rng.standard_normal(out_shape)
    ws = [rng.standard_normal(x.shape) for x in inputs]

    def directional_grad(*xs: Tensor) -> Tensor:
        wrt = [x for x in xs if x.requires_grad]
        out = fn(*xs)
        total = Tensor(0.0, dtype=np.float64)
        if not out.requires_grad:
            return total
        for x, g in zip(wrt, grad(out, wrt, grad_output=v, create_graph=True)):
            if g is not None:
                total = total + (g * ws[xs.index(x)]).sum()
        return total

    return gradcheck(directional_grad, inputs, eps, atol, rtol, n_vectors=1, seed=seed)


def _checked(inputs: Tensor | Sequence[Tensor], who: str) -> list[Tensor]:
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"{who}: input {i} is a {type(x).__name__}, expected a Tensor")
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"{who}: input {_label(i, x)} is {x.dtype}; finite differences need "
                            f"float64 (float32 rounding swamps them): Tensor(data, dtype=np.float64)")
    if not any(x.requires_grad for x in inputs):
        raise ValueError(f"{who}: no input has requires_grad=True, so there is nothing to check")
    return inputs


def _call(fn: Callable[..., Tensor], args: list[Tensor]) -> Tensor:
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"the checked function must return a Tensor, got {type(out).__name__}")
    return out


def _label(i: int, x: Tensor) -> str:
    return f"{i} ({x.name!r})" if x.name else str(i)
