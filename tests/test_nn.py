"""Tests for tinygrad_mnist.nn: the fused cross-entropy, the Module system and its layers.

References are written out in plain NumPy (or by hand for the huge-logit cases), never
computed by the code under test.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from tinygrad_mnist import Tensor, grad, gradcheck, gradgradcheck, no_grad
from tinygrad_mnist.nn import MLP, Dropout, Linear, Module, ReLU, Sequential, cross_entropy

# ----------------------------------------------------------------------------- helpers


def ref_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    """-mean log softmax(z)[y], the textbook way (fine for moderate logits)."""
    z = z.astype(np.float64)
    logp = np.log(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def ref_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def label_forms(y: np.ndarray) -> dict[str, object]:
    """The same labels in every form cross_entropy accepts."""
    return {"ndarray": y, "list": y.tolist(), "int64 Tensor": Tensor(y, dtype=np.int64),
            "float Tensor": Tensor(y)}


def set_parameters(model: Module, tensors: list[Tensor]) -> None:
    """Put `tensors` in place of the model's parameters (in named_parameters order), so
    gradcheck's own leaf copies are what the model computes with."""
    for (name, _), t in zip(list(model.named_parameters()), tensors):
        *path, attr = name.split(".")
        owner = model
        for part in path:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        setattr(owner, attr, t)
    assert all(p is t for p, t in zip(model.parameters(), tensors))


def recorded_ops(out: Tensor) -> list:
    """Every Function instance in out's graph, found by walking _ctx.parents."""
    ops, seen, stack = [], set(), [out]
    while stack:
        t = stack.pop()
        if id(t) in seen or t._ctx is None:
            continue
        seen.add(id(t))
        ops.append(t._ctx)
        stack.extend(t._ctx.parents)
    return ops


# ----------------------------------------------------------------------------- cross_entropy

SHAPES = [(1, 2), (4, 3), (7, 10)]


@pytest.mark.parametrize("form", ["ndarray", "list", "int64 Tensor", "float Tensor"])
@pytest.mark.parametrize("n,c", SHAPES)
def test_cross_entropy_gradcheck_and_gradgradcheck(n, c, form):
    rng = np.random.default_rng(n * 100 + c)
    labels = label_forms(rng.integers(0, c, n))[form]
    z = Tensor(rng.standard_normal((n, c)) * 2, requires_grad=True)
    assert gradcheck(lambda t: cross_entropy(t, labels), z)
    assert gradgradcheck(lambda t: cross_entropy(t, labels), z)


