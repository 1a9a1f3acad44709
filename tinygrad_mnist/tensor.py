"""The autodiff engine: a Tensor that records operations, and backward() that replays them in reverse.

Every operation is a `Function` (the ops themselves are in ops.py). Its `forward` computes the
NumPy result and saves what the backward pass will need; its `backward` turns the output's
gradient into the inputs' gradients *using Tensor operations*. Run under `no_grad` those are
plain NumPy calls; run with `create_graph=True` they are recorded too, so a gradient has a graph
of its own and can be differentiated again.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import numpy as np

from .grad_mode import _grad_enabled, _scope, set_grad_enabled

_recorded = itertools.count()  # numbers recorded ops in order: backward runs them newest first
# trace.py's: watcher(output, its gradient, [(input, gradient sent to it), ...]) at each step
_watcher: ContextVar[Callable[[Tensor, Tensor, list[tuple[Tensor, Tensor]]], None] | None] = \
    ContextVar("backward_watcher", default=None)

Operand = Any  # what an operator takes beside a Tensor (a number, list or array is lifted)
Axis = int | Sequence[int] | None  # None (all axes), an int, or a sequence of ints

# ----------------------------------------------------------------------------- Tensor


def _numeric_dtype(dtype: Any) -> np.dtype:
    """np.dtype(dtype), refusing what a Tensor cannot hold (strings, objects, complex)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise TypeError(f"dtype must be a float, int or bool type (e.g. np.float32, np.int64, "
                        f"bool); got {dtype!r}")
    return dt


def _as_array(data: Any, dtype: Any, default: Any = np.float32) -> np.ndarray:
    """Turn user data into an ndarray: float arrays keep their dtype, everything else becomes
    `default` (float32 for a new Tensor; the other operand's float dtype beside a Tensor)."""
    if isinstance(data, Tensor):
        raise TypeError("Tensor(...) got a Tensor; use t.detach() to share its data, "
                        "or Tensor(t.numpy().copy()) for a copy")
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"Tensor data must be numbers (bool, int or float); got an array of "
                        f"dtype {arr.dtype} from {type(data).__name__}")
    if dtype is not None:
        return arr.astype(_numeric_dtype(dtype), copy=False)
    if arr.dtype.kind == "f" and isinstance(data, (np.ndarray, np.floating)):
        return arr
    return arr.astype(default)


