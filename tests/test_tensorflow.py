"""Cross-check every op of the engine against TensorFlow's GradientTape.

Our rules are derived by hand; TensorFlow's are an independent implementation. Each test runs
the same random inputs through both and demands equal forward values, equal vector-Jacobian
products for every input (random upstream gradient), equal dtypes, and — for a few ops and an
MLP — equal Hessian-vector products (our create_graph=True against nested tapes).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from tinygrad_mnist import Tensor, grad, ops

F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- helpers


def _sid(shape: tuple) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _inputs(shapes: Sequence[tuple], positive: Sequence[bool], dtype: Any,
            seed: int) -> list[np.ndarray]:
    """Random inputs; a positive one (log, sqrt, a pow base, a divisor) lies in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.uniform(0.5, 2.0, s) if pos else rng.standard_normal(s), dtype=dtype)
            for s, pos in zip(shapes, positive)]


def _assert_same(ours: Tensor | None, theirs: Any, tol: dict, what: str) -> None:
    """Equal shape, dtype and values; a gradient that is None on one side must be 0 on the other."""
    theirs = None if theirs is None else np.asarray(theirs)
    if ours is None or theirs is None:
        other = theirs if ours is None else ours.numpy()
        assert other is None or not np.any(other), f"{what}: None on one side, nonzero on the other"
        return
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs TF {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs TF {theirs.dtype}"
    np.testing.assert_allclose(ours.numpy(), theirs, **tol, err_msg=what)


def _tf_dense(tf: Any, g: Any) -> Any:
    """TF returns IndexedSlices for gather's gradient; make it an array (or keep None)."""
    return None if g is None else tf.convert_to_tensor(g).numpy()


def check_vjp(tf: Any, ours: Callable, theirs: Callable, arrays: Sequence[np.ndarray],
              tol: dict = F64, seed: int = 1) -> None:
    """Forward values and the gradient of every input for a random upstream gradient."""
    xs = [Tensor(a, requires_grad=True) for a in arrays]
    y = ours(*xs)
    txs = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        tape.watch(txs)
        ty = theirs(tf, *txs)
    _assert_same(y, ty.numpy(), tol, "forward")
    v = np.asarray(np.random.default_rng(seed).standard_normal(y.shape), dtype=y.dtype)
    tgs = tape.gradient(ty, txs, output_gradients=tf.constant(v))
    for i, (g, tg) in enumerate(zip(grad(y, xs, grad_output=v), tgs)):
        _assert_same(g, _tf_dense(tf, tg), tol, f"gradient of input {i}")


def check_hvp(tf: Any, ours: Callable, theirs: Callable, arrays: Sequence[np.ndarray],
              tol: dict = F64, seed: int = 2) -> None:
    """With f = sum(op(xs) * v): the gradient of f and the Hessian-vector product H·u."""
    rng = np.random.default_rng(seed)
    xs = [Tensor(a, requires_grad=True) for a in arrays]
    y = ours(*xs)
    v = rng.standard_normal(y.shape)
    us = [rng.standard_normal(a.shape) for a in arrays]
    gs = grad((y * Tensor(v)).sum(), xs, create_graph=True)
    hvs = grad(sum((g * Tensor(u)).sum() for g, u in zip(gs, us) if g is not None), xs)

    txs = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as outer:
        outer.watch(txs)
        with tf.GradientTape() as inner:
            inner.watch(txs)
            tf_f = tf.reduce_sum(theirs(tf, *txs) * v)
        tgs = [tf.convert_to_tensor(g) for g in inner.gradient(tf_f, txs)]
        tf_s = tf.add_n([tf.reduce_sum(g * u) for g, u in zip(tgs, us)])
    thvs = outer.gradient(tf_s, txs)
    for i, (g, tg, hv, thv) in enumerate(zip(gs, tgs, hvs, thvs)):
        _assert_same(g, tg.numpy(), tol, f"gradient of input {i}")
        _assert_same(hv, _tf_dense(tf, thv), tol, f"Hessian-vector product, input {i}")


def case(id: str, ours: Callable, theirs: Callable, *shapes: tuple,
         positive: Sequence[bool] = ()) -> Any:
    """One op under test: our expression, TF's (taking tf first), input shapes, positive inputs."""
    pos = tuple(positive) or (False,) * len(shapes)
    return pytest.param(ours, theirs, shapes, pos, id=id)


def same(id: str, fn: Callable, *shapes: tuple, positive: Sequence[bool] = ()) -> Any:
    """A case whose Python expression (operators, indexing) means the same on both sides."""
    return case(id, fn, lambda tf, *xs: fn(*xs), *shapes, positive=positive)


# ----------------------------------------------------------------------------- cases

BROADCAST_PAIRS = [((3, 4), (3, 4)), ((3, 4), ()), ((), (3, 4)), ((1, 4), (3, 1)),
                   ((2, 3, 4), (3, 1)), ((4,), (2, 1, 4))]
BINARY = [("add", lambda a, b: a + b, (False, False)),
          ("sub", lambda a, b: a - b, (False, False)),
          ("mul", lambda a, b: a * b, (False, False)),
          ("div", lambda a, b: a / b, (False, True)),
          ("pow", lambda a, b: a ** b, (True, False))]

ELEMENTWISE = [same(f"{name}-{_sid(sa)}|{_sid(sb)}", fn, sa, sb, positive=pos)
               for name, fn, pos in BINARY for sa, sb in BROADCAST_PAIRS] + [
    same("pow-number-3-negative-base", lambda x: x ** 3, (3, 4)),
    same("pow-number-2.5", lambda x: x ** 2.5, (3, 4), positive=[True]),
    same("pow-number--1.5", lambda x: x ** -1.5, (3, 4), positive=[True]),
    same("pow-number-0.5", lambda x: x ** 0.5, (2, 3, 4), positive=[True]),
    same("rpow-2**x", lambda x: 2.0 ** x, (3, 4)),
    same("number-minus-x", lambda x: 1.5 - x, (3, 4)),
    same("number-over-x", lambda x: 3.0 / x, (3, 4), positive=[True]),
    same("neg", lambda x: -x, (2, 3, 4)),
    case("exp", lambda x: x.exp(), lambda tf, x: tf.exp(x), (2, 3, 4)),
    case("log", lambda x: x.log(), lambda tf, x: tf.math.log(x), (2, 3, 4), positive=[True]),
    case("sqrt", lambda x: x.sqrt(), lambda tf, x: tf.sqrt(x), (2, 3, 4), positive=[True]),
    case("relu", lambda x: x.relu(), lambda tf, x: tf.nn.relu(x), (2, 3, 4)),
    case("tanh", lambda x: x.tanh(), lambda tf, x: tf.tanh(x), (2, 3, 4)),
    case("sigmoid", lambda x: x.sigmoid(), lambda tf, x: tf.sigmoid(x), (2, 3, 4)),
    case("astype-float32", lambda x: x.astype(np.float32), lambda tf, x: tf.cast(x, tf.float32),
         (2, 3, 4)),
    case("sigmoid-saturated", lambda x: (x * 400).sigmoid(), lambda tf, x: tf.sigmoid(x * 400),
         (3, 4)),
]

MATMUL = [
    case("2d@2d", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b), (3, 4), (4, 5)),
    case("3d@3d", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b), (2, 3, 4), (2, 4, 5)),
    case("batch-broadcast-2x1x3x4@5x4x2", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b),
         (2, 1, 3, 4), (5, 4, 2)),
    case("3d@2d", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b), (2, 3, 4), (4, 5)),
    case("2d@3d", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b), (3, 4), (2, 4, 5)),
    case("1d@2d", lambda a, b: a @ b,
         lambda tf, a, b: tf.linalg.matvec(b, a, transpose_a=True), (4,), (4, 5)),
    case("2d@1d", lambda a, b: a @ b, lambda tf, a, b: tf.linalg.matvec(a, b), (3, 4), (4,)),
    case("1d@1d", lambda a, b: a @ b, lambda tf, a, b: tf.tensordot(a, b, 1), (4,), (4,)),
    case("3d@1d", lambda a, b: a @ b, lambda tf, a, b: tf.linalg.matvec(a, b), (2, 3, 4), (4,)),
    case("1d@3d", lambda a, b: a @ b,
         lambda tf, a, b: tf.linalg.matvec(b, a, transpose_a=True), (4,), (2, 4, 5)),
]

