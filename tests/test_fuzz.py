"""Differential fuzzing: random expression graphs, run through the engine and TensorFlow.

Hypothesis writes small programs over every public op — arithmetic with broadcasting across
ranks and Python numbers on either side, matmul (1-D operands too), unary functions,
reductions, reshape / transpose / broadcast_to, indexing (negative indices, steps, repeated
integer arrays, bool masks, None, Ellipsis), casts, softmax — on shapes from 0-d to rank 4,
in float32 or float64, reusing a tensor in several places. Each program is run by the engine
and by TensorFlow's GradientTape; every node's value, every leaf's gradient and a
Hessian-vector product must agree.

Derandomized, so CI sees the same programs every run. TINYGRAD_MNIST_FUZZ_EXAMPLES=5000
runs many more locally (CI runs 1000, in well under a minute).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinygrad_mnist import Tensor, grad

EXAMPLES = int(os.environ.get("TINYGRAD_MNIST_FUZZ_EXAMPLES", "1000"))
TOL = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 2e-3}  # relative, and absolute per scale
MAX_RANK, MAX_OPS = 4, 7


# ----------------------------------------------------------------------------- programs


@dataclass
class Node:
    shape: tuple[int, ...]
    dtype: np.dtype
    positive: bool  # every value > 0: a valid log / sqrt argument, divisor or pow base
    grid: bool = False  # a leaf whose values are multiples of 0.5: exact zeros and ties


@dataclass
class Op:
    kind: str
    args: list[int | float]  # node numbers, or Python numbers
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        args = ", ".join(f"t{a}" if isinstance(a, int) else repr(a) for a in self.args)
        params = "".join(f", {k}={v!r}" for k, v in self.params.items() if k != "flat")
        return f"{self.kind}({args}{params})"


@dataclass
class Program:
    """Nodes 0..len(leaves)-1 are the leaves; op k makes node len(leaves) + k."""
    leaves: list[Node]
    ops: list[Op]
    nodes: list[Node]
    seed: int

    def __repr__(self) -> str:
        lines = [f"t{i} = leaf{n.shape} {n.dtype}{' positive' if n.positive else ''}"
                 f"{' grid' if n.grid else ''}" for i, n in enumerate(self.leaves)]
        lines += [f"t{len(self.leaves) + k} = {op!r}" for k, op in enumerate(self.ops)]
        return "\n".join(["", *lines, f"(values from seed {self.seed})"])


NUMBERS = {"add": [-2.5, 0.0, 1.0, 2.0], "sub": [-1.0, 0.5, 3.0], "mul": [-2.0, 0.0, 0.5, 3.0],
           "div": [-2.0, 0.5, 4.0], "pow": [2.0, 3.0], "pow_positive_base": [0.5, 1.5, -0.5, -1.0, 0.0, 1.0]}
# x ** 0 and x ** 1 only of positive x: at x = 0, TensorFlow's (second) derivative is 0 * inf = NaN,
# where the engine gives the limit (see test_tensor.py's pow tests)


class Builder:
    """Draws a program op by op, tracking each node's shape, dtype and positivity."""

    def __init__(self, draw: Callable, dtype: np.dtype):
        self.draw, self.dtype = draw, dtype
        self.nodes: list[Node] = []
        self.leaves: list[Node] = []
        self.ops: list[Op] = []
        self.pending: list[Node] = []  # leaves made mid-program: renumbered at the end

    # --- nodes
    def leaf(self, shape: tuple[int, ...], positive: bool | None = None) -> int:
        """A new leaf. Leaves are numbered first, so a program records leaves made on the way
        as ("leaf", index) ops and renumbers at the end."""
        pos = self.draw(st.booleans()) if positive is None else positive
        node = Node(tuple(shape), self.dtype, pos, grid=self.draw(st.booleans()))
        self.leaves.append(node)
        return self._add(Op("leaf", [], {"index": len(self.leaves) - 1}), node)

    def _add(self, op: Op, node: Node) -> int:
        self.ops.append(op)
        self.nodes.append(node)
        return len(self.nodes) - 1

    def pick(self, ok: Callable[[Node], bool] = lambda n: True) -> int | None:
        candidates = [i for i, n in enumerate(self.nodes) if ok(n)]
        return self.draw(st.sampled_from(candidates)) if candidates else None

    def positive(self, i: int) -> int:
        """Node i itself if positive, else sigmoid(t) + 0.5 of it (in (0.5, 1.5))."""
        if self.nodes[i].positive:
            return i
        n = self.nodes[i]
        s = self._add(Op("sigmoid", [i]), Node(n.shape, n.dtype, True))
        return self._add(Op("add", [s, 0.5]), Node(n.shape, n.dtype, True))

    # --- shapes
    def partner_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A shape that broadcasts with `shape`: fewer or more leading dims, some dims 1, and
        size-1 dims of `shape` stretched."""
        d = self.draw
        keep = d(st.integers(0, len(shape)))
        core = [d(st.integers(1, 3)) if n == 1 else d(st.sampled_from([1, n]))
                for n in shape[len(shape) - keep:]]
        extra = d(st.lists(st.integers(1, 3), max_size=MAX_RANK - len(shape))) if keep == len(shape) else []
        return tuple(extra + core)

    def step(self) -> None:
        d = self.draw
        kind = d(st.sampled_from(["getitem", "binary", "unary", "reduce", "matmul", "number",
                                  "softmax", "transpose", "reshape", "broadcast_to", "getitem",
                                  "binary", "unary", "reduce", "astype", "intcast"]))
        i = self.pick()
        x = self.nodes[i]
        if kind == "unary":
            name = d(st.sampled_from(["relu", "neg", "sqrt", "tanh", "exp", "log", "sigmoid"]))
            if name in ("log", "sqrt"):
                i = self.positive(i)
            pos = name in ("exp", "sqrt", "sigmoid")
            self._add(Op(name, [i]), Node(x.shape, x.dtype, pos))
        elif kind == "binary":
            self.binary(i)
        elif kind == "number":
            self.number(i)
        elif kind == "matmul":
            self.matmul(i)
        elif kind == "reduce":
            name = d(st.sampled_from(["max", "mean", "sum"]))
            axis = self.axis_arg(len(x.shape))
            keepdims = d(st.booleans())
            out = np.empty(x.shape).sum(axis=axis, keepdims=keepdims).shape
            self._add(Op(name, [i], {"axis": axis, "keepdims": keepdims}), Node(out, x.dtype, x.positive))
        elif kind == "reshape":
            shape = self.reshape_target(int(np.prod(x.shape)))
            out = np.empty(x.shape).reshape(shape).shape
            self._add(Op("reshape", [i], {"shape": shape}), Node(out, x.dtype, x.positive))
        elif kind == "transpose":
            axes = tuple(d(st.permutations(range(len(x.shape))))) if d(st.booleans()) else None
            out = x.shape[::-1] if axes is None else tuple(x.shape[a] for a in axes)
            self._add(Op("transpose", [i], {"axes": axes}), Node(out, x.dtype, x.positive))
        elif kind == "broadcast_to":
            lead = d(st.lists(st.integers(1, 3), max_size=MAX_RANK - len(x.shape)))
            shape = tuple(lead) + tuple(d(st.integers(1, 3)) if n == 1 else n for n in x.shape)
            self._add(Op("broadcast_to", [i], {"shape": shape}), Node(shape, x.dtype, x.positive))
        elif kind == "getitem":
            index = self.index(x.shape)
            flat = np.arange(int(np.prod(x.shape))).reshape(x.shape)[index]
            self._add(Op("getitem", [i], {"index": index, "flat": flat}),
                      Node(flat.shape, x.dtype, x.positive))
        elif kind == "astype":
            other = np.dtype(np.float32 if x.dtype == np.float64 else np.float64)
            self._add(Op("astype", [i], {"dtype": other}), Node(x.shape, other, x.positive))
        elif kind == "intcast":
            self._add(Op("intcast", [i], {"dtype": x.dtype}), Node(x.shape, x.dtype, False))
        else:
            name = d(st.sampled_from(["softmax", "log_softmax"]))
            axis = d(st.integers(-len(x.shape), len(x.shape) - 1)) if x.shape else -1
            self._add(Op(name, [i], {"axis": axis}), Node(x.shape, x.dtype, name == "softmax"))

    def axis_arg(self, ndim: int) -> Any:
        d = self.draw
        if ndim == 0:
            return None
        form = d(st.sampled_from(["none", "int", "tuple"]))
        if form == "none":
            return None
        if form == "int":
            return d(st.integers(-ndim, ndim - 1))
        axes = d(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        return tuple(a - ndim if d(st.booleans()) else a for a in axes)

    def reshape_target(self, size: int) -> tuple[int, ...]:
        d = self.draw
        factors = [p for p in (2, 3, 5, 7) for _ in range(99) if size % p ** (_ + 1) == 0]
        rank = d(st.integers(1 if factors else 0, MAX_RANK))
        dims = [1] * rank
        for f in factors:
            dims[d(st.integers(0, rank - 1))] *= f
        if dims and d(st.booleans()):
            dims[d(st.integers(0, rank - 1))] = -1
        return tuple(dims)

    def index(self, shape: tuple[int, ...]) -> Any:
        d = self.draw
        if shape and d(st.integers(0, 5)) == 0:  # a whole-tensor bool mask
            mask = np.array(d(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                                       max_size=int(np.prod(shape))))).reshape(shape)
            mask.flat[0] = True
            return mask
        parts: list[Any] = []
        advanced = False
        for n in shape:
            form = d(st.sampled_from(["slice", "array", "int", "bool", "all"]))
            if form == "int":
                parts.append(d(st.sampled_from([*range(-n, 0), *range(n)])))
            elif form == "slice":
                bound = st.none() | st.integers(-n - 1, n + 1)
                parts.append(slice(d(bound), d(bound), d(st.sampled_from([-1, 2, -2, 3, None, 1]))))
            elif form in ("array", "bool") and not advanced:
                advanced = True
                if form == "array":  # repeats allowed: their gradients add up
                    parts.append(np.array(d(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))))
                else:
                    keep = np.array(d(st.lists(st.booleans(), min_size=n, max_size=n)))
                    keep[d(st.integers(0, n - 1))] = True
                    parts.append(keep)
            else:
                parts.append(slice(None))
        if parts and d(st.booleans()):  # an Ellipsis for a run of full slices, or at the end
            start = d(st.integers(0, len(parts)))
            end = d(st.integers(start, len(parts)))
            if all(isinstance(p, slice) and p == slice(None) for p in parts[start:end]):
                parts[start:end] = [Ellipsis]
        for _ in range(d(st.integers(0, 2))):
            parts.insert(d(st.integers(0, len(parts))), None)
        index = tuple(parts) if len(parts) != 1 or d(st.booleans()) else parts[0]
        result = np.arange(int(np.prod(shape))).reshape(shape)[index]
        if result.size == 0 or result.ndim > MAX_RANK:
            return Ellipsis
        return index

    def binary(self, i: int) -> None:
        d = self.draw
        name = d(st.sampled_from(["mul", "div", "pow", "sub", "add"]))
        x = self.nodes[i]
        j = self.pick(lambda n: _broadcast(n.shape, x.shape) is not None) if d(st.booleans()) else None
        if j is None:
            j = self.leaf(self.partner_shape(x.shape))
        a, b = (i, j) if d(st.booleans()) else (j, i)
        if name == "div":
            b = self.positive(b)
        if name == "pow":
            a = self.positive(a)
        na, nb = self.nodes[a], self.nodes[b]
        pos = (name in ("add", "mul", "div") and na.positive and nb.positive) or name == "pow"
        shape = _broadcast(na.shape, nb.shape)
        self._add(Op(name, [a, b]), Node(shape, np.result_type(na.dtype, nb.dtype), pos))

    def number(self, i: int) -> None:
        """A Python number on either side: it takes the tensor's dtype."""
        d = self.draw
        name = d(st.sampled_from(["pow", "div", "sub", "mul", "add"]))
        left = d(st.booleans())
        if name == "pow" and left:  # number ** tensor: a positive base
            c = d(st.sampled_from([0.5, 2.0, 3.0]))
        elif name == "pow":  # tensor ** number: a whole power of any base, others of a positive one
            c = d(st.sampled_from(NUMBERS["pow"] + NUMBERS["pow_positive_base"]))
            if c in NUMBERS["pow_positive_base"]:
                i = self.positive(i)
        else:
            c = d(st.sampled_from(NUMBERS[name]))  # never 0 as a divisor
            if name == "div" and left:
                i = self.positive(i)
        x = self.nodes[i]
        pos = (name == "pow" and (left or x.positive)) or \
              (name in ("add", "mul", "div") and c > 0 and x.positive)
        args: list[int | float] = [c, i] if left else [i, c]
        self._add(Op(name, args), Node(x.shape, x.dtype, pos))

    def matmul(self, i: int) -> None:
        d = self.draw
        x = self.nodes[i]
        if not x.shape:
            i = self._add(Op("reshape", [i], {"shape": (1,)}), Node((1,), x.dtype, x.positive))
            x = self.nodes[i]
        left = d(st.booleans())
        j = self.pick(lambda n: _matmul_shape(*((x.shape, n.shape) if left else (n.shape, x.shape)))
                      is not None) if d(st.booleans()) else None
        if j is None:
            k = x.shape[-1] if left else (x.shape[-2] if len(x.shape) >= 2 else x.shape[0])
            batch = self.partner_shape(x.shape[:-2]) if len(x.shape) > 2 else ()
            if d(st.booleans()) or len(batch) + 2 > MAX_RANK:
                shape: tuple[int, ...] = (k,)
            else:
                other = d(st.integers(1, 3))
                shape = batch + ((k, other) if left else (other, k))
            j = self.leaf(shape)
        a, b = (i, j) if left else (j, i)
        out = _matmul_shape(self.nodes[a].shape, self.nodes[b].shape)
        assume(out is not None and len(out) <= MAX_RANK)
        dtype = np.result_type(self.nodes[a].dtype, self.nodes[b].dtype)
        self._add(Op("matmul", [a, b]), Node(out, dtype, False))


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    try:
        out = np.broadcast_shapes(a, b)
    except ValueError:
        return None
    return out if len(out) <= MAX_RANK else None


