"""gradcheck and gradgradcheck themselves: they pass right ops and, above all, catch wrong ones.

The wrong ops are tiny `Function`s with a deliberate bug; a checker that let one of them
through would make every gradient test in the suite meaningless.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from tinygrad_mnist import Function, GradcheckError, Tensor, grad, gradcheck, gradgradcheck
from tinygrad_mnist.tensor import _const


class BadExp(Function):
    """exp whose gradient is off by a factor 2 at input element (1, 2) only."""

    def forward(ctx, x):
        return np.exp(x.data)

    def backward(ctx, out, g):
        factor = np.ones(out.shape)
        factor[1, 2] = 2.0
        return g * out * _const(factor)


class BadFlip(Function):
    """Reverses a vector, but backward forgets to reverse the gradient back. The sum of the
    output has the right gradient, so only a check with a non-uniform vector v catches it."""

    def forward(ctx, x):
        return x.data[::-1].copy()

    def backward(ctx, out, g):
        return g


class SquareConstBackward(Function):
    """x*x with a correct gradient 2*x*g, built from a constant copy of x: right values, but
    the gradient's own graph loses its dependence on x, so second derivatives are wrong."""

    def forward(ctx, x):
        ctx.save(x)
        return x.data * x.data

    def backward(ctx, out, g):
        return g * _const(2 * ctx.saved[0].data)


class Square(Function):
    """x*x done right: the gradient is built from the graph tensor x."""

    def forward(ctx, x):
        ctx.save(x)
        return x.data * x.data

    def backward(ctx, out, g):
        return g * ctx.saved[0] * 2.0


def rand(shape: tuple, seed: int = 0, name: str | None = None) -> Tensor:
    data = np.random.default_rng(seed).uniform(-1.0, 1.0, shape)
    return Tensor(data, requires_grad=True, name=name)


def test_correct_ops_pass() -> None:
    a, b, w = rand((2, 3), 1), rand((3,), 2), rand((3, 4), 3)
    assert gradcheck(lambda x, y: (x * y).tanh() @ w, [a, b])
    assert gradgradcheck(lambda x, y: ((x - y) ** 2).sum(axis=0).log_softmax(), [a, b])
    assert gradcheck(lambda x: Square.apply(x), rand((4,)))
    assert gradgradcheck(lambda x: Square.apply(x), rand((4,)))


def test_inputs_without_requires_grad_are_not_checked_but_used() -> None:
    const = Tensor(np.array([2.0, 3.0]))
    assert gradcheck(lambda x, c: x * c, [rand((2,)), const])


def test_an_input_the_output_does_not_depend_on_has_zero_gradient() -> None:
    assert gradcheck(lambda x, y: x * 2.0, [rand((2,), 1), rand((3,), 2)])


def test_wrong_gradient_names_input_element_and_both_values() -> None:
    a, x = rand((2, 3), 1), rand((2, 3), 2, name="x")
    with pytest.raises(GradcheckError) as err:
        gradcheck(lambda p, q: p.sum() + BadExp.apply(q).sum(), [a, x])
    msg = str(err.value)
    m = re.search(r"input 1 \('x'\) at element \(1, 2\): numerical (\S+), analytic (\S+)", msg)
    assert m, msg
    true_grad = np.exp(x.data[1, 2])  # a scalar output: v is 1, so these are the raw values
    assert float(m.group(1)) == pytest.approx(true_grad, rel=1e-6)
    assert float(m.group(2)) == pytest.approx(2 * true_grad, rel=1e-6)


def test_unnamed_input_is_named_by_index() -> None:
    with pytest.raises(GradcheckError, match=r"^input 0 at element \(1, 2\): numerical"):
        gradcheck(lambda q: BadExp.apply(q), rand((2, 3)))


def test_non_scalar_outputs_are_checked_through_vjps() -> None:
    x = rand((5,))
    ones_grad = grad(BadFlip.apply(x).sum(), [x])[0].data
    np.testing.assert_array_equal(ones_grad, np.ones(5))  # a sum-only check would be fooled
    with pytest.raises(GradcheckError, match=r"input 0 at element \(0,\)"):
        gradcheck(lambda t: BadFlip.apply(t), x)


def test_a_graph_cut_by_detach_is_caught() -> None:
    with pytest.raises(GradcheckError, match="numerical"):
        gradcheck(lambda t: t * t.detach(), rand((3,)))
    with pytest.raises(GradcheckError, match="analytic 0"):
        gradcheck(lambda t: Tensor(t.numpy() * 2.0), rand((3,)))


def test_wrong_gradient_shape_is_reported() -> None:
    class SumGrad(Function):
        def forward(ctx, x):
            return x.data * 2.0

        def backward(ctx, out, g):
            return g.sum()

    with pytest.raises(RuntimeError, match=r"SumGrad.backward returned a gradient of shape \(\) "
                                           r"for an input of shape \(3,\)"):
        gradcheck(lambda t: SumGrad.apply(t), rand((3,)))


def test_gradgradcheck_catches_a_backward_that_is_not_differentiable() -> None:
    x = rand((4,))
    assert gradcheck(lambda t: SquareConstBackward.apply(t), x)  # first order is right
    with pytest.raises(GradcheckError, match=r"input 0 at element \(0,\).*analytic 0"):
        gradgradcheck(lambda t: SquareConstBackward.apply(t), x)


def test_gradgradcheck_catches_a_wrong_first_derivative() -> None:
    with pytest.raises(GradcheckError):
        gradgradcheck(lambda q: BadExp.apply(q), rand((2, 3)))


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck])
def test_inputs_and_their_grad_are_left_alone(check) -> None:
    x = rand((2, 3), name="x")
    before = x.data.copy()
    x.grad = Tensor(np.full((2, 3), 7.0))
    old_grad = x.grad
    assert check(lambda t: (t * t).exp(), x)
    with pytest.raises(GradcheckError):
        check(lambda t: BadExp.apply(t), x)
    np.testing.assert_array_equal(x.data, before)
    assert x.grad is old_grad and (old_grad.data == 7.0).all()
    assert x.requires_grad and x._ctx is None


def test_inputs_are_untouched_even_when_fn_raises_midway() -> None:
    """The third call runs with an element perturbed; the user's array must not see it."""
    x = rand((3,))
    before, calls = x.data.copy(), []

    def fn(t: Tensor) -> Tensor:
        calls.append(None)
        if len(calls) == 3:
            raise KeyError("boom")
        return t * 2.0

    with pytest.raises(KeyError):
        gradcheck(fn, x)
    np.testing.assert_array_equal(x.data, before)


def test_non_contiguous_input_data() -> None:
    data = np.random.default_rng(0).uniform(-1, 1, (3, 4))[:, ::2]
    assert not data.flags.contiguous
    assert gradcheck(lambda t: t.tanh() * t, Tensor(data, requires_grad=True))


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck])
def test_bad_arguments_are_refused(check) -> None:
    x32 = Tensor(np.ones(3, np.float32), requires_grad=True, name="w")
    with pytest.raises(TypeError, match=r"input 0 \('w'\) is float32.*float64"):
        check(lambda t: t * 2.0, x32)
    with pytest.raises(TypeError, match="input 0 is a ndarray"):
        check(lambda t: t * 2.0, [np.ones(3)])
    with pytest.raises(ValueError, match="no input has requires_grad"):
        check(lambda t: t * 2.0, Tensor(np.ones(3)))
    with pytest.raises(TypeError, match="must return a Tensor"):
        check(lambda t: t.numpy(), rand((3,)))
