"""Optimizers and learning-rate schedules.

Updates work on the parameters' arrays in place: they are not part of any graph, and
in-place keeps training at one copy of the weights.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .tensor import Tensor


def _check(name: str, value: float, low: float, high: float = math.inf, *,
           low_open: bool = False, high_open: bool = True) -> float:
    """Refuse a hyperparameter outside its range (NaN and inf included), naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not (ok and math.isfinite(value)):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {span}, got {value}")
    return float(value)


class Optimizer:
    """Keeps each parameter's own state (momenta, step count) in `state[i]`, made on the
    parameter's first update: a parameter without a gradient in a step is left as it is."""

    state_keys: tuple[str, ...] = ()  # what `state[i]` holds once parameter i was updated

    def __init__(self, params: Iterable[Tensor], lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no parameters to optimize")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: parameter {i} is not a Tensor with "
                                 f"requires_grad=True")
        self.lr = _check("lr", lr, 0.0, low_open=True)
        self.steps = 0
        self.state: list[dict[str, np.ndarray]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.steps += 1
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self._update(p.data, p.grad.data, state)

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the step count and each parameter's state, keyed 'name.index', for checkpoints."""
        out = {f"{k}.{i}": np.array(v, copy=True) for i, state in enumerate(self.state)
               for k, v in state.items()}
        out["steps"] = np.array(self.steps)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state_dict()` returned. Everything is checked before anything changes:
        a key this optimizer does not know, a missing one, or a wrong shape is a ValueError."""
        name = type(self).__name__
        if "steps" not in state:
            raise ValueError(f"{name} state has no 'steps' entry (the optimizer's step count)")
        steps = np.asarray(state["steps"])
        if steps.shape != () or steps.dtype.kind not in "iu" or steps < 0:
            raise ValueError(f"{name} state 'steps' must be a non-negative integer, got {steps!r}")
        new: list[dict[str, np.ndarray]] = [{} for _ in self.params]
        for key, value in state.items():
            if key == "steps":
                continue
            k, _, index = key.rpartition(".")
            if k not in self.state_keys or not index.isdigit() or int(index) >= len(self.params):
                known = f" and <{'|'.join(self.state_keys)}>.<i> for i < {len(self.params)}" \
                    if self.state_keys else " only"
                raise ValueError(f"{name} state has an unknown key {key!r}; expected 'steps'{known}")
            i, value = int(index), np.asarray(value)
            expected = () if k == "step" else self.params[i].shape
            if value.shape != expected:
                raise ValueError(f"optimizer state {key} has shape {value.shape}, parameter {i} "
                                 f"has shape {self.params[i].shape}" if k != "step" else
                                 f"optimizer state {key} must be one integer, got shape {value.shape}")
            if k == "step":
                if value.dtype.kind not in "iu" or value < 1:
                    raise ValueError(f"optimizer state {key} must be a positive integer, got {value!r}")
                new[i][k] = np.array(value, dtype=np.int64)
            else:
                if value.dtype.kind not in "iuf":
                    raise ValueError(f"optimizer state {key} must be numbers, got dtype {value.dtype}")
                new[i][k] = value.astype(self.params[i].dtype, copy=True)
        for i, st in enumerate(new):
            if st and set(st) != set(self.state_keys):
                missing = sorted(f"{k}.{i}" for k in set(self.state_keys) - set(st))
                raise ValueError(f"{name} state for parameter {i} is missing {', '.join(missing)}")
        self.steps, self.state = int(steps), new


class SGD(Optimizer):
    """w -= lr * g, with optional (Nesterov) momentum and L2 weight decay."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = _check("momentum", momentum, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = nesterov
        self.state_keys = ("velocity",) if self.momentum else ()

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.momentum:
            v = state.get("velocity")
            if v is None:
                v = state["velocity"] = g.copy()
            else:
                v *= self.momentum
                v += g
            g = g + self.momentum * v if self.nesterov else v
        w -= self.lr * g


class Adam(Optimizer):
    """Per-parameter step sizes from running means of g and g², bias-corrected by each
    parameter's own step count (one that first gets a gradient late starts at step 1)."""

    state_keys = ("step", "m", "v")

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check("betas[0]", betas[0], 0.0, 1.0), _check("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _check("eps", eps, 0.0, low_open=True)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * w
        if not state:
            state.update(step=np.array(0), m=np.zeros_like(w), v=np.zeros_like(w))
        state["step"] += 1
        m, v, t = state["m"], state["v"], int(state["step"])
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        w -= (self.lr / (1 - b1 ** t)) * m / (np.sqrt(v / (1 - b2 ** t)) + self.eps)


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
