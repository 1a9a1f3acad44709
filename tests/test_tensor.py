"""The engine: every op's value, gradient and second derivative, its semantics (dtypes, grad
modes, graph lifetime), very deep graphs, and the errors that bad input must get.

Gradients are proven with gradcheck/gradgradcheck (finite differences in float64); values are
compared with NumPy computed independently of the engine.
"""
from __future__ import annotations

import gc
import operator
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_mnist import (
    Function,
    Tensor,
    grad,
    gradcheck,
    gradgradcheck,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)


def rand(shape: tuple, low: float = -2.0, high: float = 2.0, seed: int = 0,
         requires_grad: bool = True) -> Tensor:
    """A float64 tensor of uniform values, reproducible."""
    data = np.random.default_rng(seed).uniform(low, high, shape)
    return Tensor(data, requires_grad=requires_grad)


def away_from_zero(shape: tuple, seed: int = 0) -> Tensor:
    """Values with |x| >= 0.2, for ops with a kink at 0 (finite differences straddle it)."""
    rng = np.random.default_rng(seed)
    data = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)
    return Tensor(np.asarray(data), requires_grad=True)  # shape (): a NumPy scalar otherwise


def distinct(shape: tuple, seed: int = 0) -> Tensor:
    """Values without ties (a shuffled, spaced range), for max's gradgradcheck."""
    n = int(np.prod(shape))
    data = np.random.default_rng(seed).permutation(n).reshape(shape) * 0.37 - 1.0
    return Tensor(np.asarray(data, np.float64), requires_grad=True)


def check_grads(fn: Callable[..., Tensor], *inputs: Tensor, **tol: float) -> None:
    """First and second derivatives both match finite differences."""
    assert gradcheck(fn, inputs, **tol)
    assert gradgradcheck(fn, inputs, **tol)


def recorded_nodes(root: Tensor) -> list[Tensor]:
    """Every tensor in root's graph that was produced by a recorded op."""
    out, seen, stack = [], set(), [root]
    while stack:
        t = stack.pop()
        if id(t) in seen or t._ctx is None:
            continue
        seen.add(id(t))
        out.append(t)
        stack.extend(t._ctx.parents)
    return out


# ----------------------------------------------------------------------------- unary ops

