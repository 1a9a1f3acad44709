"""The MLP with hand-written NumPy forward and backward: no graph at all, the floor for a NumPy engine.

Same layout as `tinygrad_mnist.nn.MLP` (weight stored (in, out), ReLU between layers, mean
softmax cross-entropy), so it can start from the engine's state_dict and do the same work.
"""
from __future__ import annotations

import numpy as np

Params = list[tuple[np.ndarray, np.ndarray]]  # (weight (in, out), bias (out,)) per layer


def params_from_state_dict(state: dict[str, np.ndarray]) -> Params:
    """Pair up an MLP state_dict's arrays (weight, bias, weight, bias, ... in layer order), copied."""
    arrays = [a.copy() for a in state.values()]
    return list(zip(arrays[0::2], arrays[1::2]))


def forward(params: Params, x: np.ndarray) -> np.ndarray:
    """Logits, without keeping anything for a backward pass (evaluation)."""
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = np.maximum(x, 0)
    return x


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Mean cross-entropy of the batch and its gradient for every (weight, bias)."""
    acts, masks = [x], []
    for i, (w, b) in enumerate(params):
        z = acts[-1] @ w + b
        if i < len(params) - 1:
            masks.append(z > 0)
            z = np.maximum(z, 0)
        acts.append(z)
    shifted = acts[-1] - acts[-1].max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    loss = -logp[rows, y].mean()

    dz = np.exp(logp)  # softmax - onehot, over the batch mean
    dz[rows, y] -= 1
    dz *= np.float32(1 / len(y))
    grads: Params = []
    for i in reversed(range(len(params))):
        grads.append((acts[i].T @ dz, dz.sum(axis=0)))
        if i:
            dz = (dz @ params[i][0].T) * masks[i - 1]
    return float(loss), grads[::-1]


def sgd_step(params: Params, grads: Params, lr: float) -> None:
    for (w, b), (gw, gb) in zip(params, grads):
        w -= lr * gw
        b -= lr * gb


def sgd_momentum_step(params: Params, grads: Params, velocity: list[np.ndarray | None], lr: float,
                      momentum: float, nesterov: bool, weight_decay: float) -> None:
    """The engine's `optim.SGD` update, op for op, so the two stay bit-identical: L2 weight
    decay added to the gradient (biases too), the velocity started at the first gradient (as
    PyTorch does), and with Nesterov the step along g + momentum * velocity.

    `velocity` holds one array (or None before the first step) per weight and bias, in order."""
    flat_params = [a for pair in params for a in pair]
    flat_grads = [a for pair in grads for a in pair]
    for i, (w, g) in enumerate(zip(flat_params, flat_grads)):
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            v = velocity[i]
            if v is None:
                v = velocity[i] = g.copy()
            else:
                v *= momentum
                v += g
            g = g + momentum * v if nesterov else v
        w -= lr * g
