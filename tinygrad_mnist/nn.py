"""Layers and the loss: a PyTorch-shaped Module system on top of Tensor.

A Module finds its parameters by looking at its attributes (Tensors that require grad,
sub-Modules, lists of Modules), so a layer is just a class that sets them in __init__.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .grad_mode import pop_scope, push_scope
from .ops import Affine, CrossEntropy
from .tensor import Tensor, _const


class Module:
    """Base class: parameters, train/eval mode, and a state_dict of plain arrays."""

    training = True

    def forward(self, *args: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Tensor:
        label = self.scope_label()
        if label is None:
            return self.forward(*args)
        token = push_scope(label, owner=self)  # lets the graph picture box this module's ops
        try:
            return self.forward(*args)
        finally:
            pop_scope(token)

    def scope_label(self) -> str | None:
        """The label of this module's box in the graph picture; None for no box."""
        return type(self).__name__

    def children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                yield from ((f"{name}.{i}", m) for i, m in enumerate(value) if isinstance(m, Module))

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (as "") and every module inside it, by path: "layers.0", ..."""
        yield prefix.rstrip("."), self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def frozen(self) -> Module:
        """A copy that shares this module's weight arrays as constants (no gradient): a
        backward through it reaches the input and computes no weight gradient. The copy is
        shallow, so it costs nothing like a deepcopy; a later update of the weights in place
        shows in it too."""
        twin = object.__new__(type(self))  # a shallow copy, as copy.copy but without its cost
        twin.__dict__.update(vars(self))
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                setattr(twin, name, value.detach())
            elif isinstance(value, Module):
                setattr(twin, name, value.frozen())
            elif isinstance(value, (list, tuple)) and any(isinstance(m, Module) for m in value):
                setattr(twin, name, type(value)(m.frozen() if isinstance(m, Module) else m
                                                for m in value))
        return twin

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy arrays into the parameters, all or nothing: every name must match, and every
        array must have its parameter's shape and finite real numbers, before any is copied."""
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict expects a dict of name -> array, got "
                            f"{type(state).__name__}")
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"state_dict does not fit {type(self).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
        new = {name: _checked_parameter(name, state[name], p) for name, p in params.items()}
        for name, p in params.items():
            p.data = new[name]


def _checked_parameter(name: str, value: Any, p: Tensor) -> np.ndarray:
    """`value` as a fresh array of p's dtype, or a ValueError saying why it cannot be p."""
    try:
        array = np.asarray(value.data if isinstance(value, Tensor) else value)
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise ValueError(f"state_dict[{name!r}] is not an array ({e})") from e
    if array.dtype.kind not in "fiu":  # object arrays (None) and strings would become NaN or fail
        raise ValueError(f"state_dict[{name!r}] has dtype {array.dtype}; expected real numbers "
                         f"(float or int) for a {p.dtype} parameter")
    if array.shape != p.shape:
        raise ValueError(f"state_dict[{name!r}] has shape {array.shape}, "
                         f"the model's parameter has shape {p.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: refused just below
        # C order whatever the source's layout: a transposed (F-order) weight would make every
        # in-place optimizer update a strided walk
        array = array.astype(p.dtype, order="C", copy=True)
    if not np.isfinite(array).all():
        raise ValueError(f"state_dict[{name!r}] holds NaN or infinite values (after conversion "
                         f"to {p.dtype}); expected finite numbers")
    return array


class Linear(Module):
    """y = x @ weight + bias, weight stored (in, out) so the forward needs no transpose.

    He/Kaiming init (std sqrt(2/in)) keeps activations' scale steady through ReLU layers.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32):
        sizes = (in_features, out_features)
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
                   for n in sizes):
            raise ValueError(f"Linear expects positive integer in_features and out_features, "
                             f"got {in_features!r} and {out_features!r}")
        rng = rng if rng is not None else np.random.default_rng()
        self.in_features, self.out_features = in_features, out_features
        self.label = f"Linear({in_features}→{out_features})"
        w = rng.standard_normal((in_features, out_features)) * np.sqrt(2.0 / in_features)
        self.weight = Tensor(w.astype(dtype), requires_grad=True, name="weight")
        self.bias = Tensor(np.zeros(out_features, dtype), requires_grad=True, name="bias") \
            if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):  # as PyTorch: no silent conversion of arrays or lists
            raise TypeError(f"{self.scope_label()} expects a Tensor, got {type(x).__name__}; "
                            f"wrap it as Tensor(x)")
        shape = x.data.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"{self.scope_label()} expects inputs with {self.in_features} "
                             f"features in the last axis, got shape {shape}")
        if len(shape) == 2 and self.bias is not None:  # a batch of vectors: the fused op
            return Affine.apply(x, self.weight, self.bias)
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y

    def scope_label(self) -> str:
        return self.label


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.relu()

    def scope_label(self) -> None:
        return None


class Dropout(Module):
    """Zero each activation with probability p while training (scaling the rest by 1/(1-p)),
    so the network cannot lean on any single unit; the identity in eval mode."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p, self.rng = p, rng if rng is not None else np.random.default_rng()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * _const(keep)

    def scope_label(self) -> None:
        return None


class Sequential(Module):
    def __init__(self, *layers: Module):
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(Sequential):
    """Linear layers of the given sizes with ReLU (and optional Dropout) between them."""

    def __init__(self, sizes: Sequence[int], dropout: float = 0.0, seed: int | None = None):
        if len(sizes) < 2 or any(int(n) < 1 for n in sizes):
            raise ValueError(f"MLP sizes must be at least two positive ints (in, ..., out), "
                             f"got {list(sizes)}")
        rng = np.random.default_rng(seed)
        self.sizes = [int(n) for n in sizes]
        self.label = "MLP(" + "-".join(map(str, self.sizes)) + ")"
        layers: list[Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:])):
            layers.append(Linear(n_in, n_out, rng=rng))
            if i < len(self.sizes) - 2:
                layers.append(ReLU())
                if dropout:
                    layers.append(Dropout(dropout, rng=rng))
        super().__init__(*layers)

    def scope_label(self) -> str:
        return self.label


def cross_entropy(logits: Tensor, labels: Any) -> Tensor:
    """Softmax cross-entropy of (N, C) logits against N integer class labels, batch mean."""
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits as a Tensor of shape (N, C), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    given = y = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
    n, c = logits.shape
    if n == 0:  # the mean over no examples has no value
        raise ValueError(f"cross_entropy expects at least one example, got logits of shape "
                         f"{logits.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y) & (y == np.round(y))):
        # Tensor(labels) turns ints into floats: accept whole numbers, clipped so that a huge
        # one stays out of range instead of overflowing the cast
        y = np.clip(y, -1, c).astype(np.int64)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ValueError(f"cross_entropy expects {n} integer labels, shape ({n},), got dtype "
                         f"{y.dtype} and shape {y.shape}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.view(np.uint64).max() >= c:  # one pass: negative labels wrap to huge values
        raise ValueError(f"cross_entropy labels must be in [0, {c}), got values from "
                         f"{given.min()} to {given.max()}")
    return CrossEntropy.apply(logits, labels=y)
