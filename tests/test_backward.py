"""The backward walk's semantics: seeding, accumulation, retained and freed gradients, grad
modes, second derivatives, very deep graphs, graph lifetime, and who owns each gradient's array.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
from tensor_helpers import check_grads, rand, recorded_nodes

from tinygrad_mnist import (
    Tensor,
    grad,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)

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


# ----------------------------------------------------------------------------- the NumPy fast path


@pytest.mark.parametrize("name", ["relu", "matmul", "affine", "cross_entropy", "margin"])
def test_fast_backward_gives_what_the_tensor_rule_gives(name: str) -> None:
    """An op's fast_backward (used when no graph of the gradient is wanted) and its backward
    (used under create_graph) are one rule written twice: they must agree."""
    from tinygrad_mnist import ops
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((5, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(3), requires_grad=True)
    labels = np.array([0, 2, 1, 1, 0])
    make = {"relu": lambda: ((x @ w).relu() * b).sum(),
            "matmul": lambda: ((x @ w) ** 2).sum(),
            "affine": lambda: (ops.Affine.apply(x, w, b) ** 2).sum(),
            "cross_entropy": lambda: ops.CrossEntropy.apply(x @ w, labels=labels),
            "margin": lambda: (ops.Margin.apply(x @ w + b, target=1) ** 2).sum()}[name]
    fast = [g.data for g in grad(make(), [x, w, b]) if g is not None]
    rule = [g.data for g in grad(make(), [x, w, b], create_graph=True) if g is not None]
    assert len(fast) == len(rule) >= 2
    for f, r in zip(fast, rule):
        np.testing.assert_allclose(f, r, rtol=1e-12, atol=1e-15)


def test_matmul_fast_path_covers_only_2d_and_leaves_the_rest_to_the_rule() -> None:
    x, w = rand((2, 3, 4)), rand((4, 5), seed=1)  # batched: fast_backward declines
    check_grads(lambda a, b: a @ b, x, w)
    gx = grad((x @ w).sum(), [x])[0]
    np.testing.assert_allclose(gx.data, np.broadcast_to(w.data.sum(axis=1), (2, 3, 4)))


# ----------------------------------------------------------------------------- threads


def test_grad_mode_and_name_scope_are_per_thread() -> None:
    """A no_grad block (or a name scope) in one thread must not change what another records:
    in PyTorch, grad mode is per thread. 1,000 interleavings: one thread toggles no_grad and
    a scope as fast as it can while the other records graphs and checks every gradient."""
    import threading

    from tinygrad_mnist import name_scope
    stop, errors = threading.Event(), []

    def toggler() -> None:
        while not stop.is_set():
            with no_grad(), name_scope("other thread"):
                assert not is_grad_enabled()

    other = threading.Thread(target=toggler)
    other.start()
    try:
        for i in range(1000):
            x = Tensor(np.array([float(i), 1.0]), requires_grad=True)
            y = (x * 2).sum()
            if not y.requires_grad or y._ctx.scope != ():
                errors.append(f"try {i}: requires_grad={y.requires_grad}")
                continue
            y.backward()
            if not np.array_equal(x.grad.data, [2.0, 2.0]):
                errors.append(f"try {i}: grad {x.grad.data}")
    finally:
        stop.set()
        other.join()
    assert errors == [] and is_grad_enabled()


def test_one_grad_mode_object_may_be_reused_nested_and_by_several_threads() -> None:
    """A no_grad() or name_scope kept in a variable, entered inside itself and by threads at
    the same time, restores each thread's own state on the way out (as PyTorch allows)."""
    import threading

    from tinygrad_mnist import name_scope
    from tinygrad_mnist.grad_mode import _scope
    off, scope = no_grad(), name_scope("shared")
    with off:
        with off:
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        for _ in range(200):
            barrier.wait()
            with off, scope:
                barrier.wait()
                if is_grad_enabled() or _scope.get() != ("shared",):
                    errors.append("inside")
            if not is_grad_enabled() or _scope.get() != ():
                errors.append("after")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and off._tokens == {} and scope._tokens == {}


def test_a_backward_that_fails_leaves_grad_mode_as_it_was() -> None:
    """Backward turns recording off while the rules run; a rule that raises must not leave
    it off for everything that follows in this thread."""
    from tinygrad_mnist.tensor import Function

    class Broken(Function):
        def forward(ctx, x):
            return x.data * 2

        def backward(ctx, out, g):
            raise ZeroDivisionError("a broken rule")

    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ZeroDivisionError, match="a broken rule"):
        Broken.apply(x).sum().backward()
    assert is_grad_enabled() and (x * 2).requires_grad