def _matmul_shape(a: tuple, b: tuple) -> tuple | None:
    if not a or not b:
        return None
    try:
        return np.matmul(np.zeros(a), np.zeros(b)).shape
    except ValueError:
        return None


@st.composite
def programs(draw: Callable) -> Program:
    dtype = np.dtype(draw(st.sampled_from([np.float64, np.float32])))
    b = Builder(draw, dtype)
    for _ in range(draw(st.integers(1, 2))):
        b.leaf(tuple(draw(st.lists(st.integers(1, 3), max_size=MAX_RANK))))
    for _ in range(draw(st.integers(1, MAX_OPS))):
        b.step()
    # Leaves were recorded as ops in drawing order; make them the first nodes.
    order = [k for k, op in enumerate(b.ops) if op.kind == "leaf"] + \
            [k for k, op in enumerate(b.ops) if op.kind != "leaf"]
    new_number = {old: new for new, old in enumerate(order)}
    ops = [Op(op.kind, [new_number[a] if isinstance(a, int) else a for a in op.args], op.params)
           for op in (b.ops[k] for k in order) if op.kind != "leaf"]
    nodes = [b.nodes[k] for k in order]
    return Program(nodes[:len(b.leaves)], ops, nodes, draw(st.integers(0, 2 ** 32 - 1)))