@pytest.mark.parametrize("form", ["ndarray", "list", "int64 Tensor", "float Tensor"])
@pytest.mark.parametrize("n,c", SHAPES)
def test_cross_entropy_value_matches_numpy(n, c, form):
    rng = np.random.default_rng(n + c)
    y = rng.integers(0, c, n)
    z = rng.standard_normal((n, c)) * 3
    loss = cross_entropy(Tensor(z), label_forms(y)[form])
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref_cross_entropy(z, y), rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n():
    rng = np.random.default_rng(1)
    z_np, y = rng.standard_normal((6, 5)), np.array([0, 4, 2, 2, 1, 3])
    z = Tensor(z_np.copy(), requires_grad=True)
    cross_entropy(z, y).backward()
    onehot = np.eye(5)[y]
    np.testing.assert_allclose(z.grad.data, (ref_softmax(z_np) - onehot) / 6, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("create_graph", [False, True])
def test_cross_entropy_is_stable_for_huge_logits(dtype, create_graph):
    """exp(1e4) overflows; the log-sum-exp shift must keep loss and gradients exact."""
    z_np = np.array([[1e4, -1e4, 0], [-1e4, 1e4, 1e4], [0, 0, -1e4]], dtype)
    y = np.array([1, 2, 0])
    # row 0 picks a logit 2e4 below the max; rows 1 and 2 tie two maxima: log 2 each
    expected_loss = (2e4 + 2 * np.log(2)) / 3
    probs = np.array([[1, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0]])
    expected_grad = (probs - np.eye(3)[y]) / 3
    z = Tensor(z_np, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings either
        loss = cross_entropy(z, y)
        [g] = grad(loss, [z], create_graph=create_graph)
    assert np.isfinite(loss.item()) and np.all(np.isfinite(g.data))
    np.testing.assert_allclose(loss.item(), expected_loss, rtol=1e-6)
    np.testing.assert_allclose(g.data, expected_grad, atol=1e-7)


@pytest.mark.parametrize("create_graph", [False, True])
def test_cross_entropy_float32_stays_float32(create_graph):
    z = Tensor(np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    loss = cross_entropy(z, [0, 1, 2, 1])
    assert loss.dtype == np.float32
    [g] = grad(loss, [z], create_graph=create_graph)
    assert g.dtype == np.float32
    loss = cross_entropy(z, [0, 1, 2, 1])
    loss.backward()
    assert z.grad.dtype == np.float32


@pytest.mark.parametrize("logits,labels,match", [
    (np.zeros((2, 3)), [0, 3], r"labels must be in \[0, 3\), got values from 0 to 3"),
    (np.zeros((2, 3)), [-1, 0], r"labels must be in \[0, 3\), got values from -1 to 0"),
    (np.zeros((2, 3)), [0, 1, 2], r"expects 2 integer labels, shape \(2,\).*shape \(3,\)"),
    (np.zeros((2, 3)), [[0], [1]], r"expects 2 integer labels, shape \(2,\).*shape \(2, 1\)"),
    (np.zeros((2, 3)), [0, 0.5], r"expects 2 integer labels.*float"),
    (np.zeros((2, 3)), Tensor([0.5, 1.0]), r"expects 2 integer labels.*float"),
    (np.zeros(3), [0], r"logits as a Tensor of shape \(N, C\), got \(3,\)"),
    (np.zeros((2, 3, 1)), [0, 1], r"logits as a Tensor of shape \(N, C\), got \(2, 3, 1\)"),
])
def test_cross_entropy_rejects_bad_inputs(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy(Tensor(logits, requires_grad=True), labels)


@pytest.mark.parametrize("labels", [[], np.zeros(0, np.int64)])
def test_cross_entropy_of_an_empty_batch_is_a_clear_error(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: NaN with a RuntimeWarning
        with pytest.raises(ValueError, match=r"at least one example, got logits of shape \(0, 10\)"):
            cross_entropy(Tensor(np.zeros((0, 10), np.float32), requires_grad=True), labels)


@pytest.mark.parametrize("labels, match", [
    ([1e30, 0.0], r"labels must be in \[0, 3\), got values from 0.0 to 1e\+30"),
    ([-1e30, 0.0], r"labels must be in \[0, 3\), got values from -1e\+30 to 0.0"),
    ([np.inf, 0.0], r"expects 2 integer labels.*float64"),
    ([np.nan, 0.0], r"expects 2 integer labels.*float64"),
])
def test_cross_entropy_huge_or_non_finite_float_labels(labels, match):
    """Float labels are cast to int only when that is exact: no overflow, no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=match):
            cross_entropy(Tensor(np.zeros((2, 3)), requires_grad=True), Tensor(labels, dtype=np.float64))


def test_cross_entropy_rejects_logits_that_are_not_a_tensor():
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        cross_entropy(np.zeros((2, 3)), [0, 1])


# ----------------------------------------------------------------------------- Module

MLP_NAMES = ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
             "layers.4.weight", "layers.4.bias"]
MLP_SHAPES = [(784, 32), (32,), (32, 16), (16,), (16, 10), (10,)]


def test_named_parameters_order_names_and_shapes():
    model = MLP([784, 32, 16, 10], seed=0)
    named = list(model.named_parameters())
    assert [n for n, _ in named] == MLP_NAMES
    assert [p.shape for _, p in named] == MLP_SHAPES
    params = model.parameters()
    assert len(params) == 6 and all(p is q for p, (_, q) in zip(params, named))
    assert sum(p.size for p in params) == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_zero_grad_clears_every_parameter():
    model = MLP([5, 4, 3], seed=0)
    cross_entropy(model(Tensor(np.ones((2, 5)))), [0, 2]).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_train_and_eval_reach_every_submodule():
    model = MLP([5, 4, 4, 3], dropout=0.5, seed=0)
    modules = [model, *model.layers]
    assert sum(isinstance(m, Dropout) for m in modules) == 2
    assert model.eval() is model
    assert not any(m.training for m in modules)
    model.train()
    assert all(m.training for m in modules)
    model.train(False)
    assert not any(m.training for m in modules)


def test_predict_proba_only_reads_the_model():
    """A model in training mode with dropout predicts as in eval mode, and stays as it was:
    the server's threads share one model, so nothing may switch its mode under another."""
    from tinygrad_mnist.predict import predict_proba
    model = MLP([784, 32, 10], dropout=0.5, seed=0)
    x = np.random.default_rng(0).random((5, 784))  # float64: cast to the model's float32
    probs = predict_proba(model, x)
    assert model.training and all(m.training for _, m in model.named_modules())
    with no_grad():
        expected = model.eval()(Tensor(x.astype(np.float32))).softmax(axis=1).data
    np.testing.assert_array_equal(probs, expected)
    assert probs.dtype == np.float32


def test_state_dict_returns_copies():
    model = MLP([6, 4, 3], seed=0)
    before = [p.data.copy() for p in model.parameters()]
    state = model.state_dict()
    assert list(state) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    for value in state.values():
        value[...] = 123.0
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


def test_load_state_dict_round_trip_gives_identical_outputs():
    a, b = MLP([6, 5, 3], seed=1), MLP([6, 5, 3], seed=2)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    assert not np.array_equal(a(x).data, b(x).data)
    state = a.state_dict()
    b.load_state_dict(state)
    np.testing.assert_array_equal(b(x).data, a(x).data)
    for value in state.values():  # b took copies, not the arrays themselves
        value[...] = 0.0
    np.testing.assert_array_equal(b(x).data, a(x).data)


def test_load_state_dict_keeps_parameter_dtype():
    model = MLP([3, 2], seed=0)
    model.load_state_dict({k: v.astype(np.float64) for k, v in model.state_dict().items()})
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_load_state_dict_names_missing_and_unexpected_keys():
    model = MLP([6, 5, 3], seed=0)
    state = model.state_dict()
    del state["layers.2.bias"]
    with pytest.raises(KeyError, match=r"missing \['layers.2.bias'\], unexpected \[\]"):
        model.load_state_dict(state)
    state = {**model.state_dict(), "layers.9.weight": np.zeros(3)}
    with pytest.raises(KeyError, match=r"missing \[\], unexpected \['layers.9.weight'\]"):
        model.load_state_dict(state)


def test_load_state_dict_names_key_and_both_shapes_on_shape_mismatch():
    model = MLP([6, 5, 3], seed=0)
    state = {**model.state_dict(), "layers.0.weight": np.zeros((5, 6), np.float32)}
    with pytest.raises(ValueError, match=r"'layers.0.weight'.*\(5, 6\).*\(6, 5\)"):
        model.load_state_dict(state)


@pytest.mark.parametrize("bad, match", [
    (np.array(["a", "b", "c"]), r"\['layers.0.bias'\] has dtype <U1; expected real numbers"),
    (np.array([None, None, None], dtype=object), r"\['layers.0.bias'\] has dtype object; expected"),
    (np.array([1.0, np.nan, 2.0]), r"\['layers.0.bias'\] holds NaN or infinite values"),
    (np.array([1.0, 1e300, 2.0]), r"\['layers.0.bias'\] holds NaN or infinite.*float32"),
    (np.array([1 + 2j, 0, 0]), r"\['layers.0.bias'\] has dtype complex128"),
    ([[1.0], [2.0, 3.0]], r"\['layers.0.bias'\] is not an array"),
])
def test_load_state_dict_is_all_or_nothing(bad, match):
    """The bias comes after the weight: a refused bias must leave the weight untouched too."""
    model = MLP([2, 3, 2], seed=0)
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}
    state["layers.0.bias"] = bad
    with pytest.raises(ValueError, match=match):
        model.load_state_dict(state)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_takes_int_arrays_and_tensors_but_not_a_list():
    model = MLP([2, 1], seed=0)
    model.load_state_dict({"layers.0.weight": np.array([[1], [2]]),
                           "layers.0.bias": Tensor(np.array([0.5]))})
    assert model.layers[0].weight.data.tolist() == [[1.0], [2.0]]
    assert model.layers[0].bias.data.tolist() == [0.5]
    assert all(p.dtype == np.float32 for p in model.parameters())
    with pytest.raises(TypeError, match="expects a dict of name -> array, got list"):
        model.load_state_dict(list(model.state_dict().values()))


# ----------------------------------------------------------------------------- Linear


@pytest.mark.parametrize("x, error, match", [
    (Tensor(1.0), ValueError, r"4 features in the last axis, got shape \(\)"),
    (np.ones((2, 4)), TypeError, r"Linear\(4→3\) expects a Tensor, got ndarray; wrap it as Tensor"),
    ([[1.0, 2.0, 3.0, 4.0]], TypeError, r"expects a Tensor, got list"),
])
def test_linear_refuses_inputs_it_cannot_take(x, error, match):
    with pytest.raises(error, match=match):
        Linear(4, 3, rng=np.random.default_rng(0))(x)


@pytest.mark.parametrize("sizes", [(0, 3), (4, 0), (-1, 3), (2.5, 3), (True, 3), ("4", 3)])
def test_linear_refuses_sizes_that_are_not_positive_ints(sizes):
    with pytest.raises(ValueError, match=r"Linear expects positive integer in_features and "
                                         r"out_features, got "):
        Linear(*sizes)



def test_linear_shapes_init_and_forward():
    layer = Linear(7, 3, rng=np.random.default_rng(0))
    assert layer.weight.shape == (7, 3) and layer.bias.shape == (3,)
    assert layer.weight.requires_grad and layer.bias.requires_grad
    assert layer.weight.dtype == np.float32
    np.testing.assert_array_equal(layer.bias.data, np.zeros(3))
    layer.bias.data[:] = [1, 2, 3]
    x = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ layer.weight.data + [1, 2, 3], rtol=1e-6)


def test_linear_without_bias_has_only_a_weight():
    layer = Linear(4, 2, bias=False, rng=np.random.default_rng(0))
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ layer.weight.data, rtol=1e-6)


def test_linear_is_one_fused_op_for_a_batch_and_two_ops_otherwise():
    layer = Linear(4, 3, rng=np.random.default_rng(0))
    assert type(layer(Tensor(np.ones((2, 4), np.float32)))._ctx).__name__ == "Affine"
    ops = recorded_ops(layer(Tensor(np.ones((5, 2, 4), np.float32))))  # 3-D: x @ W + b
    assert sorted(type(op).__name__ for op in ops) == ["Add", "MatMul"]


@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_fused_linear_matches_matmul_plus_bias_and_passes_gradcheck(x_needs_grad):
    """The same values and gradients as x @ W + b, and first and second derivatives right
    (create_graph records the backward through ordinary ops)."""
    rng = np.random.default_rng(0)
    layer = Linear(4, 3, rng=rng, dtype=np.float64)
    layer.bias.data += rng.standard_normal(3)
    x = Tensor(rng.standard_normal((5, 4)), requires_grad=x_needs_grad)
    v = rng.standard_normal((5, 3))
    fused = layer(x)
    unfused = x @ layer.weight + layer.bias
    np.testing.assert_array_equal(fused.data, unfused.data)
    wrt = [x, layer.weight, layer.bias] if x_needs_grad else [layer.weight, layer.bias]
    for a, b in zip(grad(fused, wrt, grad_output=v), grad(unfused, wrt, grad_output=v)):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-12)

    def f(x_, w, b):
        layer.weight, layer.bias = w, b
        return layer(x_)

    inputs = [x, Tensor(layer.weight.data, requires_grad=True),
              Tensor(layer.bias.data, requires_grad=True)]
    assert gradcheck(f, inputs) and gradgradcheck(f, inputs)


@pytest.mark.parametrize("frozen", ["weight", "bias"])
def test_fused_linear_with_a_frozen_parameter_gives_it_no_gradient(frozen):
    layer = Linear(4, 3, rng=np.random.default_rng(0))
    getattr(layer, frozen).requires_grad = False
    x = Tensor(np.ones((2, 4), np.float32), requires_grad=True)
    out = layer(x)
    with no_grad():  # the rule itself skips the frozen parameter's work (a matmul for weight)
        rule = out._ctx.backward(out, Tensor(np.ones((2, 3), np.float32)))
    assert [g is None for g in rule] == [False, frozen == "weight", frozen == "bias"]
    out.sum().backward()
    trained = "bias" if frozen == "weight" else "weight"
    assert getattr(layer, frozen).grad is None
    assert getattr(layer, trained).grad.shape == getattr(layer, trained).shape
    np.testing.assert_allclose(x.grad.data, np.tile(layer.weight.data.sum(axis=1), (2, 1)),
                               rtol=1e-6)


def test_linear_he_init_statistics():
    """std sqrt(2/in) with 10^6 samples: the estimate is good to ~0.1%, so 2% is safe."""
    n_in = 2000
    w = Linear(n_in, 500, rng=np.random.default_rng(0)).weight.data.astype(np.float64)
    assert abs(w.std() / np.sqrt(2 / n_in) - 1) < 0.02
    assert abs(w.mean()) < 0.05 * np.sqrt(2 / n_in)


def test_linear_seeded_rng_is_reproducible():
    a = Linear(8, 4, rng=np.random.default_rng(5))
    b = Linear(8, 4, rng=np.random.default_rng(5))
    c = Linear(8, 4, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


def test_linear_dtype_option():
    layer = Linear(3, 2, dtype=np.float64, rng=np.random.default_rng(0))
    assert layer.weight.dtype == np.float64 and layer.bias.dtype == np.float64


def test_linear_rejects_wrong_feature_count():
    layer = Linear(784, 32, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"784 features.*got shape \(2, 5\)"):
        layer(Tensor(np.zeros((2, 5))))


# ----------------------------------------------------------------------------- MLP


def test_mlp_output_shape_and_layers():
    model = MLP([12, 8, 5], seed=0)
    assert [type(m) for m in model.layers] == [Linear, ReLU, Linear]
    out = model(Tensor(np.zeros((3, 12), np.float32)))
    assert out.shape == (3, 5) and out.dtype == np.float32


def test_mlp_seed_decides_the_weights():
    a, b, c = MLP([10, 6, 4], seed=3), MLP([10, 6, 4], seed=3), MLP([10, 6, 4], seed=4)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert not np.array_equal(a.layers[0].weight.data, c.layers[0].weight.data)


@pytest.mark.parametrize("sizes", [[], [10], [10, 0], [10, -3, 2], [0, 5]])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="MLP sizes must be at least two positive ints"):
        MLP(sizes)


def test_whole_mlp_with_cross_entropy_passes_gradcheck():
    """Every parameter of a 3-layer float64 network, through ReLUs and the fused loss."""
    rng = np.random.default_rng(0)
    model = Sequential(Linear(4, 5, rng=rng, dtype=np.float64), ReLU(),
                       Linear(5, 4, rng=rng, dtype=np.float64), ReLU(),
                       Linear(4, 3, rng=rng, dtype=np.float64))
    for p in model.parameters():  # nonzero biases, so their gradients are not trivial
        p.data += 0.1 * rng.standard_normal(p.shape)
    x, y = Tensor(rng.standard_normal((6, 4))), np.array([0, 1, 2, 2, 1, 0])

    def loss(*params: Tensor) -> Tensor:
        set_parameters(model, list(params))
        return cross_entropy(model(x), y)

    params = model.parameters()
    assert len(params) == 6
    assert gradcheck(loss, params)


# ----------------------------------------------------------------------------- Dropout


def test_dropout_eval_is_identity():
    drop = Dropout(0.5, rng=np.random.default_rng(0)).eval()
    x = Tensor(np.random.default_rng(1).standard_normal((5, 4)), requires_grad=True)
    assert drop(x) is x


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_train_drops_about_p_and_rescales(p):
    drop = Dropout(p, rng=np.random.default_rng(0))
    y = drop(Tensor(np.ones((200, 500), np.float32))).data
    assert y.dtype == np.float32
    kept = y != 0
    assert abs((~kept).mean() - p) < 0.01  # 10^5 draws: the std of the fraction is ~0.0016
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(y.mean() - 1) < 0.02


def test_dropout_gradient_flows_only_through_kept_units():
    p = 0.4
    drop = Dropout(p, rng=np.random.default_rng(0))
    x = Tensor(np.random.default_rng(1).uniform(1, 2, (30, 20)), requires_grad=True)
    y = drop(x)
    kept = y.data != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(y.data, np.where(kept, x.data / (1 - p), 0), rtol=1e-12)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, np.where(kept, 1 / (1 - p), 0), rtol=1e-12)