class Tensor:
    """An ndarray plus the history of how it was computed, so gradients can flow back to it.

    A float ndarray is used as is (no copy, dtype kept); lists, numbers and integer arrays
    become float32 unless `dtype` says otherwise.
    """

    __slots__ = ("data", "requires_grad", "grad", "name", "_ctx", "_retains_grad", "__weakref__")
    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None,
                 name: str | None = None):
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad=True needs floating-point data, got dtype "
                            f"{self.data.dtype}; pass float data or dtype=np.float32")
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self.name = name
        self._ctx: Function | None = None
        self._retains_grad = False

    @classmethod
    def _wrap(cls, data: np.ndarray, ctx: Function | None = None) -> Tensor:
        """Internal fast constructor: no checks, no conversion (op outputs and constants)."""
        t = cls.__new__(cls)  # one attribute per line: cheaper than packing a tuple to unpack
        t.data = data
        t.requires_grad = ctx is not None
        t._ctx = ctx
        t.grad = t.name = None
        t._retains_grad = False
        return t

    # --- plain attributes
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    T = property(lambda self: ops.Transpose.apply(self, axes=tuple(range(self.ndim))[::-1]))

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        """Same data, no history: gradients stop here."""
        return Tensor._wrap(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    def retain_grad(self) -> None:
        """Keep this intermediate tensor's gradient in `.grad` after backward, as leaves do
        (e.g. to see it in the graph picture). Others are freed as soon as they are used."""
        self._retains_grad = True

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        """Like PyTorch: an op's output names the op (grad_fn=Tanh), a leaf says requires_grad."""
        extra = (f", grad_fn={type(self._ctx).__name__}" if self._ctx is not None else
                 ", requires_grad=True" if self.requires_grad else "") + \
                (f", name={self.name!r}" if self.name else "")
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, " \
               f"dtype={self.dtype}{extra})"

    # --- operators
    def _lift(self, other: Any) -> Tensor:
        """Make the other operand a Tensor. A Python number, a list or an integer array takes
        this tensor's float dtype (float32 beside an integer tensor); a float array keeps its own."""
        if isinstance(other, Tensor):
            return other
        own = self.dtype if self.dtype.kind == "f" else np.float32
        if isinstance(other, (int, float, np.number)):
            return Tensor._wrap(np.asarray(other, own))
        if isinstance(other, (np.ndarray, list, tuple)):
            return Tensor._wrap(_as_array(other, None, default=own))
        raise TypeError(f"unsupported operand: Tensor and {type(other).__name__}")

    def __add__(self, o: Operand) -> Tensor: return ops.Add.apply(self, self._lift(o))
    def __radd__(self, o: Operand) -> Tensor: return ops.Add.apply(self._lift(o), self)
    def __sub__(self, o: Operand) -> Tensor: return ops.Sub.apply(self, self._lift(o))
    def __rsub__(self, o: Operand) -> Tensor: return ops.Sub.apply(self._lift(o), self)
    def __mul__(self, o: Operand) -> Tensor: return ops.Mul.apply(self, self._lift(o))
    def __rmul__(self, o: Operand) -> Tensor: return ops.Mul.apply(self._lift(o), self)
    def __truediv__(self, o: Operand) -> Tensor: return ops.Div.apply(self, self._lift(o))
    def __rtruediv__(self, o: Operand) -> Tensor: return ops.Div.apply(self._lift(o), self)
    def __pow__(self, o: Operand) -> Tensor: return ops.Pow.apply(self, self._lift(o))
    def __rpow__(self, o: Operand) -> Tensor: return ops.Pow.apply(self._lift(o), self)
    def __matmul__(self, o: Operand) -> Tensor: return ops.MatMul.apply(self, self._lift(o))
    def __rmatmul__(self, o: Operand) -> Tensor: return ops.MatMul.apply(self._lift(o), self)
    def __neg__(self) -> Tensor: return ops.Neg.apply(self)
    def __getitem__(self, idx: Any) -> Tensor: return ops.GetItem.apply(self, idx=_plain_index(idx))

    # --- methods
    def sum(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return ops.Sum.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def mean(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        axes = _axes(axis, self.ndim)
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axes, keepdims) * (1.0 / count if count else float("nan"))  # as NumPy

    def max(self, axis: Axis = None, keepdims: bool = False) -> Tensor:
        return ops.Max.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def exp(self) -> Tensor: return ops.Exp.apply(self)
    def log(self) -> Tensor: return ops.Log.apply(self)
    def sqrt(self) -> Tensor: return ops.Sqrt.apply(self)
    def relu(self) -> Tensor: return ops.ReLU.apply(self)
    def tanh(self) -> Tensor: return ops.Tanh.apply(self)
    def sigmoid(self) -> Tensor: return ops.Sigmoid.apply(self)

    def reshape(self, *shape: Any) -> Tensor:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(dims))

    def transpose(self, *axes: Any) -> Tensor:
        order = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Transpose.apply(self, axes=tuple(order) or tuple(reversed(range(self.ndim))))

    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        return ops.BroadcastTo.apply(self, shape=tuple(shape))

    def astype(self, dtype: Any) -> Tensor:
        """A copy in another dtype. Only a cast to a float type is differentiable; an integer
        or bool result is a constant (requires_grad=False), as in PyTorch and TensorFlow."""
        dtype = _numeric_dtype(dtype)
        if dtype.kind != "f":
            return Tensor._wrap(self.data.astype(dtype))
        return ops.Cast.apply(self, dtype=dtype)

    def log_softmax(self, axis: int = -1) -> Tensor:
        if self.ndim == 0:  # one value: log_softmax is 0, its gradient 0
            return self.reshape(1).log_softmax(0).reshape(())
        return ops.LogSoftmax.apply(self, axis=_axis(axis, self.ndim))

    def softmax(self, axis: int = -1) -> Tensor:
        if self.ndim == 0:  # one value: softmax is 1, its gradient 0
            return self.reshape(1).softmax(0).reshape(())
        return ops.Softmax.apply(self, axis=_axis(axis, self.ndim))

    # --- autodiff
    def backward(self, grad: Any = None, retain_graph: bool = False,
                 create_graph: bool = False) -> None:
        """Add d(self)/d(t) to `t.grad` for every leaf t that requires grad (and every
        intermediate that called `retain_grad()`)."""
        _backprop(self, grad, retain_graph, create_graph, store=True)