SHAPES = [(), (3,), (2, 3), (2, 1, 3)]
POSITIVE = (0.2, 3.0)
UNARY = {  # name: (engine op, NumPy reference, input range; None means |x| >= 0.2)
    "neg": (lambda x: -x, np.negative, (-2.0, 2.0)),
    "exp": (Tensor.exp, np.exp, (-2.0, 2.0)),
    "log": (Tensor.log, np.log, POSITIVE),
    "sqrt": (Tensor.sqrt, np.sqrt, POSITIVE),
    "relu": (Tensor.relu, lambda a: np.maximum(a, 0.0), None),
    "tanh": (Tensor.tanh, np.tanh, (-2.0, 2.0)),
    "sigmoid": (Tensor.sigmoid, lambda a: 1.0 / (1.0 + np.exp(-a)), (-3.0, 3.0)),
    "square": (lambda x: x ** 2, np.square, (-2.0, 2.0)),
    "cube_negative_base": (lambda x: x ** 3, lambda a: a * a * a, (-2.0, -0.2)),
    "pow_half": (lambda x: x ** 0.5, np.sqrt, POSITIVE),
    "pow_negative": (lambda x: x ** -1.5, lambda a: 1.0 / (a * np.sqrt(a)), POSITIVE),
    "rpow": (lambda x: 2 ** x, lambda a: np.exp2(a), (-2.0, 2.0)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_op_value_and_derivatives(name: str, shape: tuple) -> None:
    op, ref, domain = UNARY[name]
    x = away_from_zero(shape) if domain is None else rand(shape, *domain)
    out = op(x)
    assert out.shape == shape
    np.testing.assert_allclose(out.data, ref(x.data), rtol=1e-12)
    check_grads(op, x)


@pytest.mark.parametrize("op,x0,slope", [(Tensor.log, 1e-3, 1e3),
                                         (Tensor.sqrt, 1e-3, 0.5 / np.sqrt(1e-3))],
                         ids=["log", "sqrt"])
def test_log_and_sqrt_near_the_domain_edge(op: Callable, x0: float, slope: float) -> None:
    """Steep near 0: a small eps keeps the finite difference inside the domain and accurate."""
    x = Tensor(np.array([x0, 2 * x0, 1.0]), requires_grad=True)
    op(x).sum().backward()
    assert x.grad.data[0] == pytest.approx(slope, rel=1e-12)
    check_grads(op, x, eps=1e-7)


def test_relu_gradient_is_a_step() -> None:
    x = Tensor(np.array([-1.5, -0.1, 0.3, 2.0]), requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0.0, 0.0, 1.0, 1.0])


def test_relu_gradients_at_the_edges_first_and_second_order() -> None:
    """No gradient at 0, -0 or NaN, the full one at the smallest positive float; and the
    second derivative through ReLU is exact too."""
    rng = np.random.default_rng(6)
    x_np = rng.standard_normal((256, 256)).astype(np.float32)
    x_np[0, :4] = [0.0, -0.0, np.nan, 1e-45]
    x = Tensor(x_np, requires_grad=True)
    g = rng.standard_normal(x_np.shape).astype(np.float32)
    x.relu().backward(Tensor(g))
    assert np.array_equal(x.grad.data, g * (x_np > 0))
    assert list(x.grad.data[0, :4]) == [0, 0, 0, g[0, 3]]
    x2 = Tensor(np.array([-1.5, 0.0, 2.0, -0.0, 0.5]), requires_grad=True)
    [gx] = grad((x2.relu() * x2).sum(), [x2], create_graph=True)  # d/dx x relu(x) = 2 relu(x)
    [ggx] = grad(gx.sum(), [x2])
    assert list(gx.data) == [0, 0, 4, 0, 1] and list(ggx.data) == [0, 0, 2, 0, 2]


# ----------------------------------------------------------------------------- binary ops

BINARY = {  # name: (operator, range of a, range of b)
    "add": (operator.add, (-2.0, 2.0), (-2.0, 2.0)),
    "sub": (operator.sub, (-2.0, 2.0), (-2.0, 2.0)),
    "mul": (operator.mul, (-2.0, 2.0), (-2.0, 2.0)),
    "truediv": (operator.truediv, (-2.0, 2.0), (0.5, 2.0)),
    "pow": (operator.pow, (0.5, 2.0), (-2.0, 2.0)),
}
BROADCAST_PAIRS = [((), ()), ((3,), ()), ((), (2, 3)), ((1, 3), (2, 1)), ((2, 3), (3,)),
                   ((3, 1), (1, 4)), ((2, 1, 3), (4, 1)), ((2, 3, 2), (2, 3, 2))]


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("name", BINARY)
def test_binary_op_value_and_derivatives(name: str, shapes: tuple) -> None:
    op, a_range, b_range = BINARY[name]
    a, b = rand(shapes[0], *a_range, seed=1), rand(shapes[1], *b_range, seed=2)
    out = op(a, b)
    assert out.shape == np.broadcast_shapes(*shapes)
    np.testing.assert_allclose(out.data, op(a.data, b.data), rtol=1e-12)
    check_grads(op, a, b)


@pytest.mark.parametrize("name", BINARY)
def test_binary_op_with_one_constant_operand(name: str) -> None:
    """Only the operand that requires grad gets one; the other is left alone."""
    op, a_range, b_range = BINARY[name]
    a, b = rand((2, 3), *a_range, seed=1), rand((3,), *b_range, seed=2, requires_grad=False)
    check_grads(lambda x: op(x, b), a)
    a_const = a.detach()
    check_grads(lambda y: op(a_const, y), Tensor(b.data, requires_grad=True))
    op(a, b).sum().backward()
    assert b.grad is None and a.grad.shape == a.shape


@pytest.mark.parametrize("scalar", [3, 1.5], ids=["int", "float"])
@pytest.mark.parametrize("name", BINARY)
def test_python_number_on_either_side(name: str, scalar: float) -> None:
    op = BINARY[name][0]
    x = rand((2, 3), 0.5, 2.0)
    for fn, expected in [(lambda t: op(t, scalar), op(x.data, scalar)),
                         (lambda t: op(scalar, t), op(scalar, x.data))]:
        out = fn(x)
        assert isinstance(out, Tensor) and out.dtype == np.float64
        np.testing.assert_allclose(out.data, expected, rtol=1e-12)
        check_grads(fn, x)


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv,
                                operator.pow, operator.matmul],
                         ids=["add", "sub", "mul", "truediv", "pow", "matmul"])
def test_ndarray_on_either_side(op: Callable) -> None:
    """`ndarray (op) Tensor` must give a Tensor (NumPy must not take over the operator)."""
    arr = np.random.default_rng(5).uniform(0.5, 2.0, (3, 3))
    x = rand((3, 3), 0.5, 2.0)
    for fn, expected in [(lambda t: op(arr, t), op(arr, x.data)),
                         (lambda t: op(t, arr), op(x.data, arr))]:
        out = fn(x)
        assert isinstance(out, Tensor)
        np.testing.assert_allclose(out.data, expected, rtol=1e-12)
        check_grads(fn, x)


MATMUL_SHAPES = [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)),
                 ((2, 2, 3), (2, 3, 4)), ((2, 2, 3), (3, 4)), ((3,), (2, 3, 4)),
                 ((2, 4, 3), (3,)), ((2, 1, 2, 3), (3, 3, 2))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_2d_batched_and_vector_forms(shapes: tuple) -> None:
    a, b = rand(shapes[0], seed=1), rand(shapes[1], seed=2)
    out = a @ b
    expected = np.matmul(a.data, b.data)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)
    check_grads(operator.matmul, a, b)


# ----------------------------------------------------------------------------- reductions

AXES = [None, 0, 1, -1, (0, 2), (-1, 0), ()]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_value_and_derivatives(name: str, axis, keepdims: bool) -> None:
    x = distinct((2, 3, 4))
    fn = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    expected = getattr(np, name)(x.data, axis=axis, keepdims=keepdims)
    out = fn(x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)
    check_grads(fn, x)


@pytest.mark.parametrize("shape", [(), (1,), (5,)], ids=str)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reduction_of_small_shapes(name: str, shape: tuple) -> None:
    x = distinct(shape)
    out = getattr(x, name)()
    assert out.shape == ()
    assert out.item() == pytest.approx(getattr(np, name)(x.data))
    check_grads(lambda t: getattr(t, name)(), x)


def test_mean_gradient_is_one_over_count() -> None:
    x = rand((2, 3, 4))
    x.mean(axis=(0, 2)).sum().backward()
    np.testing.assert_allclose(x.grad.data, np.full((2, 3, 4), 1 / 8))


