"""The contenders, behind one small interface, and the training loop they all share.

Every contender starts from the same weights (the engine's `MLP(sizes, seed)`), sees the same
float32 batches in the same order (`epoch_order`), and does the same SGD arithmetic (plain by
default; momentum, Nesterov and L2 weight decay as the engine's `optim.SGD` computes them when
asked), so the only thing that differs between them is how the forward and backward passes
are computed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from tinygrad_mnist import Tensor, no_grad
from tinygrad_mnist.augment import distort, epoch_moves
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.optim import SGD
from tinygrad_mnist.seeding import epoch_order

from . import numpy_mlp
from .numpy_mlp import Params

CONTENDERS = ("engine", "numpy", "tensorflow", "torch")


class Trainer(Protocol):
    def step(self, x: np.ndarray, y: np.ndarray) -> None:
        """One SGD step on the batch."""

    def grads(self, x: np.ndarray, y: np.ndarray) -> Params:
        """The loss gradient for every (weight, bias), as NumPy, without updating anything."""

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Forward pass only (evaluation)."""

    def load(self, params: Params) -> None:
        """Set the weights and clear the optimizer's momenta (to undo a warm-up)."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of the following steps (a schedule calls it every step)."""


def initial_params(sizes: list[int], seed: int) -> Params:
    """The engine MLP's initial weights: the one starting point every contender copies."""
    return numpy_mlp.params_from_state_dict(MLP(sizes, seed=seed).state_dict())


def augmented_batches(x: np.ndarray, y: np.ndarray, seed: int, epoch: int, batch: int,
                      max_shift: int, first: int = 0, stop: int | None = None,
                      augment: str = "shift") -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches first..stop-1 of an epoch: `epoch_order` cut into batches, each image distorted
    by `augment.epoch_moves(augment, seed, epoch)`, as `train` does. A function of its
    arguments alone, so every contender's process builds bit-identical batches, and a slice of
    an epoch equals the same batches of the whole epoch."""
    order = epoch_order(seed, epoch, len(x))
    moves = epoch_moves(augment, seed, epoch, len(x), max_shift)
    starts = range(0, len(order), batch)[first:stop]
    return [(x[order[i:i + batch]] if moves is None else
             distort(x[order[i:i + batch]], moves[i:i + batch], augment), y[order[i:i + batch]])
            for i in starts]


def run_epoch(trainer: Trainer, x: np.ndarray, y: np.ndarray, order: np.ndarray,
              batch: int) -> tuple[float, int]:
    """Train one epoch in `order`; returns (wall seconds, steps)."""
    start = time.perf_counter()
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        trainer.step(x[idx], y[idx])
    return time.perf_counter() - start, -(-len(order) // batch)


def accuracy(trainer: Trainer, x: np.ndarray, y: np.ndarray, chunk: int = 2000) -> float:
    hits = sum(int((trainer.logits(x[i:i + chunk]).argmax(axis=1) == y[i:i + chunk]).sum())
               for i in range(0, len(x), chunk))
    return hits / len(x)


class EngineTrainer:
    """This engine, used the way its README shows: MLP, cross_entropy, SGD."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.model = MLP([params[0][0].shape[0]] + [w.shape[1] for w, _ in params])
        self.opt = SGD(self.model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                       weight_decay=weight_decay)
        self.load(params)

    def step(self, x, y):
        self.opt.zero_grad()
        loss = cross_entropy(self.model(Tensor(x)), y)
        loss.backward()
        self.opt.step()

    def grads(self, x, y):
        self.model.zero_grad()
        cross_entropy(self.model(Tensor(x)), y).backward()
        g = [p.grad.data for p in self.model.parameters()]
        return list(zip(g[0::2], g[1::2]))

    def logits(self, x):
        with no_grad():
            return self.model(Tensor(x)).data

    def load(self, params):
        names = [name for name, _ in self.model.named_parameters()]
        self.model.load_state_dict(dict(zip(names, [a for pair in params for a in pair])))
        self.opt.load_state_dict({"steps": np.array(0)})  # no momenta, step count 0

    def set_lr(self, lr):
        self.opt.lr = lr


