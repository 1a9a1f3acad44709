"""The errors bad input must get from the engine: each names what was wrong and what was
expected, as a TypeError, ValueError or RuntimeError (never a bare NumPy or Python error)."""
from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import pytest
from tensor_helpers import rand

from tinygrad_mnist import (
    Function,
    Tensor,
    grad,
    no_grad,
)

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


@pytest.mark.parametrize("wrong", [lambda g: g.data, lambda g: [g], lambda g: 1.0])
def test_a_backward_rule_that_returns_no_tensor_is_a_clear_error(wrong: Callable) -> None:
    """A hand-written rule returning an ndarray, a list or a number is named, not an
    AttributeError from deep inside the walk."""
    class Twice(Function):
        def forward(ctx, x):
            return x.data * 2

        def backward(ctx, out, g):
            return wrong(g)

    with pytest.raises(TypeError, match=r"Twice.backward returned a \w+ as a gradient; expected a "
                                        r"Tensor"):
        Twice.apply(rand((3,))).sum().backward()