@pytest.mark.parametrize("keepdims", [False, True])
def test_max_splits_the_gradient_evenly_among_ties(keepdims: bool) -> None:
    """Max is not differentiable at a tie; the engine's documented choice is an even split."""
    x = Tensor(np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0]]), requires_grad=True)
    out = x.max(axis=1, keepdims=keepdims)
    np.testing.assert_array_equal(out.data.reshape(-1), [3.0, 2.0])
    out.backward(np.array([[1.0], [6.0]]) if keepdims else np.array([1.0, 6.0]))
    np.testing.assert_allclose(x.grad.data, [[0, 0.5, 0.5, 0], [2, 2, 2, 0]])

    y = Tensor(np.array([5.0, 1.0, 5.0, 5.0]), requires_grad=True)
    y.max().backward()
    np.testing.assert_allclose(y.grad.data, [1 / 3, 0, 1 / 3, 1 / 3])


def test_max_with_a_tie_passes_first_order_gradcheck() -> None:
    """A two-way tie: the central difference (1 + 0) / 2 equals the even split, so gradcheck
    agrees; gradgradcheck is not run, max has no second derivative at a tie."""
    x = Tensor(np.array([[0.5, 2.0, 2.0], [1.0, -1.0, 0.0]]), requires_grad=True)
    assert gradcheck(lambda t: t.max(axis=1), x)


# ----------------------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "reshape_flat": (lambda t: t.reshape(-1), lambda a: a.reshape(-1)),
    "reshape_args": (lambda t: t.reshape(3, 2, 2), lambda a: a.reshape(3, 2, 2)),
    "reshape_list": (lambda t: t.reshape([4, -1]), lambda a: a.reshape(4, 3)),
    "transpose_default": (lambda t: t.transpose(), lambda a: a.transpose()),
    "transpose_args": (lambda t: t.transpose(1, 0, 2), lambda a: a.transpose(1, 0, 2)),
    "transpose_tuple": (lambda t: t.transpose((2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
    "T": (lambda t: t.T, lambda a: a.T),
    "T_of_2d": (lambda t: t[0].T, lambda a: a[0].T),
    "broadcast_prepend": (lambda t: t.broadcast_to((4, 2, 3, 2)),
                          lambda a: np.broadcast_to(a, (4, 2, 3, 2))),
}


@pytest.mark.parametrize("name", SHAPE_OPS)
def test_shape_op_value_and_derivatives(name: str) -> None:
    op, ref = SHAPE_OPS[name]
    x = rand((2, 3, 2))
    out = op(x)
    np.testing.assert_array_equal(out.data, ref(x.data))
    check_grads(op, x)


def test_transpose_with_negative_axes() -> None:
    x = rand((2, 3, 4))
    out = x.transpose(-1, 0, 1)
    np.testing.assert_array_equal(out.data, x.data.transpose(-1, 0, 1))
    out.sum().backward()
    assert x.grad.shape == x.shape
    check_grads(lambda t: t.transpose(-1, 0, 1), x)


@pytest.mark.parametrize("src,dst", [((), (2, 3)), ((3,), (2, 3)), ((2, 1), (2, 3)),
                                     ((1, 3), (4, 2, 3))], ids=str)
def test_broadcast_to(src: tuple, dst: tuple) -> None:
    x = rand(src)
    out = x.broadcast_to(dst)
    np.testing.assert_array_equal(out.data, np.broadcast_to(x.data, dst))
    check_grads(lambda t: t.broadcast_to(dst), x)


MASK = np.array([True, False, True, True])
INDICES = {
    "int": np.s_[1],
    "negative_int": np.s_[-1, 2],
    "slice": np.s_[1:3],
    "negative_step": np.s_[::-1, 2:0:-1],
    "none_and_ellipsis": np.s_[None, ..., ::-2],
    "ellipsis_int": np.s_[..., 1],
    "none_middle": np.s_[1, :, None],
    "int_array_repeated": np.s_[[0, 2, 2, 0]],
    "int_array_2d": np.s_[np.array([[1, 1], [0, 3]])],
    "int_arrays_paired": np.s_[np.array([0, 0, 3]), np.array([2, 2, 0])],
    "int_array_and_slice": np.s_[[3, 3, 1], 1:],
    "bool_mask_axis0": np.s_[MASK],
    "bool_mask_full": np.s_[np.arange(24).reshape(4, 3, 2) % 3 == 0],
}


@pytest.mark.parametrize("name", INDICES)
def test_getitem_value_and_derivatives(name: str) -> None:
    idx = INDICES[name]
    x = rand((4, 3, 2))
    out = x[idx]
    np.testing.assert_array_equal(out.data, x.data[idx])
    check_grads(lambda t: t[idx], x)


def test_getitem_repeated_indices_accumulate() -> None:
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    x[[0, 0, 0, 2]].sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 0.0, 1.0])
    y = Tensor(np.zeros((2, 2)), requires_grad=True)
    y[np.array([1, 1]), np.array([0, 0])].backward(np.array([2.0, 5.0]))
    np.testing.assert_array_equal(y.grad.data, [[0.0, 0.0], [7.0, 0.0]])


# ----------------------------------------------------------------------------- softmax