class NumpyTrainer:
    """The hand-written forward and backward of `numpy_mlp`: no graph, the floor."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.load(params)

    def step(self, x, y):
        _, grads = numpy_mlp.loss_and_grads(self.params, x, y)
        if self.momentum or self.weight_decay:
            numpy_mlp.sgd_momentum_step(self.params, grads, self.velocity, self.lr, self.momentum,
                                        self.nesterov, self.weight_decay)
        else:
            numpy_mlp.sgd_step(self.params, grads, self.lr)

    def grads(self, x, y):
        return numpy_mlp.loss_and_grads(self.params, x, y)[1]

    def logits(self, x):
        return numpy_mlp.forward(self.params, x)

    def load(self, params):
        self.params = [(w.copy(), b.copy()) for w, b in params]
        self.velocity: list[np.ndarray | None] = [None] * (2 * len(params))

    def set_lr(self, lr):
        self.lr = lr


class TensorFlowTrainer:
    """TensorFlow's custom training loop: a tf.function around a GradientTape step.

    The update is written out rather than Keras' SGD, whose Nesterov form and (decoupled)
    weight decay compute something else than the engine's and PyTorch's SGD."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        import tensorflow as tf

        self.tf, self.momentum, self.nesterov, self.weight_decay = tf, momentum, nesterov, weight_decay
        self.lr = tf.Variable(lr, dtype=tf.float32, trainable=False)  # a Variable: no retracing
        self.vars = [tf.Variable(a) for pair in params for a in pair]
        self.velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.vars]
        batch_spec = (tf.TensorSpec([None, params[0][0].shape[0]], tf.float32),
                      tf.TensorSpec([None], tf.int64))  # any batch size: the last one is smaller
        self._step = tf.function(self._step_fn, input_signature=batch_spec)
        self._grads = tf.function(self._grads_fn, input_signature=batch_spec)
        self._logits = tf.function(self._forward, input_signature=batch_spec[:1])

    def _forward(self, x):
        for i in range(0, len(self.vars), 2):
            x = x @ self.vars[i] + self.vars[i + 1]
            if i < len(self.vars) - 2:
                x = self.tf.nn.relu(x)
        return x

    def _grads_fn(self, x, y):
        with self.tf.GradientTape() as tape:
            loss = self.tf.reduce_mean(self.tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=self._forward(x)))
        return tape.gradient(loss, self.vars)

    def _step_fn(self, x, y):
        for w, v, g in zip(self.vars, self.velocity, self._grads_fn(x, y)):
            if self.weight_decay:
                g = g + self.weight_decay * w
            if self.momentum:  # v starts at 0, so its first value is g, as the engine's
                v.assign(self.momentum * v + g)
                g = g + self.momentum * v if self.nesterov else v
            w.assign_sub(self.lr * g)

    def step(self, x, y):
        self._step(x, y)

    def grads(self, x, y):
        g = [t.numpy() for t in self._grads(x, y)]
        return list(zip(g[0::2], g[1::2]))

    def logits(self, x):
        return self._logits(x).numpy()

    def load(self, params):
        for w, v, a in zip(self.vars, self.velocity, [a for pair in params for a in pair]):
            w.assign(a)
            v.assign(self.tf.zeros_like(v))

    def set_lr(self, lr):
        self.lr.assign(lr)


class TorchTrainer:
    """PyTorch's usual loop: nn.Sequential, F.cross_entropy, optim.SGD."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        import torch

        self.torch = torch
        layers: list = []
        for w, _ in params:
            layers += [torch.nn.Linear(*w.shape), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                   nesterov=nesterov, weight_decay=weight_decay)
        self.load(params)

    def _loss(self, x, y):
        return self.torch.nn.functional.cross_entropy(self.model(self.torch.from_numpy(x)),
                                                      self.torch.from_numpy(y))

    def step(self, x, y):
        self.opt.zero_grad()
        self._loss(x, y).backward()
        self.opt.step()

    def grads(self, x, y):
        self.opt.zero_grad()
        self._loss(x, y).backward()
        linears = self.model[0::2]  # torch keeps weight as (out, in): transpose to (in, out)
        return [(m.weight.grad.numpy().T, m.bias.grad.numpy()) for m in linears]

    def logits(self, x):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x)).numpy()

    def load(self, params):
        with self.torch.no_grad():
            for m, (w, b) in zip(self.model[0::2], params):
                m.weight.copy_(self.torch.from_numpy(w.T))
                m.bias.copy_(self.torch.from_numpy(b))
        self.opt.state.clear()  # momentum buffers start again from the next gradient

    def set_lr(self, lr):
        for group in self.opt.param_groups:
            group["lr"] = lr


TRAINERS: dict[str, Callable[..., Trainer]] = {
    "engine": EngineTrainer, "numpy": NumpyTrainer,
    "tensorflow": TensorFlowTrainer, "torch": TorchTrainer,
}


def make_trainer(name: str, params: Params, lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> Trainer:
    """A fresh trainer that starts from a copy of `params`; thread counts are set by the caller."""
    return TRAINERS[name](params, lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)