TF_REDUCE = {"sum": "reduce_sum", "mean": "reduce_mean", "max": "reduce_max"}
REDUCTIONS = [
    case(f"{op}-axis={axis}-keepdims={kd}".replace(" ", ""),
         lambda x, op=op, axis=axis, kd=kd: getattr(x, op)(axis=axis, keepdims=kd),
         lambda tf, x, op=op, axis=axis, kd=kd: getattr(tf, TF_REDUCE[op])(
             x, axis=list(axis) if isinstance(axis, tuple) else axis, keepdims=kd),
         (2, 3, 4))  # random normal inputs: no ties for max
    for op in TF_REDUCE for axis in (None, 0, -1, (0, 2), (1,), ()) for kd in (False, True)
]

SHAPE_OPS = [
    case("reshape-6x4", lambda x: x.reshape(6, 4), lambda tf, x: tf.reshape(x, (6, 4)), (2, 3, 4)),
    case("reshape-4x-1", lambda x: x.reshape((4, -1)), lambda tf, x: tf.reshape(x, (4, -1)),
         (2, 3, 4)),
    case("reshape-flat", lambda x: x.reshape(-1), lambda tf, x: tf.reshape(x, (-1,)), (2, 3, 4)),
    case("transpose-default", lambda x: x.transpose(), lambda tf, x: tf.transpose(x), (2, 3, 4)),
    case("transpose-1,0,2", lambda x: x.transpose(1, 0, 2),
         lambda tf, x: tf.transpose(x, (1, 0, 2)), (2, 3, 4)),
    case("transpose-2,0,1", lambda x: x.transpose((2, 0, 1)),
         lambda tf, x: tf.transpose(x, (2, 0, 1)), (2, 3, 4)),
    case("T-2d", lambda x: x.T, lambda tf, x: tf.transpose(x), (3, 4)),
    case("T-3d", lambda x: x.T, lambda tf, x: tf.transpose(x), (2, 3, 4)),
    case("broadcast_to-3x1->2x3x4", lambda x: x.broadcast_to((2, 3, 4)),
         lambda tf, x: tf.broadcast_to(x, (2, 3, 4)), (3, 1)),
    case("broadcast_to-scalar->2x3", lambda x: x.broadcast_to((2, 3)),
         lambda tf, x: tf.broadcast_to(x, (2, 3)), ()),
    case("broadcast_to-4->3x4", lambda x: x.broadcast_to((3, 4)),
         lambda tf, x: tf.broadcast_to(x, (3, 4)), (4,)),
    case("broadcast_to-1x4->3x4", lambda x: x.broadcast_to((3, 4)),
         lambda tf, x: tf.broadcast_to(x, (3, 4)), (1, 4)),
]

