"""Optimizer trajectories over 20 steps against Keras's optimizers, where both define the
same update.

What is identical, from the Keras docs: SGD's momentum and Nesterov updates (Keras keeps
velocity = momentum * velocity - lr * g, which is -lr times ours at a constant lr) and
weight decay without momentum (Keras decays the weights by lr * wd * w before the step, ours
adds wd * w to the gradient: the same step). Not compared: weight decay with momentum or Adam
(Keras decays the weights outside the momenta, ours inside), and Adam's eps (Keras's is the
paper's "epsilon hat", added to sqrt(v) before bias correction; ours is Algorithm 1's), so
Adam runs with eps = 1e-12 on both sides, where the two definitions agree to ~1e-12.

Keras counts Adam's steps per optimizer, not per parameter; a parameter that first gets a
gradient at step 4 is compared with a Keras Adam that starts then (Adam's definition).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tinygrad_mnist import Tensor
from tinygrad_mnist.optim import SGD, Adam

STEPS, LATE = 20, 3  # parameter 1 gets no gradient in the first LATE steps
SHAPES = [(3, 4), (4,)]
LR = 0.125  # hyperparameters exactly representable in float32, as Keras keeps some in float32


def gradient(w: np.ndarray, t: int, i: int) -> np.ndarray:
    """The gradient of a fixed random quadratic at the current weights, so that any difference
    in a step changes every later gradient too."""
    rng = np.random.default_rng(100 * t + i)
    return rng.uniform(0.5, 1.5, w.shape) * w + rng.standard_normal(w.shape)


def start() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s) for s in SHAPES]


def ours_trajectory(make: Any) -> list[list[np.ndarray]]:
    params = [Tensor(w, requires_grad=True) for w in start()]
    opt = make(params)
    out = []
    for t in range(STEPS):
        for i, p in enumerate(params):
            p.grad = None if i == 1 and t < LATE else Tensor(gradient(p.data, t, i))
        opt.step()
        out.append([p.data.copy() for p in params])
    return out


def keras_trajectory(tf: Any, make: Any, separate_late: bool = False) -> list[list[np.ndarray]]:
    """Keras's run of the same steps. With separate_late, parameter 1 gets its own optimizer,
    created when its first gradient comes."""
    ws = [tf.keras.Variable(w, dtype="float64") for w in start()]
    opts = [make(), make()] if separate_late else [make()] * 2
    for opt in {id(o): o for o in opts}.values():
        opt.build([w for w, o in zip(ws, opts) if o is opt])
    out = []
    for t in range(STEPS):
        grads = [tf.constant(gradient(w.numpy(), t, i)) for i, w in enumerate(ws)]
        for opt in {id(o): o for o in opts}.values():
            pairs = [(g, w) for i, (g, w, o) in enumerate(zip(grads, ws, opts))
                     if o is opt and not (i == 1 and t < LATE)]
            if pairs:
                opt.apply_gradients(pairs)
        out.append([w.numpy().copy() for w in ws])
    return out


CASES = {
    "momentum": (lambda ps: SGD(ps, lr=LR, momentum=0.875),
                 lambda tf: tf.keras.optimizers.SGD(learning_rate=LR, momentum=0.875), False),
    "nesterov": (lambda ps: SGD(ps, lr=LR, momentum=0.875, nesterov=True),
                 lambda tf: tf.keras.optimizers.SGD(learning_rate=LR, momentum=0.875, nesterov=True),
                 False),
    "weight_decay": (lambda ps: SGD(ps, lr=LR, weight_decay=0.25),
                     lambda tf: tf.keras.optimizers.SGD(learning_rate=LR, weight_decay=0.25), False),
    "adam": (lambda ps: Adam(ps, lr=LR, betas=(0.875, 0.984375), eps=1e-12),
             lambda tf: tf.keras.optimizers.Adam(learning_rate=LR, beta_1=0.875, beta_2=0.984375,
                                                 epsilon=1e-12), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_keras(tf: Any, name: str) -> None:
    ours_make, keras_make, separate_late = CASES[name]
    ours = ours_trajectory(ours_make)
    theirs = keras_trajectory(tf, lambda: keras_make(tf), separate_late)
    np.testing.assert_array_equal(ours[LATE - 1][1], start()[1])  # untouched before its gradient
    for t, (a, b) in enumerate(zip(ours, theirs)):
        for i in range(len(SHAPES)):
            np.testing.assert_allclose(a[i], b[i], rtol=1e-8, atol=1e-9,
                                       err_msg=f"{name}: parameter {i} after step {t + 1}")
    assert not np.allclose(ours[-1][0], start()[0])  # it did move


def test_keras_adam_with_one_step_count_would_differ(tf: Any) -> None:
    """The late parameter's comparison above means something: Keras's single count (the
    engine's old behaviour) gives a different trajectory for it."""
    ours_make, keras_make, _ = CASES["adam"]
    ours = ours_trajectory(ours_make)
    shared = keras_trajectory(tf, lambda: keras_make(tf), separate_late=False)
    np.testing.assert_allclose(ours[-1][0], shared[-1][0], rtol=1e-9)  # always-updated: same
    assert not np.allclose(ours[-1][1], shared[-1][1], rtol=1e-6)
