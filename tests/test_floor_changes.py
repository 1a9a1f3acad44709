"""The in-place rewrites behind issue 10 ("the floor"): each does less work per training step
and gives the same numbers as the formulas it replaced, written out here as they were.

SGD's updates work in scratch buffers: bit-identical to the formulas they had,
and a step allocates nothing the size of a weight. Cross-entropy takes one exp instead of
two (its loss and softmax within float32 rounding of float64's). ReLU keeps no mask: its
backward reads its output. benchmarks/numpy_mlp, the hand-written reference, does each the
same way.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from benchmarks import numpy_mlp
from tinygrad_mnist import Tensor, grad
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.optim import SGD, Optimizer

# float32 weights and biases, with one float64 parameter among them: scratch kept per dtype
PARAMS = [((30, 20), np.float32), ((20,), np.float64), ((20, 5), np.float32), ((5,), np.float32)]
STEPS = 20
EPS32 = float(np.finfo(np.float32).eps)


def fresh_params(seed: int = 0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(dt), requires_grad=True) for s, dt in PARAMS]


def gradients(seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dt) for s, dt in PARAMS] for _ in range(STEPS)]


def old_sgd(ws: list[np.ndarray], vs: list, grads: list[np.ndarray], lr: float, momentum: float,
            nesterov: bool, weight_decay: float) -> None:
    """SGD._update as it was before the scratch buffers, one parameter after the other."""
    for i, (w, g) in enumerate(zip(ws, grads)):
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            if vs[i] is None:
                vs[i] = g.copy()
            else:
                vs[i] *= momentum
                vs[i] += g
            g = g + momentum * vs[i] if nesterov else vs[i]
        w -= lr * g


SGD_CASES = {
    "plain": dict(lr=0.1),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "momentum": dict(lr=0.05, momentum=0.9),
    "momentum+wd": dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    "nesterov+wd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
}


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_in_place_is_bit_identical_to_the_old_formulas(case):
    kw = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, **SGD_CASES[case]}
    params = fresh_params()
    ws = [p.data.copy() for p in params]
    vs: list = [None] * len(params)
    opt = SGD(params, **kw)
    for step, grads in enumerate(gradients()):
        for p, g in zip(params, grads):
            p.grad = Tensor(g.copy())
        opt.step()
        old_sgd(ws, vs, grads, **kw)
        for i, (p, w, g) in enumerate(zip(params, ws, grads)):
            assert p.dtype == w.dtype and np.array_equal(p.data, w), f"param {i}, step {step}"
            assert np.array_equal(p.grad.data, g), "the step wrote into p.grad"
        if kw["momentum"]:  # velocities too, so a checkpoint holds the same numbers
            assert all(np.array_equal(opt.state[i]["velocity"], v) for i, v in enumerate(vs))
    assert not np.array_equal(ws[0], fresh_params()[0].data)


def test_float64_gradients_on_float32_weights_stay_bit_identical():
    """A p.grad of another dtype (set by hand: backward always gives p's dtype) is computed
    with as before: the products with g in float64, the rest in the weights' float32."""
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((40, 30)).astype(np.float32)
    p, ws, vs = Tensor(w0.copy(), requires_grad=True), [w0.copy()], [None]
    sgd_kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt = SGD([p], **sgd_kw)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(w0.shape)
        p.grad = Tensor(g, dtype=np.float64)
        opt.step()
        old_sgd(ws, vs, [g], **sgd_kw)
        assert p.dtype == np.float32 and np.array_equal(p.data, ws[0]), f"step {t}"


def step_peak_bytes(opt: Optimizer) -> int:
    """The most memory one opt.step() holds at once beyond what was there before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        opt.step()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
], ids=["sgd", "sgd-nesterov-wd"])
def test_a_step_allocates_nothing_the_size_of_a_weight(make):
    rng = np.random.default_rng(0)
    params = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
              for s in [(256, 128), (128,), (128, 10), (10,)]]
    for p in params:
        p.grad = Tensor(rng.standard_normal(p.shape).astype(np.float32))
    opt = make(params)
    opt.step()  # the first step makes the scratch buffers and the momenta
    w0 = params[0].data.copy()
    peak = step_peak_bytes(opt)
    assert not np.array_equal(params[0].data, w0)  # the step did update the weights
    assert peak < params[0].data.nbytes // 4, f"a step held {peak} bytes of temporaries"


# ----------------------------------------------------------------------------- the hand-written NumPy MLP


@pytest.mark.parametrize("case", ["plain", "nesterov+wd"])
def test_handwritten_sgd_takes_the_engines_steps_without_weight_sized_temporaries(case):
    """benchmarks/numpy_mlp mirrors optim.SGD: the same weights after 20 steps, bit for bit,
    and the same in-place update (so the benchmark's engine ÷ NumPy compares equal code)."""
    kw = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0, **SGD_CASES[case]}
    rng = np.random.default_rng(3)
    shapes = [(256, 128), (128,), (128, 10), (10,)]
    params = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]
    hand = [(params[i].data.copy(), params[i + 1].data.copy()) for i in (0, 2)]
    velocity: list = [None] * 4
    opt = SGD(params, **kw)

    def hand_step(grads: list[np.ndarray]) -> None:
        pairs = [(grads[0], grads[1]), (grads[2], grads[3])]
        if kw["momentum"]:
            numpy_mlp.sgd_momentum_step(hand, pairs, velocity, **kw)
        else:
            numpy_mlp.sgd_step(hand, pairs, kw["lr"])

    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = Tensor(g)
        opt.step()
        hand_step(grads)
        assert all(np.array_equal(p.data, h) for p, h in zip(params, [a for ab in hand for a in ab])), \
            f"step {step}"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        hand_step(grads)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < hand[0][0].nbytes // 4, f"a hand-written step held {peak} bytes of temporaries"


