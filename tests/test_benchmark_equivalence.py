"""The benchmark compares equal work: every contender starts from the same weights, computes
the same gradients (to float32 rounding) on the same real MNIST batches, in the same order."""
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import numpy_mlp
from benchmarks.contenders import accuracy, epoch_order, initial_params, make_trainer, run_epoch
from benchmarks.train_speed import ROOT, check_targets, ratios
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.nn import MLP

SIZES = {"784-128-10": [784, 128, 10], "784-512-512-10": [784, 512, 512, 10]}
EPS = np.finfo(np.float32).eps


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir, val_size=0)


@pytest.fixture(scope="module")
def batch(mnist):
    idx = epoch_order(0, 0, len(mnist.train_x))[:128]
    return mnist.train_x[idx], mnist.train_y[idx]


def assert_close(got, want, ulps: float):
    """Equal up to `ulps` float32 roundings, relative to each array's largest entry."""
    for (gw, gb), (ww, wb) in zip(got, want, strict=True):
        for g, w in ((gw, ww), (gb, wb)):
            assert g.shape == w.shape and g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=ulps * EPS, atol=ulps * EPS * np.abs(w).max())


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_engine_gradients_equal_handwritten(sizes, batch):
    init = initial_params(sizes, seed=0)
    engine = make_trainer("engine", init).grads(*batch)
    hand = make_trainer("numpy", init).grads(*batch)
    assert_close(engine, hand, ulps=4)
    assert all(np.abs(gw).max() > 0 for gw, _ in hand)  # a real signal reaches every layer


def test_initial_params_are_the_engines_mlp_init():
    state = list(MLP([784, 128, 10], seed=3).state_dict().values())
    flat = [a for pair in initial_params([784, 128, 10], seed=3) for a in pair]
    assert len(flat) == len(state) == 4 and all(np.array_equal(a, b) for a, b in zip(flat, state))
    assert not np.array_equal(flat[0], initial_params([784, 128, 10], seed=4)[0][0])


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(0, 1, 1000)
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert np.array_equal(a, epoch_order(0, 1, 1000))
    assert not np.array_equal(a, epoch_order(0, 2, 1000))


def test_training_loop_does_the_same_steps(mnist):
    """Thirty SGD steps through the shared loop (last batch partial): the engine and the
    hand-written network end with the same weights, so they did the same work."""
    init = initial_params([784, 128, 10], seed=0)
    engine, hand = make_trainer("engine", init), make_trainer("numpy", init)
    order = epoch_order(0, 0, len(mnist.train_x))[:3800]  # 29 full batches and one of 88
    for t in (engine, hand):
        assert run_epoch(t, mnist.train_x, mnist.train_y, order, 128)[1] == 30
    after = [(w.data, b.data) for w, b in zip(engine.model.parameters()[0::2],
                                               engine.model.parameters()[1::2])]
    assert_close(after, hand.params, ulps=64)
    assert not np.allclose(hand.params[0][0], init[0][0])
    acc = accuracy(hand, mnist.test_x, mnist.test_y)
    assert acc > 0.8 and accuracy(engine, mnist.test_x, mnist.test_y) == pytest.approx(acc, abs=1e-3)


def test_handwritten_sgd_step_is_w_minus_lr_g(batch):
    init = initial_params([784, 128, 10], seed=0)
    params = [(w.copy(), b.copy()) for w, b in init]
    loss, grads = numpy_mlp.loss_and_grads(params, *batch)
    numpy_mlp.sgd_step(params, grads, 0.1)
    assert 2.0 < loss < 2.6  # about ln(10) for a fresh network
    for (w, b), (w0, b0), (gw, gb) in zip(params, init, grads):
        np.testing.assert_array_equal(w, w0 - np.float32(0.1) * gw)
        np.testing.assert_array_equal(b, b0 - np.float32(0.1) * gb)


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_tensorflow_gradients_equal_handwritten(tf, sizes, batch):
    init = initial_params(sizes, seed=0)
    trainer = make_trainer("tensorflow", init)
    assert_close(trainer.grads(*batch), make_trainer("numpy", init).grads(*batch), ulps=64)
    np.testing.assert_allclose(trainer.logits(batch[0]), numpy_mlp.forward(init, batch[0]),
                               rtol=1e-5, atol=1e-5)


def test_ratios_pair_epochs_of_the_same_round():
    res = {"engine": {"epoch_seconds": [1.0, 4.0, 1.2], "peak_rss_mb": 120.0, "steps_per_epoch": 10},
           "numpy": {"epoch_seconds": [1.0, 2.0, 1.0], "peak_rss_mb": 100.0}}
    r = ratios(res)["engine/numpy"]
    assert r["time_per_round"] == [1.0, 2.0, 1.2] and r["time"] == 1.2
    assert r["peak_rss"] == pytest.approx(1.2) and r["extra_us_per_step"] == pytest.approx(2e4)
    t = check_targets("784-128-10", ratios(res))
    assert t["time engine/numpy"] == {"value": 1.2, "limit": 1.10, "met": False}
    assert t["peak RSS engine/numpy"]["met"]


def test_worker_trains_and_reports(mnist_dir):
    """The worker process behind the benchmark: ready, one epoch, its own peak RSS."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", "numpy", "--limit", "640",
         "--warmup-steps", "1", "--data", str(mnist_dir)],
        input="".join(json.dumps(cmd) + "\n" for cmd in [
            *({"cmd": "train", "epoch": 0, "part": k, "parts": 2} for k in range(2)),
            {"cmd": "test"}, {"cmd": "quit"}]),
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ready, part0, part1, test, done = (json.loads(line) for line in proc.stdout.splitlines())
    assert ready["ready"] and ready["openblas_threads"] in (1, None)
    assert (part0["steps"], part1["steps"]) == (2, 3)  # 5 batches of the 640 examples, split
    assert part0["seconds"] > 0 and part1["seconds"] > 0 and 0.3 < test["test_accuracy"] <= 1
    assert done["peak_rss_mb"] > 200 and done["load_peak_rss_mb"] > 200  # MNIST as float32 alone


def test_overhead_measurement_reports_every_figure():
    """The per-op, per-step and backward-chain figures the benchmark's table quotes (a small
    run; the chain's own check, x.grad == 1 after 1,000 multiplies by 1, runs inside)."""
    from benchmarks.worker import measure_overhead

    ov = measure_overhead(chain=1000, number=400, repeat=1)
    assert ov["chain_ops"] == 1000
    for key in ("op_recorded_us", "op_no_grad_us", "numpy_add_us", "tiny_step_engine_us",
                "tiny_step_numpy_us", "chain_forward_s", "chain_backward_s"):
        assert 0 < ov[key] < 1e6, key
