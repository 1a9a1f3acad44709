"""Every differentiable operation: each op's forward (NumPy) and backward (Tensor ops) side by side.

A backward rule gets the output Tensor and its gradient and returns one gradient per input,
written as if shapes matched (the engine sums broadcast axes away) and in Tensor operations,
so that under `create_graph=True` the gradient is itself recorded and can be differentiated.
Under `no_grad` (the usual backward) those are plain NumPy calls; the few rules on a training
step's hot path compute straight in NumPy then, skipping the per-op overhead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .tensor import Function, _const, _unbroadcast


class Add(Function):
    def forward(ctx, x, y): return x.data + y.data
    def backward(ctx, out, g): return g, g


class Sub(Function):
    def forward(ctx, x, y): return x.data - y.data
    def backward(ctx, out, g): return g, -g


class Neg(Function):
    def forward(ctx, x): return -x.data
    def backward(ctx, out, g): return -g


class Mul(Function):
    def forward(ctx, x, y):
        ctx.save(x, y)
        return x.data * y.data

    def backward(ctx, out, g):
        x, y = ctx.saved
        return (g * y if x.requires_grad else None), (g * x if y.requires_grad else None)


class Div(Function):
    def forward(ctx, x, y):
        ctx.save(x, y)
        return x.data / y.data

    def backward(ctx, out, g):
        x, y = ctx.saved
        gx = g / y
        return gx, (-gx * out if y.requires_grad else None)  # d(x/y)/dy = -(x/y)/y


class Pow(Function):
    def forward(ctx, x, y):
        ctx.save(x, y)
        return x.data ** y.data

    def backward(ctx, out, g):
        # Where y = 0, x ** y is 1 for every x: its d/dx is 0, also at x = 0, where y * x ** (y - 1)
        # would be 0 * inf; there (only) the exponent is shifted to 0. Where x = 0, d/dy of 0 ** y
        # is 0 for y > 0: log(x) counts as 0 there. Constant masks keep the rule differentiable,
        # so second derivatives stay finite too (and exact wherever x != 0).
        x, y = ctx.saved
        gx = g * y * x ** (y - 1 + _const((y.data == 0) & (x.data == 0))) if x.requires_grad else None
        if y.requires_grad:
            zero = _const((x.data == 0).astype(x.dtype))
            gy = g * out * (x + zero).log()
        else:
            gy = None
        return gx, gy


class MatMul(Function):
    def forward(ctx, x, y):
        ctx.save(x, y)
        return x.data @ y.data

    def backward(ctx, out, g):
        x, y = ctx.saved
        if x.ndim == 2 and y.ndim == 2:  # the common case, with nothing to reshape or sum
            return (g @ y.T if x.requires_grad else None), (x.T @ g if y.requires_grad else None)
        # 1-D operands act as a row (left) or a column (right) vector, as in NumPy.
        x2 = x.reshape(1, -1) if x.ndim == 1 else x
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        if x.ndim == 1 and y.ndim == 1:
            g2 = g.reshape(1, 1)
        elif x.ndim == 1:
            g2 = g.reshape(*g.shape[:-1], 1, g.shape[-1])
        elif y.ndim == 1:
            g2 = g.reshape(*g.shape, 1)
        else:
            g2 = g
        gx = _unbroadcast(g2 @ y2.transpose(_swap_last(y2.ndim)), x2.shape).reshape(x.shape) \
            if x.requires_grad else None
        gy = _unbroadcast(x2.transpose(_swap_last(x2.ndim)) @ g2, y2.shape).reshape(y.shape) \
            if y.requires_grad else None
        return gx, gy

    def fast_backward(ctx, out, g):
        x, y = ctx.saved
        if x.ndim != 2 or y.ndim != 2:
            return None
        gy = x.data.T @ g if y.requires_grad else None  # x's last, as in Affine.fast_backward
        return (g @ y.data.T if x.requires_grad else None), gy


def _swap_last(ndim: int) -> tuple[int, ...]:
    return (*range(ndim - 2), ndim - 1, ndim - 2)


class Sum(Function):
    def forward(ctx, x, axis, keepdims):
        ctx.save(x.shape, axis, keepdims)
        return x.data.sum(axis=axis, keepdims=keepdims)

    def backward(ctx, out, g):
        shape, axis, keepdims = ctx.saved
        if not keepdims:
            g = g.reshape(_kept_shape(shape, axis))
        return g.broadcast_to(shape)


class Max(Function):
    def forward(ctx, x, axis, keepdims):
        m = x.data.max(axis=axis, keepdims=True)
        mask = x.data == m
        share = (mask / mask.sum(axis=axis, keepdims=True)).astype(x.dtype)  # ties split evenly
        ctx.save(share, axis, keepdims)
        return m if keepdims else np.squeeze(m, axis=axis)

    def backward(ctx, out, g):
        share, axis, keepdims = ctx.saved
        if not keepdims:
            g = g.reshape(_kept_shape(share.shape, axis))
        return g * _const(share)


class Exp(Function):
    def forward(ctx, x): return np.exp(x.data)
    def backward(ctx, out, g): return g * out


class Log(Function):
    def forward(ctx, x):
        ctx.save(x)
        return np.log(x.data)

    def backward(ctx, out, g): return g / ctx.saved[0]


class Sqrt(Function):
    def forward(ctx, x): return np.sqrt(x.data)
    def backward(ctx, out, g): return g / (out * 2)


class ReLU(Function):
    def forward(ctx, x):
        ctx.save(x.data > 0)
        return np.maximum(x.data, 0)

    def backward(ctx, out, g): return g * _const(ctx.saved[0])
    def fast_backward(ctx, out, g): return (g * ctx.saved[0],)


class Tanh(Function):
    def forward(ctx, x): return np.tanh(x.data)
    def backward(ctx, out, g): return g * (1 - out * out)


class Sigmoid(Function):
    def forward(ctx, x):
        # exp of a negative number only, so large |x| neither overflows nor warns
        e = np.exp(-np.abs(x.data))
        return np.where(x.data >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backward(ctx, out, g): return g * out * (1 - out)


class Reshape(Function):
    def forward(ctx, x, shape):
        ctx.save(x.shape)
        return x.data.reshape(shape)

    def backward(ctx, out, g): return g.reshape(ctx.saved[0])


class Transpose(Function):
    def forward(ctx, x, axes):
        ctx.save(axes)
        return x.data.transpose(axes)  # NumPy validates the axes

    def backward(ctx, out, g):  # normalizing negative axes here keeps the forward cheap
        return g.transpose(tuple(np.argsort([a % g.ndim for a in ctx.saved[0]])))


class BroadcastTo(Function):
    def forward(ctx, x, shape):
        return np.broadcast_to(x.data, shape).copy()  # a writable array, not a stride-0 view

    def backward(ctx, out, g): return g  # the engine sums the broadcast axes away


class Cast(Function):
    def forward(ctx, x, dtype):
        ctx.save(x.dtype)
        return x.data.astype(dtype)  # always a copy: in-place updates of one never reach the other

    def backward(ctx, out, g): return g.astype(ctx.saved[0])


class GetItem(Function):
    def forward(ctx, x, idx):
        ctx.save(x.shape, idx)
        return x.data[idx]

    def backward(ctx, out, g):
        shape, idx = ctx.saved
        return ScatterAdd.apply(g, idx=idx, shape=shape)


class ScatterAdd(Function):
    """Place `x` at `idx` in zeros of `shape`; repeated indices add up. The inverse of GetItem."""

    def forward(ctx, x, idx, shape):
        ctx.save(idx)
        out = np.zeros(shape, dtype=x.dtype)
        if _has_array(idx):
            np.add.at(out, idx, x.data)
        else:
            out[idx] = x.data
        return out

    def backward(ctx, out, g): return g[ctx.saved[0]]


class LogSoftmax(Function):
    def forward(ctx, x, axis):
        ctx.save(axis)
        shifted = x.data - x.data.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(ctx, out, g):
        axis = ctx.saved[0]
        return g - out.exp() * g.sum(axis=axis, keepdims=True)


class Softmax(Function):
    def forward(ctx, x, axis):
        ctx.save(axis)
        e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def backward(ctx, out, g):
        axis = ctx.saved[0]
        return out * (g - (g * out).sum(axis=axis, keepdims=True))


class Affine(Function):
    """x @ weight + bias for a 2-D batch x, fused into one op (as PyTorch's addmm): the graph
    then keeps one (N, out) array per layer instead of two, and one node's bookkeeping
    instead of two. nn.Linear uses it for every 2-D batch."""

    def forward(ctx, x, w, b):
        ctx.save(x, w, b)
        return x.data @ w.data + b.data

    def backward(ctx, out, g):
        x, w, b = ctx.saved  # each gradient only where needed: a frozen layer skips its matmul
        return (g @ w.T if x.requires_grad else None, x.T @ g if w.requires_grad else None,
                g.sum(axis=0) if b.requires_grad else None)

    def fast_backward(ctx, out, g):
        x, w, b = ctx.saved  # the input's gradient last: the ReLU before uses it next, while cached
        gw = x.data.T @ g if w.requires_grad else None
        gb = g.sum(axis=0) if b.requires_grad else None
        return (g @ w.data.T if x.requires_grad else None), gw, gb


class CrossEntropy(Function):
    """Mean of -log softmax(logits)[label] over a batch, fused into one op: log-sum-exp keeps
    it finite for any logits, and the gradient is simply (softmax - onehot) / N.
    nn.cross_entropy checks the labels and calls it."""

    def forward(ctx, logits, labels):
        z = logits.data
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(labels))
        ctx.save(logits, labels, rows, np.exp(logp))
        return np.asarray(-(logp[rows, labels].sum() / len(labels)), dtype=z.dtype)  # the mean

    def backward(ctx, out, g):
        logits, labels, rows, probs = ctx.saved
        onehot = np.zeros_like(probs)
        onehot[rows, labels] = 1
        return (logits.softmax(axis=1) - _const(onehot)) * (g / len(labels))

    def fast_backward(ctx, out, g):
        logits, labels, rows, probs = ctx.saved
        d = probs.copy()  # the forward's softmax, not computed again
        d[rows, labels] -= 1
        d *= g / len(labels)
        return (d,)


class Margin(Function):
    """How far class `target` leads the others in each row of logits: its logit minus the
    log-sum-exp of the rest (a smooth maximum). The saliency maps show its gradient, which,
    unlike that of log p(target), does not vanish when the answer is sure."""

    def forward(ctx, logits, target):
        z = logits.data
        rest = np.delete(z, target, axis=1)
        top = rest.max(axis=1, keepdims=True)
        e = np.exp(rest - top)
        total = e.sum(axis=1, keepdims=True)
        share = np.insert(e / total, target, 0, axis=1)  # softmax of the rest; 0 at target
        ctx.save(logits, target, share)
        return z[:, target] - (np.log(total[:, 0]) + top[:, 0])

    def backward(ctx, out, g):  # d/dz_target = 1, d/dz_j = -softmax(rest)_j
        logits, target, share = ctx.saved
        onehot, shut = np.zeros_like(share[0]), np.zeros_like(share[0])
        onehot[target], shut[target] = 1, -np.inf  # the softmax of the rest is 0 at target
        return g.reshape(-1, 1) * (_const(onehot) - (logits + _const(shut)).softmax(axis=1))

    def fast_backward(ctx, out, g):
        logits, target, share = ctx.saved
        d = -share
        d[:, target] = 1
        return (g.reshape(-1, 1) * d,)


def _kept_shape(shape: tuple, axes: tuple) -> tuple:
    """The shape a reduction over `axes` has with keepdims=True."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _has_array(idx: Any) -> bool:
    parts = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, (list, np.ndarray)) for i in parts)