def _softmax_ref(a: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("shape,axis", [((4,), -1), ((2, 3), -1), ((2, 3), 0), ((2, 3, 4), 1),
                                        ((2, 3, 4), -3)], ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_value_and_derivatives(name: str, shape: tuple, axis: int) -> None:
    x = rand(shape)
    ref = _softmax_ref(x.data, axis)
    out = getattr(x, name)(axis=axis)
    np.testing.assert_allclose(out.data, ref if name == "softmax" else np.log(ref), rtol=1e-12)
    check_grads(lambda t: getattr(t, name)(axis=axis), x)


def test_softmax_is_stable_for_large_inputs() -> None:
    x = Tensor(np.array([1000.0, 1001.0, 1002.0]), requires_grad=True)
    with np.errstate(all="raise"):
        np.testing.assert_allclose(x.softmax().data, _softmax_ref(np.array([0.0, 1.0, 2.0]), -1))
        np.testing.assert_allclose(x.log_softmax().data,
                                   np.log(_softmax_ref(np.array([0.0, 1.0, 2.0]), -1)))
        x.log_softmax()[2].backward()
    assert np.isfinite(x.grad.data).all()


LINEAR_IN_G = {  # ops whose backward rules are checked as functions of the output gradient
    "getitem_repeated": lambda t: t[[0, 2, 2], ::-1],
    "broadcast_to": lambda t: t.broadcast_to((2, 3, 4)),
    "sum": lambda t: t.sum(axis=0),
    "max": lambda t: t.max(axis=-1, keepdims=True),
    "matmul": lambda t: t @ t.T,
    "transpose": lambda t: t.T,
    "reshape": lambda t: t.reshape(4, 3),
    "softmax": lambda t: t.softmax(axis=0),
}


@pytest.mark.parametrize("name", LINEAR_IN_G)
def test_gradient_is_differentiable_in_the_output_gradient(name: str) -> None:
    """d(vjp)/d(grad_output) is the forward-mode derivative: the backward rules (GetItem's
    ScatterAdd included) must themselves be recorded, not computed on raw arrays."""
    op = LINEAR_IN_G[name]
    x = distinct((3, 4))
    out_shape = op(x).shape

    def vjp(v: Tensor) -> Tensor:
        return grad(op(x), [x], grad_output=v, create_graph=True)[0]

    check_grads(vjp, rand(out_shape, seed=4))


# ----------------------------------------------------------------------------- property tests

SMALL = dict(max_examples=30, deadline=None)


@st.composite
def broadcast_pair(draw: st.DrawFn, a_range: tuple[float, float],
                   b_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3,
                                                    max_side=3)).input_shapes
    a = draw(hnp.arrays(np.float64, shapes[0], elements=st.floats(*a_range)))
    b = draw(hnp.arrays(np.float64, shapes[1], elements=st.floats(*b_range)))
    return Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)


def _unbroadcast_ref(g: np.ndarray, shape: tuple) -> np.ndarray:
    """NumPy reference: sum g over the axes broadcasting added or stretched."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


@settings(**SMALL)
@given(pair=broadcast_pair((-2, 2), (-2, 2)), name=st.sampled_from(["add", "sub", "mul"]))
def test_property_broadcast_binary_gradients(pair: tuple[Tensor, Tensor], name: str) -> None:
    a, b = pair
    op = BINARY[name][0]
    out = op(a, b)
    np.testing.assert_array_equal(out.data, op(a.data, b.data))
    out.sum().backward()
    ones = np.ones(out.shape)
    da, db = {"add": (ones, ones), "sub": (ones, -ones),
              "mul": (b.data * ones, a.data * ones)}[name]
    np.testing.assert_allclose(a.grad.data, _unbroadcast_ref(da, a.shape).reshape(a.shape))
    np.testing.assert_allclose(b.grad.data, _unbroadcast_ref(db, b.shape).reshape(b.shape))


@settings(**SMALL)
@given(pair=broadcast_pair((0.5, 2), (0.5, 2)), name=st.sampled_from(list(BINARY)))
def test_property_broadcast_binary_gradcheck(pair: tuple[Tensor, Tensor], name: str) -> None:
    """Positive operands keep division and pow inside their domains."""
    assert gradcheck(BINARY[name][0], pair)


@st.composite
def reduction_case(draw: st.DrawFn) -> tuple[np.ndarray, object, bool]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    data = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0])))
    ndim = len(shape)
    axis = draw(st.none() | st.integers(-ndim, ndim - 1)
                | st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).map(
                    lambda axes: tuple(a - ndim if a % 2 else a for a in axes)))
    return data, axis, draw(st.booleans())


@settings(**SMALL)
@given(case=reduction_case(), name=st.sampled_from(["sum", "mean", "max"]))
def test_property_reductions(case: tuple, name: str) -> None:
    """Values as NumPy's, gradients by NumPy reference: ties (frequent here) split evenly."""
    data, axis, keepdims = case
    x = Tensor(data, requires_grad=True)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    expected = getattr(np, name)(data, axis=axis, keepdims=keepdims)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected)
    out.sum().backward()
    ones = np.ones(data.shape)
    if name == "sum":
        ref = ones
    elif name == "mean":
        ref = ones * expected.size / data.size
    else:
        mask = data == np.max(data, axis=axis, keepdims=True)
        ref = mask / mask.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(x.grad.data, ref)


# ----------------------------------------------------------------------------- dtypes

