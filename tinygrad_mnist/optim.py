"""Optimizers and learning-rate schedules.

Updates work on the parameters' arrays in place: they are not part of any graph, and
in-place keeps training at one copy of the weights.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .tensor import Tensor


class Optimizer:
    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no parameters to optimize")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: parameter {i} is not a Tensor with "
                                 f"requires_grad=True")
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = lr
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p.data, p.grad.data)

    def _update(self, i: int, w: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """The step count and running state (momenta), keyed 'name.index', for checkpoints."""
        state = {f"{k}.{i}": v.copy() for k, buffers in self._buffers().items()
                 for i, v in enumerate(buffers) if v is not None}
        state["steps"] = np.array(self.steps)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state.get("steps", 0))
        for k, buffers in self._buffers().items():
            for i, p in enumerate(self.params):
                if f"{k}.{i}" in state:
                    value = np.asarray(state[f"{k}.{i}"])
                    if value.shape != p.shape:
                        raise ValueError(f"optimizer state {k}.{i} has shape {value.shape}, "
                                         f"parameter {i} has shape {p.shape}")
                    buffers[i] = value.astype(p.dtype, copy=True)

    def _buffers(self) -> dict[str, list]:
        return {}


class SGD(Optimizer):
    """w -= lr * g, with optional (Nesterov) momentum and L2 weight decay."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity: list[np.ndarray | None] = [None] * len(self.params)

    def _update(self, i, w, g):
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.momentum:
            v = self.velocity[i]
            if v is None:
                v = self.velocity[i] = g.copy()
            else:
                v *= self.momentum
                v += g
            g = g + self.momentum * v if self.nesterov else v
        w -= self.lr * g

    def _buffers(self):
        return {"velocity": self.velocity}


class Adam(Optimizer):
    """Per-parameter step sizes from running means of g and g²; bias-corrected."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m: list[np.ndarray | None] = [None] * len(self.params)
        self.v: list[np.ndarray | None] = [None] * len(self.params)

    def _update(self, i, w, g):
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.m[i] is None:
            self.m[i], self.v[i] = np.zeros_like(w), np.zeros_like(w)
        m, v, t = self.m[i], self.v[i], self.steps
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        w -= (self.lr / (1 - b1 ** t)) * m / (np.sqrt(v / (1 - b2 ** t)) + self.eps)

    def _buffers(self):
        return {"m": self.m, "v": self.v}


class StepLR:
    """lr * gamma ** (epoch // step_size): drop the rate by a factor every few epochs."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr, self.step_size, self.gamma = lr, step_size, gamma

    def __call__(self, epoch: float) -> float:
        return self.lr * self.gamma ** (epoch // self.step_size)


class CosineLR:
    """Half a cosine from lr down to min_lr over `epochs`: fast early, gentle at the end."""

    def __init__(self, lr: float, epochs: int, min_lr: float = 0.0):
        self.lr, self.epochs, self.min_lr = lr, epochs, min_lr

    def __call__(self, epoch: float) -> float:
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