# ----------------------------------------------------------------------------- two interpreters


def _ours(op: Op, a: list, p: dict) -> Tensor:
    k = op.kind
    if k in ("neg",):
        return -a[0]
    if k in ("exp", "log", "sqrt", "relu", "tanh", "sigmoid"):
        return getattr(a[0], k)()
    if k in ("add", "sub", "mul", "div", "pow", "matmul"):
        fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
              "div": lambda x, y: x / y, "pow": lambda x, y: x ** y, "matmul": lambda x, y: x @ y}[k]
        return fn(a[0], a[1])
    if k in ("sum", "mean", "max"):
        return getattr(a[0], k)(axis=p["axis"], keepdims=p["keepdims"])
    if k == "reshape":
        return a[0].reshape(p["shape"])
    if k == "transpose":
        return a[0].T if p["axes"] is None else a[0].transpose(p["axes"])
    if k == "broadcast_to":
        return a[0].broadcast_to(p["shape"])
    if k == "getitem":
        return a[0][p["index"]]
    if k == "astype":
        return a[0].astype(p["dtype"])
    if k == "intcast":
        return a[0].astype(np.int64).astype(p["dtype"])
    if k in ("softmax", "log_softmax"):
        return getattr(a[0], k)(axis=p["axis"])
    raise AssertionError(k)