DTYPE_OPS = {
    "add": lambda x: x + 1, "radd": lambda x: 1 + x, "sub": lambda x: x - 2.5,
    "rsub": lambda x: 1 - x, "mul": lambda x: x * 3, "rmul": lambda x: 0.5 * x,
    "div": lambda x: x / 3, "rdiv": lambda x: 2.0 / x, "pow": lambda x: x ** 2,
    "pow_float": lambda x: x ** 0.5, "rpow": lambda x: 2 ** x, "neg": lambda x: -x,
    "matmul": lambda x: x @ x.T, "sum": lambda x: x.sum(axis=0), "mean": lambda x: x.mean(),
    "max": lambda x: x.max(axis=-1), "exp": Tensor.exp, "log": Tensor.log,
    "sqrt": Tensor.sqrt, "relu": Tensor.relu, "tanh": Tensor.tanh, "sigmoid": Tensor.sigmoid,
    "reshape": lambda x: x.reshape(-1), "transpose": lambda x: x.transpose(),
    "getitem": lambda x: x[[0, 0], ::-1], "log_softmax": Tensor.log_softmax,
    "softmax": Tensor.softmax, "broadcast_to": lambda x: x.broadcast_to((2, 2, 3)),
    "astype_same": lambda x: x.astype(x.dtype),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", DTYPE_OPS)
def test_dtype_is_kept_through_every_op(name: str, dtype: type) -> None:
    """No silent upcast: Python numbers take the tensor's dtype, and so do the gradients."""
    x = Tensor(np.random.default_rng(0).uniform(0.5, 2.0, (2, 3)).astype(dtype), requires_grad=True)
    out = DTYPE_OPS[name](x)
    assert out.dtype == dtype
    out.sum().backward()
    assert x.grad.dtype == dtype


def test_astype_converts_and_its_gradient_comes_back_in_the_source_dtype() -> None:
    x = rand((2, 3))
    y = x.astype(np.float32)
    assert y.dtype == np.float32 and y.data is not x.data
    np.testing.assert_array_equal(y.data, x.data.astype(np.float32))
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad.data, (2 * y.data).astype(np.float64))
    check_grads(lambda t: t.astype(np.float64) * t, rand((3,)))  # float64 -> float64: checkable


def test_mixed_dtypes_give_each_input_a_gradient_of_its_own_dtype() -> None:
    """float32 * float64 computes in float64 (NumPy's rule); as in PyTorch, each .grad has the
    dtype of its tensor, so a float32 parameter keeps float32 gradients and optimizer state."""
    w = Tensor(np.array([1.5, -2.0, 0.25], np.float32), requires_grad=True)
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    out = (w * x).sum()
    assert out.dtype == np.float64
    out.backward(create_graph=True)
    assert w.grad.dtype == np.float32 and x.grad.dtype == np.float64
    np.testing.assert_array_equal(w.grad.data, x.data.astype(np.float32))
    np.testing.assert_array_equal(x.grad.data, w.data.astype(np.float64))
    (gx,) = grad((w.grad * w.grad).sum(), [x])  # the float32 gradient still differentiates
    assert gx.dtype == np.float64
    np.testing.assert_allclose(gx.data, 2 * x.data)


def test_constructor_dtype_rules() -> None:
    f64, f32 = np.ones(3), np.ones(3, np.float32)
    assert Tensor(f64).dtype == np.float64 and Tensor(f64).data is f64  # used as is
    assert Tensor(f32).dtype == np.float32
    for data in ([1, 2], [1.5, 2.5], 3, 2.5, True, np.arange(3), np.array([True, False])):
        assert Tensor(data).dtype == np.float32, data
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(f64, dtype=np.float32).dtype == np.float32
    assert Tensor(np.arange(3), dtype=np.int64).dtype == np.int64
    assert Tensor(np.arange(3), requires_grad=True).requires_grad  # ints became float32


def test_numpy_of_a_reduced_tensor_is_an_ndarray_of_the_same_dtype() -> None:
    s = Tensor(np.ones((2, 3))).sum()
    assert isinstance(s.numpy(), np.ndarray)
    assert Tensor(s.numpy()).dtype == np.float64  # round trip keeps float64


# ----------------------------------------------------------------------------- semantics


def test_scalar_root_is_seeded_with_one() -> None:
    x = rand((3,))
    (x * 4.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, np.full(3, 4.0))
    w = Tensor(np.array([[2.0]]), requires_grad=True)  # one element, not 0-d: still a scalar
    (w * w).backward()
    np.testing.assert_array_equal(w.grad.data, [[4.0]])


def test_grads_accumulate_across_backward_calls() -> None:
    x = rand((3,))
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.data, 2 * x.data + 3.0)


def test_intermediates_keep_grad_only_when_asked() -> None:
    x = rand((2, 3))
    h, k = x * 2.0, x * 3.0
    h.retain_grad()
    (h * h + k).sum().backward()
    np.testing.assert_allclose(h.grad.data, 2 * h.data)
    assert k.grad is None  # freed once used, as in PyTorch
    np.testing.assert_allclose(x.grad.data, 8 * x.data + 3.0)


def test_zero_grad() -> None:
    x = rand((3,))
    x.sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, np.full(3, 2.0))


def test_backward_with_an_explicit_grad() -> None:
    x = rand((2, 3))
    v = np.arange(6.0).reshape(2, 3)
    (x * 2.0).backward(v)
    np.testing.assert_array_equal(x.grad.data, 2 * v)


def test_no_grad_as_context_manager() -> None:
    x = rand((3,))
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0 + 1.0
    assert is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    np.testing.assert_array_equal(y.data, x.data * 2.0 + 1.0)