def test_dropout_zero_is_identity_in_training():
    x = Tensor(np.ones(4))
    assert Dropout(0.0)(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"Dropout probability must be in \[0, 1\)"):
        Dropout(p)


def test_mlp_dropout_is_active_only_in_training():
    model = MLP([8, 16, 4], dropout=0.5, seed=0)
    assert [type(m) for m in model.layers] == [Linear, ReLU, Dropout, Linear]
    x = Tensor(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    assert not np.array_equal(model(x).data, model(x).data)
    model.eval()
    np.testing.assert_array_equal(model(x).data, model(x).data)


# ----------------------------------------------------------------------------- name_scope


def test_ops_carry_the_scopes_of_their_modules():
    model = MLP([784, 32, 10], seed=0)
    x = Tensor(np.zeros((2, 784), np.float32))
    loss = cross_entropy(model(x), [3, 7])
    mlp, l1, l2 = "MLP(784-32-10)", "Linear(784→32)", "Linear(32→10)"
    found = sorted((type(op).__name__, op.scope) for op in recorded_ops(loss))
    assert found == sorted([("Affine", (mlp, l1)), ("ReLU", (mlp,)), ("Affine", (mlp, l2)),
                            ("CrossEntropy", ())])


def test_scope_is_restored_when_forward_raises():
    model = MLP([4, 3], seed=0)
    with pytest.raises(ValueError):
        model(Tensor(np.zeros((1, 5))))
    out = Tensor(np.ones(2), requires_grad=True) * 2
    assert out._ctx.scope == ()


def test_load_state_dict_stores_c_order_copies():
    """A transposed (F-order) source must not leave a strided weight behind: every optimizer
    update of it would walk memory with a stride."""
    layer = Linear(4, 3)
    source = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    layer.load_state_dict({"weight": source, "bias": np.zeros(3, np.float32)})
    assert layer.weight.data.flags.c_contiguous and layer.weight.data is not source
    np.testing.assert_array_equal(layer.weight.data, source)


def test_frozen_shares_the_weights_as_constants_and_gives_the_same_input_gradient():
    model = MLP([5, 4, 3], seed=0)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5)), requires_grad=True)
    frozen = model.frozen()
    assert frozen.parameters() == [] and len(model.parameters()) == 4
    assert all(f.data is p.data for f, p in zip(frozen.layers[0].__dict__.values(),
                                                model.layers[0].__dict__.values())
               if isinstance(p, Tensor))
    (gx_frozen,) = grad(frozen(x).sum(), [x])
    (gx_real,) = grad(model(x).sum(), [x])
    np.testing.assert_array_equal(gx_frozen.data, gx_real.data)
    out = frozen(x)
    out.sum().backward()
    assert all(p.grad is None for p in model.parameters())  # no weight gradient, anywhere
    assert type(out._ctx.parents[1]).__name__ == "Tensor" and not out._ctx.parents[1].requires_grad
