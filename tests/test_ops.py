"""Every op's value, gradient and second derivative: unary, binary (with broadcasting), matmul,
reductions, shape ops, indexing, softmax, property tests over random shapes, and dtypes.

Gradients are proven with gradcheck/gradgradcheck (finite differences in float64); values are
compared with NumPy computed independently of the engine.
"""
from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensor_helpers import away_from_zero, check_grads, distinct, rand

from tinygrad_mnist import (
    Tensor,
    grad,
    gradcheck,
)

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


# ----------------------------------------------------------------------------- margin


@pytest.mark.parametrize("target", [0, 2, 4])
def test_margin_value_and_derivatives(target: int) -> None:
    """The saliency's objective: z[target] minus the log-sum-exp of the other classes."""
    from tinygrad_mnist.ops import Margin
    z = rand((3, 5), low=-3, high=3, seed=target)
    expected = z.data[:, target] - np.log(np.exp(np.delete(z.data, target, axis=1)).sum(axis=1))
    np.testing.assert_allclose(Margin.apply(z, target=target).data, expected, rtol=1e-12)
    check_grads(lambda x: Margin.apply(x, target=target), z)
    big = Tensor(np.array([[1000.0, -1000.0, 999.0]]), requires_grad=True)  # stays finite
    assert np.isfinite(Margin.apply(big, target=0).data).all()