def test_no_grad_as_decorator_and_restored_after_an_exception() -> None:
    @no_grad()
    def step(t: Tensor) -> Tensor:
        assert not is_grad_enabled()
        return t.exp()

    out = step(rand((2,)))
    assert not out.requires_grad and out._ctx is None
    assert is_grad_enabled()
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert is_grad_enabled()
    with set_grad_enabled(False):
        with set_grad_enabled(True):
            assert (rand((2,)) * 2.0).requires_grad
        assert not is_grad_enabled()


def test_detach_shares_data_and_stops_gradients() -> None:
    x = rand((3,))
    d = x.detach()
    assert d.data is x.data and not d.requires_grad and d._ctx is None
    (x * x.detach()).sum().backward()
    np.testing.assert_allclose(x.grad.data, x.data)  # not 2x: the detached factor is constant


def test_item_numpy_and_T() -> None:
    x = Tensor(np.arange(6.0).reshape(2, 3))
    assert x.numpy() is x.data
    s = x.sum().item()
    assert type(s) is float and s == 15.0
    np.testing.assert_array_equal(x.T.data, x.data.T)
    assert Tensor(np.arange(3.0)).T.shape == (3,)


def test_grad_function_returns_without_storing() -> None:
    x, y, unused = rand((2, 3), seed=1), rand((3,), seed=2), rand((2,), seed=3)
    h = x * y
    gx, gy, gu = grad(h.sum(), [x, y, unused])
    np.testing.assert_allclose(gx.data, np.broadcast_to(y.data, (2, 3)))
    np.testing.assert_allclose(gy.data, x.data.sum(axis=0))
    assert gu is None
    assert x.grad is None and y.grad is None and h.grad is None
    (gv,) = grad(x.exp(), [x], grad_output=np.full((2, 3), 2.0))
    np.testing.assert_allclose(gv.data, 2 * np.exp(x.data))


def test_second_derivative_via_backward_create_graph() -> None:
    x = rand((4,), seed=7)
    (x ** 3).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    np.testing.assert_allclose(g.data, 3 * x.data ** 2)
    x.zero_grad()
    g.sum().backward()
    np.testing.assert_allclose(x.grad.data, 6 * x.data)


def test_hessian_vector_product_of_an_mlp_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    inputs = Tensor(rng.standard_normal((5, 4)))
    labels = np.array([0, 2, 1, 1, 0])
    w2 = Tensor(rng.standard_normal((6, 3)) * 0.5)

    def loss(w1: Tensor) -> Tensor:
        logits = (inputs @ w1).tanh() @ w2
        return -logits.log_softmax(axis=-1)[np.arange(5), labels].mean()

    def gradient(w: np.ndarray) -> np.ndarray:
        leaf = Tensor(w, requires_grad=True)
        return grad(loss(leaf), [leaf])[0].data

    w1 = Tensor(rng.standard_normal((4, 6)) * 0.5, requires_grad=True)
    v = rng.standard_normal(w1.shape)
    (g,) = grad(loss(w1), [w1], create_graph=True)
    (hv,) = grad((g * v).sum(), [w1])
    eps = 1e-5
    fd = (gradient(w1.data + eps * v) - gradient(w1.data - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.data, fd, rtol=1e-5, atol=1e-8)
    assert np.abs(hv.data).max() > 1e-3  # a non-trivial Hessian, not a vacuous match


# ----------------------------------------------------------------------------- deep graphs, lifetime

DEPTH = 100_000


def test_deep_chain_backward_and_delete() -> None:
    """Backward and deallocation must not recurse per node: 200,000 ops in a chain."""
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(DEPTH):
        y = y * 1.0000001 + 0
    y.backward()
    assert x.grad.item() == pytest.approx(1.0000001 ** DEPTH, rel=1e-12)
    del y
    gc.collect()


def test_deep_chain_delete_without_backward() -> None:
    """An unfreed graph (saved tensors still held) must also deallocate without crashing."""
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(DEPTH):
        y = y + 1e-6
    assert y.item() == pytest.approx(0.5 + DEPTH * 1e-6, rel=1e-9)
    del y
    gc.collect()


def test_backward_frees_the_graph_and_a_second_backward_raises() -> None:
    x = rand((3,))
    y = (x.exp() * x).sum()
    nodes = recorded_nodes(y)
    assert len(nodes) == 3
    y.backward()
    assert all(n._ctx.saved is None for n in nodes)
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward_that_accumulates() -> None:
    x = rand((3,))
    h = x.exp() * x
    h.retain_grad()
    y = h.sum()
    y.backward(retain_graph=True)
    first_x, first_h = x.grad.data.copy(), h.grad.data.copy()
    assert all(n._ctx.saved is not None for n in recorded_nodes(y))
    y.backward()
    np.testing.assert_allclose(x.grad.data, 2 * first_x)
    np.testing.assert_allclose(h.grad.data, 2 * first_h)
    np.testing.assert_allclose(first_x, np.exp(x.data) * (1 + x.data))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("op,name", [(operator.add, "Add"), (operator.sub, "Sub"),
                                     (operator.mul, "Mul"), (operator.truediv, "Div"),
                                     (operator.pow, "Pow")])
def test_mismatched_shapes_name_the_op_and_both_shapes(op: Callable, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}.*\(2, 3\).*\(4,\)"):
        op(rand((2, 3)), rand((4,)))


def test_matmul_mismatch_names_the_op_and_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"MatMul.*\(2, 3\).*\(4, 5\)"):
        rand((2, 3)) @ rand((4, 5))


def test_non_numeric_data_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="numbers.*object"):
        Tensor(np.array([1, None], dtype=object))
    with pytest.raises(TypeError, match="numbers.*<U"):
        Tensor(["a", "b"])


