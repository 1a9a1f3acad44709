"""Tests for tinygrad_mnist.optim: update rules against hand-written references, state round
trips, argument checks, learning-rate schedules, and a tiny end-to-end training run.

References follow PyTorch's conventions (SGD momentum: v = m*v + g, v starts at g;
Nesterov steps along g + m*v) and Algorithm 1 of Kingma & Ba for Adam.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinygrad_mnist import Tensor, no_grad
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.optim import SGD, Adam, CosineLR, StepLR

SHAPES = [(3, 4), (4,)]


def make_params(dtype=np.float64, seed: int = 0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in SHAPES]


def grad_sequence(n_steps: int, dtype=np.float64, seed: int = 1) -> list[list[np.ndarray]]:
    """n_steps lists of gradients, one per parameter of make_params."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(n_steps)]


def run_steps(opt, params: list[Tensor], grads: list[list[np.ndarray]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = Tensor(g.copy())
        opt.step()


# ----------------------------------------------------------------------------- SGD


def test_sgd_plain_step_is_exactly_w_minus_lr_g():
    params = make_params(np.float32)
    w0 = [p.data.copy() for p in params]
    [grads] = grad_sequence(1, np.float32)
    run_steps(SGD(params, lr=0.3), params, [grads])
    for p, w, g in zip(params, w0, grads):
        np.testing.assert_array_equal(p.data, w - 0.3 * g)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_momentum_matches_reference_over_three_steps(nesterov, weight_decay):
    lr, m = 0.1, 0.9
    params = make_params()
    grads = grad_sequence(3)
    ws = [p.data.copy() for p in params]
    vs: list[np.ndarray | None] = [None] * len(params)
    opt = SGD(params, lr=lr, momentum=m, nesterov=nesterov, weight_decay=weight_decay)
    for step_grads in grads:
        run_steps(opt, params, [step_grads])
        for i, g in enumerate(step_grads):
            g = g + weight_decay * ws[i]
            vs[i] = g if vs[i] is None else m * vs[i] + g
            ws[i] = ws[i] - lr * (g + m * vs[i] if nesterov else vs[i])
            np.testing.assert_allclose(params[i].data, ws[i], rtol=1e-14, atol=1e-15)


def test_sgd_weight_decay_adds_wd_times_w_to_the_gradient():
    params = make_params()
    w0 = [p.data.copy() for p in params]
    [grads] = grad_sequence(1)
    run_steps(SGD(params, lr=0.5, weight_decay=0.1), params, [grads])
    for p, w, g in zip(params, w0, grads):
        np.testing.assert_allclose(p.data, w - 0.5 * (g + 0.1 * w), rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("lr,betas,eps,weight_decay,grad_scale", [
    (1e-3, (0.9, 0.999), 1e-8, 0.0, 1.0),
    (0.05, (0.8, 0.99), 1e-8, 0.01, 1.0),
    (1e-2, (0.9, 0.999), 1e-3, 0.0, 1e-3),  # eps comparable to the gradients: placement matters
])
def test_adam_matches_reference_over_three_steps(lr, betas, eps, weight_decay, grad_scale):
    b1, b2 = betas
    params = make_params()
    grads = [[g * grad_scale for g in step] for step in grad_sequence(3)]
    ws = [p.data.copy() for p in params]
    ms = [np.zeros_like(w) for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    opt = Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for t, step_grads in enumerate(grads, start=1):
        run_steps(opt, params, [step_grads])
        for i, g in enumerate(step_grads):
            g = g + weight_decay * ws[i]
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat, v_hat = ms[i] / (1 - b1 ** t), vs[i] / (1 - b2 ** t)
            ws[i] = ws[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
            np.testing.assert_allclose(params[i].data, ws[i], rtol=1e-12, atol=1e-15,
                                       err_msg=f"parameter {i} after step {t}")


# ----------------------------------------------------------------------------- shared behaviour

OPTIMIZERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd-nesterov": lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_params_without_grad_are_skipped(kind):
    params = make_params()
    untouched = params[1].data.copy()
    opt = OPTIMIZERS[kind](params)
    params[0].grad = Tensor(np.ones(SHAPES[0]))
    w0 = params[0].data.copy()
    opt.step()
    assert not np.array_equal(params[0].data, w0)
    np.testing.assert_array_equal(params[1].data, untouched)
    assert not any(k.endswith(".1") for k in opt.state_dict())  # no state made for it


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_zero_grad_sets_grad_to_none(kind):
    params = make_params()
    opt = OPTIMIZERS[kind](params)
    run_steps(opt, params, grad_sequence(1))
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_float32_parameters_and_state_stay_float32(kind):
    params = make_params(np.float32)
    opt = OPTIMIZERS[kind](params)
    run_steps(opt, params, grad_sequence(3, np.float32))
    assert all(p.dtype == np.float32 for p in params)
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if v.ndim)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(kind):
    """Restore a second optimizer from the first's state after 2 of 5 steps; the two must
    end at bit-identical weights."""
    grads = grad_sequence(5, np.float32)
    a_params = make_params(np.float32)
    a = OPTIMIZERS[kind](a_params)
    run_steps(a, a_params, grads[:2])

    b_params = [Tensor(p.data.copy(), requires_grad=True) for p in a_params]
    b = OPTIMIZERS[kind](b_params)
    state = a.state_dict()
    assert int(state["steps"]) == 2
    b.load_state_dict(state)
    for value in state.values():  # b holds copies: scribbling on the dict changes nothing
        value[...] = 0
    run_steps(a, a_params, grads[2:])
    run_steps(b, b_params, grads[2:])
    for p, q in zip(a_params, b_params):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("kind", ["sgd-nesterov", "adam"])
def test_fresh_optimizer_without_state_diverges(kind):
    """The round trip above is meaningful: without the restored state the runs differ."""
    grads = grad_sequence(5, np.float32)
    a_params = make_params(np.float32)
    a = OPTIMIZERS[kind](a_params)
    run_steps(a, a_params, grads[:2])
    b_params = [Tensor(p.data.copy(), requires_grad=True) for p in a_params]
    b = OPTIMIZERS[kind](b_params)
    run_steps(a, a_params, grads[2:])
    run_steps(b, b_params, grads[2:])
    assert not np.array_equal(a_params[0].data, b_params[0].data)


def test_load_state_dict_rejects_wrong_shape():
    opt = SGD(make_params(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"velocity.0 has shape \(2, 2\), parameter 0 has shape \(3, 4\)"):
        opt.load_state_dict({"velocity.0": np.zeros((2, 2)), "steps": np.array(1)})


@pytest.mark.parametrize("make,match", [
    (lambda: SGD([], lr=0.1), "SGD got no parameters"),
    (lambda: Adam(iter([])), "Adam got no parameters"),
    (lambda: SGD(make_params(), lr=0.0), r"lr must be a finite number in \(0, inf\), got 0.0"),
    (lambda: Adam(make_params(), lr=-1e-3), r"lr must be a finite number in \(0, inf\), got -0.001"),
    (lambda: SGD([*make_params(), Tensor(np.ones(2))], lr=0.1),
     "parameter 2 is not a Tensor with requires_grad=True"),
    (lambda: Adam([np.ones(2)]), "parameter 0 is not a Tensor with requires_grad=True"),
    (lambda: SGD(make_params(), lr=0.1, nesterov=True), "nesterov=True needs a momentum > 0"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- schedules


def test_step_lr():
    schedule = StepLR(0.1, step_size=3, gamma=0.5)
    assert [schedule(e) for e in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rel=1e-12)


def test_cosine_lr():
    schedule = CosineLR(0.1, epochs=10)
    assert schedule(0) == pytest.approx(0.1, rel=1e-12)
    assert schedule(5) == pytest.approx(0.05, rel=1e-12)
    assert schedule(10) == pytest.approx(0.0, abs=1e-15)
    assert schedule(2) == pytest.approx(0.05 * (1 + (1 + math.sqrt(5)) / 4), rel=1e-12)  # cos 36°
    values = [schedule(e) for e in range(11)]
    assert all(x > y for x, y in zip(values, values[1:]))


def test_cosine_lr_with_floor():
    schedule = CosineLR(0.1, epochs=4, min_lr=0.01)
    assert schedule(0) == pytest.approx(0.1, rel=1e-12)
    assert schedule(2) == pytest.approx(0.055, rel=1e-12)
    assert schedule(4) == pytest.approx(0.01, rel=1e-12)


# ----------------------------------------------------------------------------- training sanity


def blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs in 2-D (centres 8.5 standard deviations apart)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centres = np.array([[-3.0, -3.0], [3.0, 3.0]])
    return (centres[y] + rng.standard_normal((n, 2))).astype(np.float32), y


@pytest.mark.parametrize("make_opt", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                      lambda ps: Adam(ps, lr=0.02)], ids=["sgd", "adam"])
def test_mlp_learns_two_blobs(make_opt):
    x, y = blobs()
    model = MLP([2, 16, 2], seed=0)
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with no_grad():
        logits = model(Tensor(x)).data
    assert losses[-1] < 0.5 * losses[0]
    assert (logits.argmax(axis=1) == y).mean() > 0.95


# ----------------------------------------------------------------------------- per-parameter state


def test_adam_counts_steps_per_parameter() -> None:
    """A parameter that first gets a gradient at step 3 is bias-corrected as at its own step 1:
    it moves exactly as it would under a fresh Adam that only ever saw its gradients."""
    grads = grad_sequence(5)
    params = make_params()
    late = Tensor(params[1].data.copy(), requires_grad=True)
    opt = Adam(params, lr=0.1)
    alone = Adam([late], lr=0.1)
    for t, step_grads in enumerate(grads):
        params[0].grad = Tensor(step_grads[0])
        params[1].grad = Tensor(step_grads[1]) if t >= 2 else None
        opt.step()
        if t >= 2:
            late.grad = Tensor(step_grads[1])
            alone.step()
    np.testing.assert_allclose(params[1].data, late.data, rtol=1e-12)
    assert int(opt.state_dict()["step.1"]) == 3 and int(opt.state_dict()["step.0"]) == 5


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_is_not_advanced_for_a_parameter_without_grad(nesterov) -> None:
    grads = grad_sequence(4)
    params, ref = make_params(), make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=nesterov)
    ref_opt = SGD(ref[1:], lr=0.1, momentum=0.9, nesterov=nesterov)
    for t, step_grads in enumerate(grads):
        params[0].grad = Tensor(step_grads[0])
        params[1].grad = None if t == 1 else Tensor(step_grads[1])
        opt.step()
        if t != 1:
            ref[1].grad = Tensor(step_grads[1])
            ref_opt.step()
    np.testing.assert_array_equal(params[1].data, ref[1].data)


def test_adam_checkpoint_keeps_per_parameter_step_counts() -> None:
    grads = grad_sequence(6, np.float32)
    a_params, b_params = make_params(np.float32), make_params(np.float32)
    a, b = Adam(a_params, lr=0.05), Adam(b_params, lr=0.05)

    def feed(opt, params, t):
        params[0].grad = Tensor(grads[t][0])
        params[1].grad = Tensor(grads[t][1]) if t >= 2 else None
        opt.step()

    for t in range(3):
        feed(a, a_params, t)
    for p, q in zip(a_params, b_params):
        q.data[...] = p.data
    b.load_state_dict(a.state_dict())
    for t in range(3, 6):
        feed(a, a_params, t)
        feed(b, b_params, t)
    for p, q in zip(a_params, b_params):
        np.testing.assert_array_equal(p.data, q.data)


# ----------------------------------------------------------------------------- bad hyperparameters and state


@pytest.mark.parametrize("make,match", [
    (lambda: SGD(make_params(), lr=float("nan")), r"lr must be a finite number in \(0, inf\), got nan"),
    (lambda: SGD(make_params(), lr=float("inf")), r"lr must be a finite number in \(0, inf\), got inf"),
    (lambda: SGD(make_params(), lr=0.1, momentum=-0.5), r"momentum must be .* \[0, inf\), got -0.5"),
    (lambda: SGD(make_params(), lr=0.1, momentum=float("nan")), r"momentum must be .* got nan"),
    (lambda: SGD(make_params(), lr=0.1, weight_decay=-1e-4), r"weight_decay must be .* got -0.0001"),
    (lambda: Adam(make_params(), betas=(1.5, 0.9)), r"betas\[0\] must be a finite number in \[0, 1\)"),
    (lambda: Adam(make_params(), betas=(0.9, 1.0)), r"betas\[1\] must be a finite number in \[0, 1\)"),
    (lambda: Adam(make_params(), betas=(0.9,)), r"betas must be a pair"),
    (lambda: Adam(make_params(), eps=0.0), r"eps must be a finite number in \(0, inf\), got 0.0"),
    (lambda: Adam(make_params(), eps=-1e-8), r"eps must be a finite number in \(0, inf\)"),
    (lambda: Adam(make_params(), weight_decay=float("inf")), r"weight_decay must be .* got inf"),
])
def test_bad_hyperparameters_are_value_errors(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_non_number_hyperparameter_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        SGD(make_params(), lr="0.1")


def _trained_state(kind: str) -> dict:
    params = make_params()
    opt = OPTIMIZERS[kind](params)
    run_steps(opt, params, grad_sequence(2))
    return opt.state_dict()


@pytest.mark.parametrize("kind,edit,match", [
    ("adam", lambda s: {**s, "momentum.0": s["m.0"]}, r"unknown key 'momentum.0'"),
    ("adam", lambda s: {**s, "m.7": s["m.0"]}, r"unknown key 'm.7'"),
    ("sgd", lambda s: {**s, "velocity.0": np.zeros(SHAPES[0])},
     r"unknown key 'velocity.0'; expected 'steps' only"),
    ("adam", lambda s: {k: v for k, v in s.items() if k != "steps"}, r"no 'steps' entry"),
    ("adam", lambda s: {k: v for k, v in s.items() if k != "v.1"}, r"parameter 1 is missing v.1"),
    ("adam", lambda s: {k: v for k, v in s.items() if k != "step.0"}, r"parameter 0 is missing step.0"),
    ("adam", lambda s: {**s, "step.0": np.array(0)}, r"step.0 must be a positive integer"),
    ("adam", lambda s: {**s, "steps": np.array(-1)}, r"'steps' must be a non-negative integer"),
    ("sgd-nesterov", lambda s: {**s, "velocity.0": np.array(["a"] * 12).reshape(SHAPES[0])},
     r"velocity.0 must be numbers"),
])
def test_bad_state_dict_is_refused_and_changes_nothing(kind, edit, match) -> None:
    params = make_params()
    opt = OPTIMIZERS[kind](params)
    run_steps(opt, params, grad_sequence(1, seed=5))
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(edit(_trained_state(kind)))
    after = opt.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
