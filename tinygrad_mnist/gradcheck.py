"""Prove gradients: compare backward() with central finite differences, element by element.

For a non-scalar output the check uses vector-Jacobian products with random vectors v:
backward(v) must equal the finite difference of sum(f(x) * v), which is what backward
promises. Finite differences need float64; in float32 the rounding error swamps them.
`check_parameters` samples a few weights of a whole model the same way (the run report and
the graph explorer show its rows).
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .grad_mode import no_grad
from .nn import Module
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
        projected = functools.partial(_projected, fn, leaves, v)
        if out.requires_grad:
            analytic = grad(out, [leaves[i] for i in wrt], grad_output=v, retain_graph=True)
        else:  # the graph says out does not depend on the inputs: every derivative is 0
            analytic = [None] * len(wrt)
        for i, a in zip(wrt, analytic):
            leaf = leaves[i]
            arr = np.zeros(leaf.shape) if a is None else a.data
            for j in range(leaf.size):
                numerical = central_difference(projected, leaf.data, j, eps)
                analytical = float(arr.flat[j])
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


def central_difference(f: Callable[[], float], values: np.ndarray, j: int, eps: float) -> float:
    """(f at values[j] + eps  -  f at values[j] - eps) / (2 eps): the derivative of f along
    element j (in flat order) of `values`, an array f reads. It is poked in place, so it must
    be contiguous, and is put back afterwards."""
    flat = values.reshape(-1)
    if not np.shares_memory(flat, values):
        raise ValueError("central_difference needs a contiguous array to poke in place")
    orig = flat[j]
    try:
        flat[j] = orig + eps
        up = f()
        flat[j] = orig - eps
        down = f()
    finally:
        flat[j] = orig
    return (up - down) / (2 * eps)


@dataclass
class ParameterCheck:
    """One weight of a model: the engine's gradient against a central finite difference."""

    parameter: str  # its state_dict key, e.g. "layers.0.weight"
    layer: str  # the module that holds it, by its graph label, e.g. "Linear(784→128)"
    index: tuple[int, ...]
    analytic: float
    numerical: float
    relative_error: float  # |analytic - numerical| / max(|analytic|, |numerical|)


def check_parameters(model: Module, loss: Callable[[Module], Tensor], per_parameter: int = 3,
                     eps: float = 1e-6, seed: int = 0) -> list[ParameterCheck]:
    """Backprop's gradient of `loss(model)` against central finite differences, for a few
    randomly chosen weights of each parameter, on a float64 copy of the model in eval mode
    (the model itself is not changed). Only weights whose gradient is at least 1/1000 of
    the parameter's largest are chosen: a gradient of ~0 is lost in the rounding."""
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.data, p.grad = p.data.astype(np.float64), None
    modules = dict(twin.named_modules())
    named = list(twin.named_parameters())
    analytic = grad(loss(twin), [p for _, p in named])
    rng = np.random.default_rng(seed)
    rows = []
    with no_grad():
        for (name, p), g in zip(named, analytic):
            g_data = np.zeros(p.shape) if g is None else g.data
            large = np.flatnonzero(np.abs(g_data) >= 1e-3 * np.abs(g_data).max())
            pool = large if len(large) >= per_parameter else np.arange(p.size)
            owner = modules[name.rpartition(".")[0]]
            for j in np.sort(rng.permutation(pool)[:per_parameter]):
                numerical = central_difference(lambda: loss(twin).item(), p.data, int(j), eps)
                a = float(g_data.flat[j])
                scale = max(abs(a), abs(numerical))
                rows.append(ParameterCheck(
                    name, owner.scope_label() or type(owner).__name__,
                    tuple(int(i) for i in np.unravel_index(j, p.shape)), a, numerical,
                    abs(a - numerical) / scale if scale else 0.0))
    return rows


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


def _projected(fn: Callable[..., Tensor], leaves: list[Tensor], v: np.ndarray) -> float:
    """sum(fn(leaves) * v): the scalar whose finite difference a vector-Jacobian product is."""
    return float((_call(fn, leaves).data * v).sum())


def _call(fn: Callable[..., Tensor], args: list[Tensor]) -> Tensor:
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"the checked function must return a Tensor, got {type(out).__name__}")
    return out


def _label(i: int, x: Tensor) -> str:
    return f"{i} ({x.name!r})" if x.name else str(i)