def test_requires_grad_on_integer_data_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="requires_grad=True needs floating-point.*int64"):
        Tensor(np.arange(3), dtype=np.int64, requires_grad=True)


def test_tensor_of_a_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="got a Tensor"):
        Tensor(rand((2,)))


def test_backward_errors() -> None:
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(2, 3\)"):
        (rand((2, 3)) * 2.0).backward()
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected.*\(2, 3\)"):
        (rand((2, 3)) * 2.0).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        rand((2,), requires_grad=False).sum().backward()
    with no_grad():
        y = rand((2,)).sum()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


@pytest.mark.parametrize("expr", [lambda t: t + "a", lambda t: "a" * t, lambda t: t - None,
                                  lambda t: None / t, lambda t: t @ object(), lambda t: t ** {}],
                         ids=["add_str", "rmul_str", "sub_none", "rdiv_none", "matmul_object",
                              "pow_dict"])
def test_unsupported_operand_is_a_type_error(expr: Callable) -> None:
    with pytest.raises(TypeError, match="unsupported operand"):
        expr(rand((2,)))


@pytest.mark.parametrize("expr", [lambda t: t.sum(axis=3), lambda t: t.mean(axis=-4),
                                  lambda t: t.max(axis=(0, 5)), lambda t: t.softmax(axis=3),
                                  lambda t: t.log_softmax(axis=-4), lambda t: t.transpose(0, 1, 3)],
                         ids=["sum", "mean", "max", "softmax", "log_softmax", "transpose"])
def test_out_of_range_axis_is_a_value_error(expr: Callable) -> None:
    with pytest.raises(ValueError, match=r"axis -?\d+ is out of (range|bounds)"):
        expr(rand((2, 3, 4)))


def test_a_backward_rule_with_a_wrong_shaped_gradient_is_an_error() -> None:
    class BadSum(Function):
        def forward(ctx, x):
            return x.data * 2

        def backward(ctx, out, g):
            return g.sum()  # shape () for a (3,) input: a bug in the rule

    x = rand((3,))
    with pytest.raises(RuntimeError, match=r"BadSum.backward returned a gradient of shape \(\) "
                                           r"for an input of shape \(3,\)"):
        BadSum.apply(x).sum().backward()


def test_a_backward_rule_with_too_few_gradients_is_an_error() -> None:
    class HalfMul(Function):
        def forward(ctx, x, y):
            ctx.save(x, y)
            return x.data * y.data

        def backward(ctx, out, g):
            x, y = ctx.saved
            return (g * y,)  # forgot y's gradient: zip would silently leave y.grad empty

    x, y = rand((3,)), rand((3,))
    with pytest.raises(RuntimeError, match=r"HalfMul.backward returned 1 gradients for 2 inputs"):
        HalfMul.apply(x, y).sum().backward()


def test_indexing_with_a_float_tensor_is_refused() -> None:
    x = rand((3, 2))
    with pytest.raises(TypeError, match="float Tensor is ambiguous"):
        x[Tensor(np.array([True, False, True]))]
    np.testing.assert_array_equal(x[Tensor(np.array([2, 0]), dtype=np.int64)].data,
                                  x.data[[2, 0]])


# ----------------------------------------------------------------------------- found by differential testing


def test_pow_at_base_zero_has_the_limits_as_gradients() -> None:
    """x ** 0 is 1 for every x (d/dx = 0, also at x = 0), and 0 ** y for y > 0 is 0 for
    every y (d/dy = 0); second derivatives stay finite where the first ones are."""
    x = Tensor(np.array([0.0, 0.0, 2.0]), requires_grad=True)
    y = Tensor(np.array([0.0, 2.0, 0.0]), requires_grad=True)
    (x ** y).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(y.grad.data, [0.0, 0.0, np.log(2.0)])
    gx, gy = grad((x ** y).sum(), [x, y], create_graph=True)
    for first in (gx, gy):
        for second in grad(first.sum(), [x, y], retain_graph=True):
            assert np.isfinite(second.data).all(), second
    (gx,) = grad((x ** y).sum(), [x], create_graph=True)
    np.testing.assert_allclose(grad(gx.sum(), [x])[0].data, [0.0, 2.0, 0.0])  # y(y-1)x^(y-2)


def test_pow_away_from_zero_still_matches_finite_differences() -> None:
    check_grads(lambda a, b: a ** b, rand((2, 3), 0.3, 2.0), rand((2, 3), -1.5, 2.0, seed=1))
    check_grads(lambda a: a ** 0.0 + a ** 3.0, rand((3,), 0.3, 2.0))
    # an exponent of exactly 0 with x > 0: d²/dxdy = 1/x there (the fuzzer found this one)
    check_grads(lambda a, b: a ** b, rand((3,), 0.3, 2.0),
                Tensor(np.array([0.0, 1.0, 2.0]), requires_grad=True))


def test_each_grad_owns_its_array() -> None:
    x, w = rand((3,)), rand((3,), seed=1)
    (x + w).sum().backward()
    assert not np.shares_memory(x.grad.data, w.grad.data)
    for p in (x, w):  # clipping every parameter's gradient in place halves each once
        p.grad.data *= 0.5
    np.testing.assert_array_equal(x.grad.data, np.full(3, 0.5))
    np.testing.assert_array_equal(w.grad.data, np.full(3, 0.5))