INDEXING = [  # basic slicing means the same on both sides (TF: strided_slice)
    same("slice-[1:3]", lambda x: x[1:3], (4, 5, 6)),
    same("slice-step2-axis1", lambda x: x[:, ::2], (4, 5, 6)),
    same("slice-[...,-1]", lambda x: x[..., -1], (4, 5, 6)),
    same("slice-reversed-axis0-int-range", lambda x: x[::-1, 1, 2:5], (4, 5, 6)),
    same("slice-[None,1:,:,3]", lambda x: x[None, 1:, :, 3], (4, 5, 6)),
    same("int-[2]", lambda x: x[2], (4, 5, 6)),
    same("int-[1,2,3]", lambda x: x[1, 2, 3], (4, 5, 6)),
    case("gather-rows-repeated", lambda x: x[[0, 2, 0, 0]],
         lambda tf, x: tf.gather(x, [0, 2, 0, 0]), (4, 5, 6)),
    case("gather-axis1-repeated", lambda x: x[:, [1, 1, 3]],
         lambda tf, x: tf.gather(x, [1, 1, 3], axis=1), (4, 5, 6)),
    case("gather-2d-index", lambda x: x[np.array([[0, 1], [1, 1]])],
         lambda tf, x: tf.gather(x, [[0, 1], [1, 1]]), (4, 5)),
    case("gather_nd-pairs-repeated", lambda x: x[[0, 1, 1, 3], [2, 2, 2, 0]],
         lambda tf, x: tf.gather_nd(x, [[0, 2], [1, 2], [1, 2], [3, 0]]), (4, 5)),
]

SOFTMAX = [
    case(f"{name}-{_sid(shape)}-axis={axis}",
         lambda x, name=name, axis=axis: getattr(x, name)(axis=axis),
         lambda tf, x, name=name, axis=axis: getattr(tf.nn, name)(x, axis=axis), shape)
    for name in ("log_softmax", "softmax") for shape, axis in (((3, 5), -1), ((3, 5), 0),
                                                               ((2, 3, 4), 1))
] + [  # the saliency's objective: the target's logit minus the log-sum-exp of the others
    case(f"margin-target={t}", lambda x, t=t: ops.Margin.apply(x, target=t),
         lambda tf, x, t=t: x[:, t] - tf.reduce_logsumexp(
             tf.gather(x, [j for j in range(5) if j != t], axis=1), axis=1), (3, 5))
    for t in (0, 3)]


# ----------------------------------------------------------------------------- first order


@pytest.mark.parametrize("ours, theirs, shapes, positive",
                         ELEMENTWISE + MATMUL + REDUCTIONS + SHAPE_OPS + INDEXING + SOFTMAX)