# ----------------------------------------------------------------------------- cross-entropy


def count_exps(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes np.exp is called on from now until the monkeypatch is undone."""
    calls: list[tuple[int, ...]] = []
    real = np.exp

    def exp(x, *args, **kwargs):
        calls.append(np.shape(x))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(np, "exp", exp)
    return calls


def test_cross_entropy_takes_one_exp_and_keeps_its_numbers(monkeypatch):
    rng = np.random.default_rng(4)
    z, y = (rng.standard_normal((128, 10)) * 3).astype(np.float32), rng.integers(0, 10, 128)
    rows = np.arange(128)
    calls = count_exps(monkeypatch)
    t = Tensor(z, requires_grad=True)
    loss = cross_entropy(t, y)
    loss.backward()
    assert calls == [(128, 10)]  # one exp, for the loss and the softmax alike
    monkeypatch.undo()
    z64 = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    p64 = np.exp(z64) / np.exp(z64).sum(axis=1, keepdims=True)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), -np.log(p64[rows, y]).mean(), rtol=2 * EPS32)
    # the gradient is the forward's softmax (exp / row sums) minus the one-hot, over N
    e = np.exp(z - z.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    want[rows, y] -= 1
    want *= np.float32(1 / 128)
    assert np.array_equal(t.grad.data, want)


def test_handwritten_loss_takes_one_exp_and_equals_the_engines(monkeypatch):
    """benchmarks/numpy_mlp computes the loss as nn.CrossEntropy does: the same loss and
    gradients as the engine, bit for bit."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((64, 20)).astype(np.float32), rng.integers(0, 10, 64)
    model = MLP([20, 16, 12, 10], seed=0)
    params = numpy_mlp.params_from_state_dict(model.state_dict())
    calls = count_exps(monkeypatch)
    loss, grads = numpy_mlp.loss_and_grads(params, x, y)
    assert calls == [(64, 10)]
    monkeypatch.undo()
    engine_loss = cross_entropy(model(Tensor(x)), y)
    engine_loss.backward()
    assert engine_loss.item() == loss
    got = [p.grad.data for p in model.parameters()]
    assert all(np.array_equal(g, h) for g, h in zip(got, [a for pair in grads for a in pair], strict=True))


# ----------------------------------------------------------------------------- ReLU


def test_relu_keeps_no_mask_and_its_gradients_stay_exact():
    """ReLU's backward reads its own output (> 0 just where the input was), so the graph holds
    no bool mask beside it; the gradients are the same step function, first and second order."""
    rng = np.random.default_rng(6)
    x_np = rng.standard_normal((256, 256)).astype(np.float32)
    x_np[0, :4] = [0.0, -0.0, np.nan, 1e-45]  # the edges: no gradient at 0, -0 or NaN
    x = Tensor(x_np, requires_grad=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        y = x.relu()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < y.data.nbytes + x_np.size // 8, f"ReLU's forward keeps {held} bytes"
    g = rng.standard_normal(x_np.shape).astype(np.float32)
    y.backward(Tensor(g))
    assert np.array_equal(x.grad.data, g * (x_np > 0))
    assert list(x.grad.data[0, :4]) == [0, 0, 0, g[0, 3]]
    x2 = Tensor(np.array([-1.5, 0.0, 2.0, -0.0, 0.5]), requires_grad=True)
    [gx] = grad((x2.relu() * x2).sum(), [x2], create_graph=True)  # d/dx x relu(x) = 2 relu(x)
    [ggx] = grad(gx.sum(), [x2])
    assert list(gx.data) == [0, 0, 4, 0, 1] and list(ggx.data) == [0, 0, 2, 0, 2]