def test_grad_does_not_take_over_the_callers_seed_or_a_view_of_it() -> None:
    seed = np.array([1.0, 2.0, 3.0])
    x, z = rand((3,)), rand((1, 3), seed=1)
    (x + 1.0).backward(seed)
    assert not np.shares_memory(x.grad.data, seed)
    (z.reshape(3) * 1.0 + 0.0).backward(Tensor(seed))
    assert not np.shares_memory(z.grad.data, seed)
    x.grad.data[...] = 0
    np.testing.assert_array_equal(seed, [1.0, 2.0, 3.0])
    y = rand((3,), seed=2)
    y.retain_grad()
    (y + x).backward(seed)  # a retained intermediate's gradient is its own too
    assert not np.shares_memory(y.grad.data, x.grad.data)


def test_accumulating_across_backward_calls_never_writes_into_a_held_array() -> None:
    x = rand((3,))
    (x * 2.0).sum().backward()
    first = x.grad
    held = first.data.copy()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(first.data, held)  # the old gradient Tensor is untouched
    np.testing.assert_array_equal(x.grad.data, np.full(3, 5.0))


def test_grad_returns_arrays_of_their_own() -> None:
    x, w = rand((3,)), rand((3,), seed=1)
    gx, gw = grad((x + w).sum(), [x, w])
    assert not np.shares_memory(gx.data, gw.data)
    gx2, gw2 = grad((x + w).sum(), [x, w], create_graph=True)  # copies stay in the graph
    assert not np.shares_memory(gx2.data, gw2.data)


def test_integer_cast_is_not_differentiable() -> None:
    x = Tensor(np.array([1.5, 2.5]), requires_grad=True)
    i = x.astype(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad
    np.testing.assert_array_equal(i.data, [1, 2])
    out = (i * 2.5).sum() + x.sum()
    out.backward()
    np.testing.assert_array_equal(x.grad.data, [1.0, 1.0])  # only the x.sum() path
    assert not x.astype(bool).requires_grad


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_a_scalar_has_zero_gradient(name: str) -> None:
    x = Tensor(np.array(0.7), requires_grad=True)
    y = getattr(x, name)()
    assert y.shape == ()
    np.testing.assert_allclose(y.data, 1.0 if name == "softmax" else 0.0)
    y.backward()
    np.testing.assert_array_equal(x.grad.data, 0.0)


def test_mean_of_nothing_is_nan_as_in_numpy() -> None:
    assert np.isnan(Tensor(np.zeros((0,))).mean().item())
    m = Tensor(np.zeros((3, 0))).mean(axis=1)
    assert m.shape == (3,) and np.isnan(m.data).all()
    np.testing.assert_array_equal(Tensor(np.zeros((0, 3))).mean(axis=0).data.shape, (3,))


def test_list_and_integer_operands_take_the_tensors_float_dtype() -> None:
    x64 = Tensor(np.array([1.0]))
    assert (x64 + [0.1]).data[0] == 1.1
    assert (x64 + np.array([1], np.int64)).dtype == np.float64
    assert ([0.1] * x64).dtype == np.float64
    x32 = Tensor(np.array([1.0], np.float32))
    assert (x32 + [0.1]).dtype == np.float32
    assert (x32 + np.array([0.1])).dtype == np.float64  # a float array keeps its own (NumPy's rule)


# ----------------------------------------------------------------------------- bad input, clearly named


@pytest.mark.parametrize("expr", [lambda t: t.sum(axis=1.5), lambda t: t.mean(axis=(0, 1.0)),
                                  lambda t: t.max(axis="0"), lambda t: t.softmax(axis=(0, 1)),
                                  lambda t: t.sum(axis=True)],
                         ids=["sum_float", "mean_tuple_float", "max_str", "softmax_tuple", "bool"])
def test_non_integer_axis_is_a_type_error_naming_axis(expr: Callable) -> None:
    with pytest.raises(TypeError, match="axis must be"):
        expr(rand((2, 3)))


def test_repeated_axis_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="same dimension twice"):
        rand((2, 3)).sum(axis=(1, -1))


@pytest.mark.parametrize("make", [lambda: Tensor(1, dtype=str), lambda: Tensor([1.0]).astype(str),
                                  lambda: Tensor([1.0]).astype(object),
                                  lambda: Tensor([1.0], dtype=np.complex128),
                                  lambda: Tensor([1.0], dtype="nonsense")],
                         ids=["tensor_str", "astype_str", "astype_object", "complex", "unknown"])
def test_non_numeric_dtype_is_refused(make: Callable) -> None:
    with pytest.raises(TypeError, match="dtype must be a float, int or bool type"):
        make()


def test_grad_with_respect_to_a_non_tensor_is_a_type_error() -> None:
    x = rand((2,))
    with pytest.raises(TypeError, match=r"inputs\[1\] is a ndarray, expected a Tensor"):
        grad((x * x).sum(), [x, np.ones(2)])
    with pytest.raises(TypeError, match="must be a list of Tensors"):
        grad((x * x).sum(), x)


def test_repr_of_an_op_output_names_the_op() -> None:
    x = Tensor(np.array([0.5]), requires_grad=True, name="x")
    assert repr(x) == "Tensor([0.5], dtype=float64, requires_grad=True, name='x')"
    assert repr(x.tanh()) == "Tensor([0.4621], dtype=float64, grad_fn=Tanh)"
    assert "grad_fn=Add" in repr(x + 1) and "grad_fn=MatMul" in repr(x @ x)
    with no_grad():
        assert repr(x.tanh()) == "Tensor([0.4621], dtype=float64)"