def _theirs(tf: Any, op: Op, a: list, p: dict) -> Any:
    k = op.kind
    if k in ("add", "sub", "mul", "div", "pow", "matmul"):
        x, y = a
        if not isinstance(x, float) and not isinstance(y, float) and x.dtype != y.dtype:
            x, y = tf.cast(x, tf.float64), tf.cast(y, tf.float64)  # NumPy's promotion
        if k == "matmul":
            return _tf_matmul(tf, x, y)
        return {"add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,
                "div": lambda: x / y, "pow": lambda: x ** y}[k]()
    x = a[0]
    simple = {"neg": lambda: -x, "exp": lambda: tf.exp(x), "log": lambda: tf.math.log(x),
              "sqrt": lambda: tf.sqrt(x), "relu": lambda: tf.nn.relu(x), "tanh": lambda: tf.tanh(x),
              "sigmoid": lambda: tf.sigmoid(x)}
    if k in simple:
        return simple[k]()
    if k in ("sum", "mean", "max"):
        fn = {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "max": tf.reduce_max}[k]
        axis = list(p["axis"]) if isinstance(p["axis"], tuple) else p["axis"]
        return fn(x, axis=axis, keepdims=p["keepdims"])
    if k == "reshape":
        return tf.reshape(x, p["shape"])
    if k == "transpose":
        return tf.transpose(x, p["axes"])
    if k == "broadcast_to":
        return tf.broadcast_to(x, p["shape"])
    if k == "getitem":  # any NumPy index, as a gather of the flat positions it picks
        return tf.gather(tf.reshape(x, [-1]), p["flat"])
    if k == "astype":
        return tf.cast(x, p["dtype"])
    if k == "intcast":
        return tf.cast(tf.cast(x, tf.int64), p["dtype"])
    if k in ("softmax", "log_softmax"):
        fn = tf.nn.softmax if k == "softmax" else tf.nn.log_softmax
        if x.shape.rank == 0:
            return tf.reshape(fn(tf.reshape(x, [1])), [])
        return fn(x, axis=p["axis"])
    raise AssertionError(k)