def test_op_matches_tensorflow_float64(tf, ours, theirs, shapes, positive) -> None:
    check_vjp(tf, ours, theirs, _inputs(shapes, positive, np.float64, seed=0))


FLOAT32 = [
    same("mul-2x3x4|3x1", lambda a, b: a * b, (2, 3, 4), (3, 1)),
    same("div-3x4|scalar", lambda a, b: a / b, (3, 4), (), positive=[False, True]),
    same("pow-number-2.5", lambda x: x ** 2.5, (3, 4), positive=[True]),
    case("matmul-batch-broadcast", lambda a, b: a @ b, lambda tf, a, b: tf.matmul(a, b),
         (2, 1, 3, 4), (5, 4, 2)),
    case("mean-axis=(0,2)", lambda x: x.mean(axis=(0, 2)),
         lambda tf, x: tf.reduce_mean(x, axis=[0, 2]), (2, 3, 4)),
    case("sigmoid", lambda x: x.sigmoid(), lambda tf, x: tf.sigmoid(x), (3, 4)),
    case("log_softmax", lambda x: x.log_softmax(), lambda tf, x: tf.nn.log_softmax(x), (3, 5)),
    case("gather-repeated", lambda x: x[[0, 2, 0]], lambda tf, x: tf.gather(x, [0, 2, 0]), (4, 5)),
]


@pytest.mark.parametrize("ours, theirs, shapes, positive", FLOAT32)
def test_op_matches_tensorflow_float32(tf, ours, theirs, shapes, positive) -> None:
    """float32 stays float32 on both sides, through forward and backward."""
    check_vjp(tf, ours, theirs, _inputs(shapes, positive, np.float32, seed=0), tol=F32)


def test_max_ties_split_the_gradient_evenly(tf) -> None:
    """Our max shares the gradient equally among tied maxima (torch's max(dim) picks one);
    checked against hand-computed values, and TF's reduce_max turns out to do the same."""
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 5.0, -1.0]])
    up = np.array([1.0, 3.0, 6.0])
    want_rows = [[0, 0.5, 0.5], [1, 1, 1], [0, 6, 0]]
    xt = Tensor(x, requires_grad=True)
    xt.max(axis=1).backward(up)
    np.testing.assert_allclose(xt.grad.numpy(), want_rows, rtol=0, atol=0)

    y = np.array([[3.0, 1.0], [3.0, 3.0]])
    yt = Tensor(y, requires_grad=True)
    yt.max().backward()
    np.testing.assert_allclose(yt.grad.numpy(), [[1 / 3, 0], [1 / 3, 1 / 3]], rtol=1e-15)

    check_vjp(tf, lambda a: a.max(axis=1), lambda tf, a: tf.reduce_max(a, axis=1), [x])
    check_vjp(tf, lambda a: a.max(), lambda tf, a: tf.reduce_max(a), [y])


def _mlp_params(dtype: Any, seed: int = 3) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Inputs (8, 5), labels in 0..2, and W1 (5, 7), b1, W2 (7, 3), b2 of the given dtype."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 5)).astype(dtype)
    labels = rng.integers(0, 3, 8)
    params = [rng.standard_normal(s).astype(dtype) * 0.5 for s in ((5, 7), (7,), (7, 3), (3,))]
    return x, labels, params


@pytest.mark.parametrize("dtype, tol", [(np.float64, F64), (np.float32, F32)],
                         ids=["float64", "float32"])
def test_mlp_loss_and_gradients_match_tensorflow(tf, dtype, tol) -> None:
    """relu MLP + mean NLL of log_softmax; TF uses its fused sparse cross-entropy."""
    x, labels, arrays = _mlp_params(dtype)
    w1, b1, w2, b2 = params = [Tensor(a, requires_grad=True) for a in arrays]
    logits = (Tensor(x) @ w1 + b1).relu() @ w2 + b2
    logits.retain_grad()
    loss = -logits.log_softmax()[np.arange(len(labels)), labels].mean()
    loss.backward()

    tw1, tb1, tw2, tb2 = tparams = [tf.Variable(a) for a in arrays]
    with tf.GradientTape() as tape:
        tlogits = tf.nn.relu(x @ tw1 + tb1) @ tw2 + tb2
        tloss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tlogits))
    tgrads = tape.gradient(tloss, [*tparams, tlogits])

    _assert_same(loss, tloss.numpy(), tol, "loss")
    for name, p, tg in zip(["W1", "b1", "W2", "b2", "logits"], [*params, logits], tgrads):
        _assert_same(p.grad, tg.numpy(), tol, f"gradient of {name}")