def grad(output: Tensor, inputs: Sequence[Tensor], grad_output: Any = None,
         retain_graph: bool = False, create_graph: bool = False) -> list[Tensor | None]:
    """d(output)/d(input) for each input, returned rather than stored in `.grad`."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else inputs
    if not isinstance(inputs, list):
        raise TypeError(f"grad() inputs must be a list of Tensors, got {type(inputs).__name__}")
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad() inputs[{i}] is a {type(t).__name__}, expected a Tensor "
                            f"(the gradient is taken with respect to Tensors in the graph)")
    claimed: set[int] = set()
    grads = _backprop(output, grad_output, retain_graph, create_graph, store=False, claimed=claimed)
    with set_grad_enabled(create_graph):
        return [_owned(grads[t], claimed) if t in grads else None for t in inputs]


def _backprop(root: Tensor, seed: Any, retain_graph: bool, create_graph: bool,
              store: bool, claimed: set[int] | None = None) -> dict[Tensor, Tensor]:
    if not isinstance(root, Tensor):
        raise TypeError(f"backward needs a Tensor, got {type(root).__name__}")
    if not root.requires_grad:
        raise RuntimeError("backward() on a Tensor that does not require grad: no input had "
                           "requires_grad=True, or it was computed under no_grad()")
    claimed = set() if claimed is None else claimed  # ids of arrays a .grad may not take over
    if seed is None:
        if root.size != 1:
            raise RuntimeError(f"backward() on a non-scalar Tensor of shape {root.shape} needs "
                               f"grad=, a Tensor of that same shape (e.g. loss.sum().backward())")
        seed = Tensor._wrap(np.ones(root.shape, root.dtype))
    else:
        seed = seed if isinstance(seed, Tensor) else Tensor(seed, dtype=root.dtype)
        if seed.shape != root.shape:
            raise ValueError(f"backward() grad has shape {seed.shape}, expected the output's "
                             f"shape {root.shape}")
        claimed.add(id(seed.data))  # the caller's array: a .grad may not take it over
    retain_graph = retain_graph or create_graph  # the gradient's graph reuses this one's tensors
    grads: dict[Tensor, Tensor] = {root: seed}  # keyed by the tensor itself: hashed by identity
    todo: list[tuple[int, Tensor]] = []
    leaves: list[Tensor] = []
    _reached(root, todo, leaves)
    watcher = _watcher.get()  # trace.py's: sees each step as the walk takes it
    recording = _grad_enabled.set(create_graph)  # a token: cheaper than set_grad_enabled()
    try:
        while todo:
            t = heapq.heappop(todo)[1]
            # free each gradient once used: memory holds a few layers' gradients, not all
            g = grads.pop(t) if store else grads[t]
            if store and t._retains_grad:
                t.grad = _owned(g, claimed) if t.grad is None else t.grad + g
            ctx = t._ctx
            assert ctx is not None  # only op outputs wait in the heap
            if ctx.saved is None:
                raise RuntimeError(f"backward through {type(ctx).__name__} a second time: the graph "
                                   f"was freed by the first backward(); pass retain_graph=True to it")
            fast_rule = type(ctx).fast_backward
            # the same rule on plain arrays where the op has one: no per-op cost
            fast: Any = None if create_graph or fast_rule is None else fast_rule(ctx, t.data, g.data)
            in_grads: tuple[Any, ...]  # Tensors from backward, arrays from fast_backward
            if fast is None:
                rule = ctx.backward(t, g)
                in_grads = rule if isinstance(rule, tuple) else (rule,)
                for a in in_grads:
                    if a is not None and not isinstance(a, Tensor):
                        raise TypeError(f"{type(ctx).__name__}.backward returned a "
                                        f"{type(a).__name__} as a gradient; expected a Tensor "
                                        f"(or None), built with Tensor operations")
            else:
                in_grads = fast
            if len(in_grads) != len(ctx.parents):  # zip would silently drop the missing ones
                raise RuntimeError(f"{type(ctx).__name__}.backward returned {len(in_grads)} "
                                   f"gradients for {len(ctx.parents)} inputs; expected one per "
                                   f"input (None where an input needs none)")
            sent: list[tuple[Tensor, Tensor]] | None = None if watcher is None else []
            for p, given in zip(ctx.parents, in_grads):
                if given is None or not p.requires_grad:
                    continue
                pg: Tensor = given if fast is None else _const(given)
                if pg.data.shape != p.data.shape:  # .data: skips two property calls per edge
                    pg = _unbroadcast(pg, p.shape)
                    if pg.shape != p.shape:
                        raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of "
                                           f"shape {pg.shape} for an input of shape {p.shape}")
                if pg.data.dtype != p.data.dtype:  # float32 * float64 is float64; x.grad is x's dtype
                    pg = pg.astype(p.dtype)
                if sent is not None:
                    sent.append((p, pg))
                if p in grads:
                    grads[p] = grads[p] + pg
                else:
                    grads[p] = pg
                    _reached(p, todo, leaves)
            if watcher is not None and sent is not None:
                watcher(t, g, sent)
            if not retain_graph:
                ctx.saved = None
        if store:
            for t in leaves:
                g = grads[t]
                t.grad = _owned(g, claimed) if t.grad is None else t.grad + g
    finally:
        _grad_enabled.reset(recording)
    return grads


def _owned(g: Tensor, claimed: set[int]) -> Tensor:
    """g, if its array is one no one else holds; else a copy. Rules pass one gradient to
    several inputs (Add gives g to both) or a view of it (Reshape), and the seed is the
    caller's, so without this `p.grad.data *= 0.5` could scale two parameters' gradients
    at once. Gradients fresh from a product or sum (most, and the big ones) are kept as is."""
    if g.data.base is None and id(g.data) not in claimed:
        claimed.add(id(g.data))
        return g
    return ops.Cast.apply(g, dtype=g.dtype)  # Cast always copies; under create_graph it is recorded


def _reached(t: Tensor, todo: list[tuple[int, Tensor]], leaves: list[Tensor]) -> None:
    """Note a tensor that a gradient has reached: a leaf just collects it; an op's output waits
    in a heap that pops the newest op first. An op is always recorded after the ops that made
    its inputs, so a tensor's turn comes only after every op that used it: its gradient is
    complete, and no topological sort of the whole graph is needed. (Each op has its own
    number, so the heap never has to compare two tensors.)"""
    if t._ctx is None:
        leaves.append(t)
    else:
        heapq.heappush(todo, (-t._ctx.seq, t))


def _unbroadcast(g: Tensor, shape: tuple) -> Tensor:
    """Sum a gradient over the axes broadcasting stretched, so it matches the input's shape."""
    lead = g.ndim - len(shape)
    if lead < 0:
        return g  # a rule's wrongly shaped gradient: backward names it
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    return g.sum(axis=tuple(a - lead for a in stretched), keepdims=True) if stretched else g


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """Normalize an axis argument (None, int or sequence) to a tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if _is_int(axis) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if axes is None or not all(_is_int(a) for a in axes):
        raise TypeError(f"axis must be None, an int or a tuple of ints; got {axis!r}")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    normal = tuple(sorted(int(a) % ndim for a in axes))
    if len(set(normal)) < len(normal):
        raise ValueError(f"axis {axis!r} names the same dimension twice")
    return normal


def _axis(axis: Any, ndim: int) -> int:
    """Normalize a single-axis argument (softmax's) to a non-negative int."""
    if not _is_int(axis):
        raise TypeError(f"axis must be an int; got {axis!r}")
    return _axes(axis, ndim)[0]


def _is_int(a: Any) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def _plain_index(idx: Any) -> Any:
    """Replace Tensors inside an index by their (integer) arrays."""
    if isinstance(idx, tuple):
        return tuple(_plain_index(i) for i in idx)
    if isinstance(idx, Tensor):
        if idx.dtype.kind == "f":
            raise TypeError("indexing with a float Tensor is ambiguous: use an integer index, "
                            "e.g. Tensor(i, dtype=np.int64), or a NumPy bool mask")
        return idx.data
    return idx


# ----------------------------------------------------------------------------- Function


class Function:
    """One differentiable operation, in the shape of early tinygrad's Function.

    `forward(ctx, *tensors, **options)` returns the output ndarray and may `save` what
    backward needs. `backward(ctx, out, grad)` gets the output Tensor and its gradient and
    returns one gradient Tensor per input (or None where none is needed); the engine sums
    away broadcast axes, so rules are written as if shapes matched. A recorded ctx keeps
    `parents` (the input Tensors), `saved` (None once backward has freed it) and `scope`
    (the `name_scope` labels active when it was recorded).

    An op on a training step's hot path may also define `fast_backward(ctx, out, g)`: the
    same rule on plain arrays, returning a tuple of one array (or None) per input, or None
    as a whole where it does not cover the inputs' shapes. The engine uses it whenever no
    graph of the gradient is wanted (no `create_graph`), which skips the per-op cost of
    Tensor arithmetic; `backward` stays the rule for second derivatives, and the tests hold
    the two to the same numbers.
    """

    __slots__ = ("parents", "saved", "scope", "seq")
    parents: tuple[Tensor, ...]
    saved: Any  # the tuple `save` stored; None once backward has freed it
    scope: tuple[str, ...]
    seq: int
    fast_backward: Callable[..., tuple[np.ndarray | None, ...] | None] | None = None

    def save(self, *values: Any) -> None:
        self.saved = values

    @classmethod
    def apply(cls, *parents: Tensor, **options: Any) -> Tensor:
        ctx = cls.__new__(cls)
        ctx.parents, ctx.saved = parents, ()
        try:
            data = np.asarray(ctx.forward(*parents, **options))  # NumPy scalars -> 0-d arrays
        except ValueError as e:
            shapes = " and ".join(str(p.shape) for p in parents)
            raise ValueError(f"{cls.__name__}: input shapes {shapes}: {e}") from None
        if _grad_enabled.get():
            for p in parents:  # a plain loop: any(<generator>) costs more than the check itself
                if p.requires_grad:
                    ctx.scope, ctx.seq = _scope.get(), next(_recorded)
                    return Tensor._wrap(data, ctx)
        return Tensor._wrap(data)

    def forward(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def backward(self, out: Tensor, g: Tensor) -> Tensor | tuple[Tensor | None, ...] | None:
        raise NotImplementedError


# _const(arr): a Tensor that never needs a gradient (masks, one-hot targets), no conversion
_const = Tensor._wrap


# The ops live in ops.py (which needs the Tensor and Function above); methods call them as ops.X.
from . import ops  # noqa: E402