def _tf_matmul(tf: Any, x: Any, y: Any) -> Any:
    """NumPy's matmul: a 1-D operand is a row (left) or column (right) vector, then dropped."""
    x2 = x[None, :] if x.shape.rank == 1 else x
    y2 = y[:, None] if y.shape.rank == 1 else y
    out = tf.linalg.matmul(x2, y2)
    if y.shape.rank == 1:
        out = out[..., 0]
    if x.shape.rank == 1:
        out = out[..., 0, :] if y.shape.rank != 1 else out[..., 0]
    return out


def run(prog: Program, leaves: list, apply: Callable[[Op, list, dict], Any]) -> list:
    nodes = list(leaves)
    for op in prog.ops:
        nodes.append(apply(op, [nodes[a] if isinstance(a, int) else a for a in op.args], op.params))
    return nodes


# ----------------------------------------------------------------------------- the test


def _same(ours: Tensor | None, theirs: Any, dtype: np.dtype, what: str) -> None:
    """Equal shape, dtype and values; None (no path) on one side must be zeros on the other."""
    a = None if ours is None else ours.numpy()
    b = None if theirs is None else np.asarray(theirs)
    if a is None or b is None:
        other = b if a is None else a
        assert other is None or not np.any(other), f"{what}: None on one side, nonzero on the other"
        return
    assert a.shape == b.shape, f"{what}: shape {a.shape}, TensorFlow {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype}, TensorFlow {b.dtype}"
    tol = TOL[np.dtype(dtype)]
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=False, err_msg=what)