# ----------------------------------------------------------------------------- second order

SECOND_ORDER = [
    case("tanh", lambda x: x.tanh(), lambda tf, x: tf.tanh(x), (3, 4)),
    case("sigmoid", lambda x: x.sigmoid(), lambda tf, x: tf.sigmoid(x), (3, 4)),
    case("exp", lambda x: x.exp(), lambda tf, x: tf.exp(x), (3, 4)),
    case("log", lambda x: x.log(), lambda tf, x: tf.math.log(x), (3, 4), positive=[True]),
    case("sqrt", lambda x: x.sqrt(), lambda tf, x: tf.sqrt(x), (3, 4), positive=[True]),
    same("div-broadcast", lambda a, b: a / b, (3, 4), (1, 4), positive=[False, True]),
    same("pow-tensor", lambda a, b: a ** b, (3, 4), (3, 4), positive=[True, False]),
    case("log_softmax", lambda x: x.log_softmax(), lambda tf, x: tf.nn.log_softmax(x), (3, 5)),
    case("margin", lambda x: ops.Margin.apply(x, target=2),
         lambda tf, x: x[:, 2] - tf.reduce_logsumexp(tf.gather(x, [0, 1, 3, 4], axis=1), axis=1),
         (3, 5)),
    case("softmax-axis0", lambda x: x.softmax(axis=0), lambda tf, x: tf.nn.softmax(x, axis=0),
         (3, 5)),
    case("matmul-chain-2d", lambda a, b, c: a @ b @ c,
         lambda tf, a, b, c: tf.matmul(tf.matmul(a, b), c), (2, 3), (3, 4), (4, 5)),
    case("matmul-chain-1d@2d@1d", lambda a, b, c: a @ b @ c,
         lambda tf, a, b, c: tf.tensordot(tf.linalg.matvec(b, a, transpose_a=True), c, 1),
         (3,), (3, 4), (4,)),
    case("matmul-chain-batched", lambda a, b, c: (a @ b).tanh() @ c,
         lambda tf, a, b, c: tf.matmul(tf.tanh(tf.matmul(a, b)), c), (2, 3, 4), (4, 5), (5, 2)),
    case("max-of-square", lambda x: (x * x).max(axis=1),
         lambda tf, x: tf.reduce_max(x * x, axis=1), (3, 4)),
    case("gather-of-square", lambda x: (x * x)[[0, 2, 0]],
         lambda tf, x: tf.gather(x * x, [0, 2, 0]), (3, 4)),
]


@pytest.mark.parametrize("ours, theirs, shapes, positive", SECOND_ORDER)
def test_hessian_vector_product_matches_tensorflow(tf, ours, theirs, shapes, positive) -> None:
    check_hvp(tf, ours, theirs, _inputs(shapes, positive, np.float64, seed=0))


def test_mlp_hessian_vector_product_matches_tensorflow(tf) -> None:
    """tanh MLP, mean NLL: backward(create_graph=True) then differentiate <grad, u> again.
    TF's fused sparse cross-entropy has no second derivative, so TF picks log-probs by hand."""
    x, labels, arrays = _mlp_params(np.float64)
    us = [np.random.default_rng(4).standard_normal(a.shape) for a in arrays]
    w1, b1, w2, b2 = params = [Tensor(a, requires_grad=True) for a in arrays]
    logits = (Tensor(x) @ w1 + b1).tanh() @ w2 + b2
    loss = -logits.log_softmax()[np.arange(len(labels)), labels].mean()
    loss.backward(create_graph=True)
    hvs = grad(sum((p.grad * Tensor(u)).sum() for p, u in zip(params, us)), params)

    tw1, tb1, tw2, tb2 = tparams = [tf.Variable(a) for a in arrays]
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            tlogits = tf.tanh(x @ tw1 + tb1) @ tw2 + tb2
            picked = tf.gather(tf.nn.log_softmax(tlogits), labels, axis=1, batch_dims=1)
            tloss = -tf.reduce_mean(picked)
        tgrads = inner.gradient(tloss, tparams)
        tf_s = tf.add_n([tf.reduce_sum(g * u) for g, u in zip(tgrads, us)])
    thvs = outer.gradient(tf_s, tparams)

    _assert_same(loss, tloss.numpy(), F64, "loss")
    for name, p, tg, hv, thv in zip(["W1", "b1", "W2", "b2"], params, tgrads, hvs, thvs):
        _assert_same(p.grad, tg.numpy(), F64, f"gradient of {name}")
        _assert_same(hv, thv.numpy(), F64, f"Hessian-vector product, {name}")
