"""The recorded graph behind a Tensor, and the engine's own backward walk through it, as data.

`trace(output, model)` reads what the engine recorded: every tensor (a node: its op, inputs,
shape, value, and the module and parameter it belongs to), the order the ops were computed,
and then runs the engine's backward with a watcher attached, so each step is what the walk
did: which op it took, in which order, the gradient that reached it and what it sent to each
input. Nothing is recomputed beside the engine, so what a page shows is what ran. Computing
only: the explorer page and the report present it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .nn import Module
from .tensor import Tensor, _watcher, grad


@dataclass
class Node:
    """One tensor of the graph."""

    id: int  # its place in `Trace.nodes`
    op: str | None  # the op that made it ("Affine", "ReLU", ...); None for a leaf
    inputs: list[int]  # the ids of the op's inputs, in order
    shape: tuple[int, ...]
    dtype: str
    name: str | None  # the tensor's own name, if it has one
    scope: list[str]  # the labels it was recorded under, outermost first
    module: str | None  # the path of the module it belongs to ("layers.0"; "" the model)
    param: str | None  # a parameter's state_dict key ("layers.0.weight"), else None
    requires_grad: bool
    value: np.ndarray
    grad: np.ndarray | None = None  # what backward gave it (None: not on a gradient's path)


@dataclass
class Step:
    """One step of the backward walk: the op that made `node` turned its gradient into its
    inputs' gradients (the chain rule: upstream times the op's local derivative)."""

    node: int
    upstream: np.ndarray
    to_inputs: list[tuple[int, np.ndarray]]  # (input id, gradient sent to it)


@dataclass
class Trace:
    nodes: list[Node]
    output: int  # the id of the traced tensor
    forward_order: list[int]  # op nodes in the order they were computed
    backward_steps: list[Step] = field(default_factory=list)  # in the walk's own order


def walk(root: Tensor) -> list[Tensor]:
    """Every tensor `root` was computed from, each after its inputs (the inputs that need no
    gradient, constants and data, included). Iterative, so any depth works."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            stack.extend((p, False) for p in reversed(t._ctx.parents) if id(p) not in visited)
    return order


@contextmanager
def watching_backward() -> Iterator[list[tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]]]:
    """Within the block, every backward walk in this thread appends its steps to the list
    yielded: (op output, its gradient, [(input, gradient sent to it), ...])."""
    steps: list[tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]] = []
    token = _watcher.set(lambda t, g, sent: steps.append((t, g, sent)))
    try:
        yield steps
    finally:
        _watcher.reset(token)


def trace(output: Tensor, model: Module | None = None, backward: bool = True) -> Trace:
    """The graph that computed `output` and, with `backward`, the engine's backward walk
    from it (for a non-scalar output, from the sum of its elements). `model` names the
    modules and parameters. Neither the model nor any `.grad` is changed: the walk keeps
    its gradients (`grad`), and the graph is kept for another backward."""
    tensors = walk(output)
    ids = {id(t): i for i, t in enumerate(tensors)}
    params = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    paths = {id(m): path for path, m in model.named_modules()} if model is not None else {}
    nodes = [_node(i, t, ids, params, paths) for i, t in enumerate(tensors)]
    ops = sorted((t for t in tensors if t._ctx is not None), key=lambda t: t._ctx.seq)  # type: ignore[union-attr]
    result = Trace(nodes, ids[id(output)], [ids[id(t)] for t in ops])
    if backward and output.requires_grad:
        wanted = [t for t in tensors if t._ctx is None and t.requires_grad]
        seed = np.ones(output.shape, output.dtype)
        with watching_backward() as steps:
            grads = grad(output, wanted, grad_output=seed, retain_graph=True)
        nodes[result.output].grad = seed
        for t, g, sent in steps:
            nodes[ids[id(t)]].grad = g.data
            result.backward_steps.append(Step(ids[id(t)], g.data,
                                              [(ids[id(p)], pg.data) for p, pg in sent]))
        for leaf, leaf_grad in zip(wanted, grads):
            nodes[ids[id(leaf)]].grad = None if leaf_grad is None else leaf_grad.data
    return result


def _node(i: int, t: Tensor, ids: dict[int, int], params: dict[int, str],
          paths: dict[int, str]) -> Node:
    ctx, param = t._ctx, params.get(id(t))
    scope = list(ctx.scope) if ctx is not None else []
    owners = [paths[id(owner)] for s in (ctx.scope if ctx is not None else ())
              if id(owner := getattr(s, "owner", None)) in paths]
    module = param.rpartition(".")[0] if param is not None else (owners[-1] if owners else None)
    return Node(i, type(ctx).__name__ if ctx is not None else None,
                [ids[id(p)] for p in ctx.parents] if ctx is not None else [], tuple(t.shape),
                str(t.dtype), t.name, scope, module, param, t.requires_grad, t.data)