def _dense(tf: Any, g: Any) -> Any:
    return None if g is None else tf.convert_to_tensor(g)


@settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(prog=programs())
def test_engine_agrees_with_tensorflow(tf: Any, prog: Program) -> None:
    rng = np.random.default_rng(prog.seed)
    values = [rng.uniform(0.5, 2.0, n.shape) if n.positive else rng.uniform(-2, 2, n.shape)
              for n in prog.leaves]
    values = [np.asarray(np.round(v * 2) / 2 if n.grid else v, n.dtype)  # ties; relu and max at a kink
              for v, n in zip(values, prog.leaves)]
    low = np.dtype(np.float32 if any(n.dtype == np.float32 for n in prog.nodes) else np.float64)
    leaves = [Tensor(v, requires_grad=True) for v in values]
    with np.errstate(all="ignore"):
        ours = run(prog, leaves, _ours)
    finite = all(np.isfinite(t.data).all() and np.abs(t.data).max(initial=0) < 1e5 for t in ours)
    assume(finite)  # exp of exp... overflowing is not what this test is about
    weights = [rng.standard_normal(t.shape) for t in ours]  # every node counts in the output
    directions = [rng.standard_normal(v.shape).astype(v.dtype) for v in values]

    total = sum((t * Tensor(w)).sum() for t, w in zip(ours, weights))
    gs = grad(total, leaves, create_graph=True)
    s = sum((g * Tensor(u)).sum() for g, u in zip(gs, directions) if g is not None)
    hvs = grad(s, leaves) if isinstance(s, Tensor) and s.requires_grad else [None] * len(leaves)

    txs = [tf.constant(v) for v in values]
    with tf.GradientTape() as outer:
        outer.watch(txs)
        with tf.GradientTape() as inner:
            inner.watch(txs)
            theirs = run(prog, txs, lambda op, a, p: _theirs(tf, op, a, p))
            t_total = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float64) * w) for t, w in zip(theirs, weights)])
        tgs = [_dense(tf, g) for g in inner.gradient(t_total, txs)]
        terms = [tf.reduce_sum(g * u) for g, u in zip(tgs, directions) if g is not None]
        t_s = tf.add_n(terms) if terms else None
    thvs = [_dense(tf, g) for g in outer.gradient(t_s, txs)] if t_s is not None else [None] * len(txs)

    for k, (t, tt) in enumerate(zip(ours, theirs)):
        _same(t, tt.numpy(), low, f"value of t{k}")
    for k, (g, tg, hv, thv) in enumerate(zip(gs, tgs, hvs, thvs)):
        _same(g, None if tg is None else tg.numpy(), low, f"gradient of leaf t{k}")
        _same(hv, None if thv is None else thv.numpy(), low, f"Hessian-vector product, leaf t{k}")
