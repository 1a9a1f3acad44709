"""The time-to-accuracy benchmark races equal work: bit-identical augmented batches in every
process, the same momentum SGD steps (engine and hand-written NumPy bit for bit), and its
figures (seconds to an accuracy, ratios, targets) computed as the table says."""
import json
import subprocess
import sys
import zlib
from typing import Any

import numpy as np
import pytest

from benchmarks import numpy_mlp
from benchmarks.contenders import (
    accuracy,
    augmented_batches,
    epoch_order,
    initial_params,
    make_trainer,
)
from benchmarks.time_to_accuracy import (
    RECIPE,
    check_targets,
    first_reached,
    means,
    parse_args,
    ratios,
)
from benchmarks.train_speed import ROOT
from tinygrad_mnist.augment import epoch_shifts, shift
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.optim import SGD, CosineLR
from tinygrad_mnist.tensor import Tensor

OPTIM = {k: RECIPE[k] for k in ("momentum", "nesterov", "weight_decay")}
SMALL = [784, 64, 32, 10]  # the recipe's depth, smaller: the same code paths, faster


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir, val_size=RECIPE["val_size"], seed=0)


def crc(batches) -> int:
    c = 0
    for xb, yb in batches:
        c = zlib.crc32(yb, zlib.crc32(xb, c))
    return c


def test_augmented_batches_are_the_epochs_shuffled_shifted_digits(mnist):
    x, y = mnist.train_x[:1000], mnist.train_y[:1000]
    batches = augmented_batches(x, y, seed=0, epoch=3, batch=128, max_shift=2)
    order, shifts = epoch_order(0, 3, 1000), epoch_shifts(0, 3, 1000)
    assert [len(b) for b, _ in batches] == [128] * 7 + [104]
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), shift(x[order], shifts))
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), y[order])
    assert not np.array_equal(batches[0][0], x[order[:128]])  # really shifted
    middle = augmented_batches(x, y, seed=0, epoch=3, batch=128, max_shift=2, first=2, stop=5)
    assert crc(middle) == crc(batches[2:5])  # a slice is the same batches as in the whole epoch
    assert crc(augmented_batches(x, y, 0, 4, 128, 2)) != crc(batches)


def test_engine_and_handwritten_take_identical_momentum_steps(mnist):
    """Ten steps of the recipe's Nesterov SGD with weight decay and a changing learning rate:
    the engine and the hand-written network end with bit-identical weights."""
    init = initial_params(SMALL, seed=0)
    engine, hand = (make_trainer(n, init, RECIPE["lr"], **OPTIM) for n in ("engine", "numpy"))
    for step, (xb, yb) in enumerate(augmented_batches(mnist.train_x, mnist.train_y, 0, 0, 128, 2,
                                                      0, 10)):
        for t in (engine, hand):
            t.set_lr(0.1 - 0.005 * step)
            t.step(xb, yb)
    got = [p.data for p in engine.model.parameters()]
    want = [a for pair in hand.params for a in pair]
    for g, w, w0 in zip(got, want, [a for pair in init for a in pair]):
        np.testing.assert_array_equal(g, w)
        assert not np.array_equal(g, w0)
    engine.load(init)  # load undoes the warm-up: weights and momenta
    assert engine.opt.state == [{}] * 6 and engine.opt.steps == 0
    np.testing.assert_array_equal(engine.model.parameters()[0].data, init[0][0])


def test_handwritten_momentum_step_is_the_engines_sgd():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(3)]
    p = Tensor(w.copy(), requires_grad=True)
    opt = SGD([p], lr=0.1, **OPTIM)
    params, velocity = [(w.copy(), np.zeros(3, np.float32))], [None, None]
    for k, g in enumerate(grads):
        p.grad = Tensor(g)
        opt.step()
        numpy_mlp.sgd_momentum_step(params, [(g, np.zeros(3, np.float32))], velocity, 0.1, **OPTIM)
        np.testing.assert_array_equal(params[0][0], p.data)
        if k == 0:  # by hand: v = g + wd w, and the Nesterov step goes along g + wd w + m v
            d = grads[0] + np.float32(1e-4) * w
            np.testing.assert_allclose(p.data, w - np.float32(0.1) * (d + np.float32(0.9) * d),
                                       rtol=1e-6)


def five_momentum_steps(name: str, mnist) -> tuple[Any, Any]:
    """Contender `name` and the hand-written network after the same 5 recipe steps."""
    init = initial_params(SMALL, seed=0)
    other, hand = (make_trainer(n, init, RECIPE["lr"], **OPTIM) for n in (name, "numpy"))
    for step, (xb, yb) in enumerate(augmented_batches(mnist.train_x, mnist.train_y, 0, 0, 128, 2,
                                                      0, 5)):
        for t in (other, hand):
            t.set_lr(0.1 - 0.01 * step)
            t.step(xb, yb)
    return other, hand


def test_tensorflow_takes_the_same_momentum_steps(tf, mnist):
    flow, hand = five_momentum_steps("tensorflow", mnist)
    got = [v.numpy() for v in flow.vars]
    for g, w in zip(got, [a for pair in hand.params for a in pair]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_torch_takes_the_same_momentum_steps(mnist, torch):
    torch_t, hand = five_momentum_steps("torch", mnist)
    got = [a for m in torch_t.model[0::2] for a in (m.weight.detach().numpy().T,
                                                     m.bias.detach().numpy())]
    for g, w in zip(got, [a for pair in hand.params for a in pair]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_worker_trains_the_recipe_on_the_same_bytes(mnist_dir, mnist):
    """A worker process: its slices' CRC32 equals this process's batches' (so any two
    processes agree), the steps are counted per slice, and it validates and tests."""
    recipe = {**RECIPE, "sizes": SMALL, "epochs": 1}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", "numpy", "--limit", "640", "--threads", "1",
         "--warmup-steps", "1", "--data", str(mnist_dir), "--recipe", json.dumps(recipe)],
        input="".join(json.dumps(cmd) + "\n" for cmd in [
            *({"cmd": "train", "epoch": 0, "part": k, "parts": 2} for k in range(2)),
            {"cmd": "val"}, {"cmd": "test"}, {"cmd": "quit"}]),
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ready, part0, part1, val, test, done = (json.loads(line) for line in proc.stdout.splitlines())
    assert ready["ready"] and ready["steps_per_epoch"] == 5 and ready["train_examples"] == 640
    assert (part0["steps"], part1["steps"]) == (2, 3)
    batches = augmented_batches(mnist.train_x[:640], mnist.train_y[:640], 0, 0, 128, 2,
                                augment=RECIPE["augment"])
    assert (part0["crc32"], part1["crc32"]) == (crc(batches[:2]), crc(batches[2:]))
    hand = make_trainer("numpy", initial_params(SMALL, 0), RECIPE["lr"], **OPTIM)
    for step, (xb, yb) in enumerate(batches):  # the same steps, here: the same accuracies there
        hand.set_lr(CosineLR(RECIPE["lr"], 1)(step / 5))
        hand.step(xb, yb)
    assert val["val_accuracy"] == accuracy(hand, mnist.val_x, mnist.val_y) > 0.2
    assert test["test_accuracy"] == accuracy(hand, mnist.test_x, mnist.test_y) > 0.2
    assert done["peak_rss_mb"] > 100


def test_first_reached_and_ratios():
    curve = [{"seconds": 1.0, "val_accuracy": 0.97}, {"seconds": 2.0, "val_accuracy": 0.985},
             {"seconds": 3.0, "val_accuracy": 0.979}, {"seconds": 4.0, "val_accuracy": 0.99}]
    assert first_reached(curve, 0.98) == 2.0 and first_reached(curve, 0.99) == 4.0
    assert first_reached(curve, 0.995) is None
    curve[3]["epochs"] = 2.5
    assert first_reached(curve, 0.99, "epochs") == 2.5
    res = {"engine": {"train_seconds": 6.0, "seconds_to": {"0.98": 2.0, "0.99": None}},
           "torch": {"train_seconds": 4.0, "seconds_to": {"0.98": 2.5, "0.99": 3.0}}}
    rat = ratios([res])
    assert rat == {"engine/torch": {"all_epochs": 1.5, "0.98": 0.8, "0.99": None}}
    checks = check_targets(1, rat)
    assert checks["time to 99% val, engine/torch"] == {"value": None, "limit": 1.0, "met": None}
    assert checks["time to 98% val, engine/torch"] == {"value": 0.8, "limit": 1.0, "met": True}
    assert checks["all epochs, engine/torch"] == {"value": 1.5, "limit": 1.0, "met": False}
    assert check_targets(0, rat) == {}  # the targets are for one thread only


def test_ratios_and_means_over_seeds():
    """Over several races, a ratio is of summed seconds, to an accuracy over the races where
    both reached it; a mean to an accuracy counts the races that reached it."""
    def race(engine, torch):
        return {name: {"train_seconds": total, "test_accuracy": acc,
                       "seconds_to": {"0.98": to98, "0.99": to99}}
                for name, (total, acc, to98, to99) in (("engine", engine), ("torch", torch))}
    races = [race((6.0, 0.99, 2.0, None), (4.0, 0.98, 2.5, 3.0)),
             race((10.0, 0.97, 3.0, 5.0), (12.0, 0.99, 2.0, 6.0))]
    rat = ratios(races)["engine/torch"]
    assert rat["all_epochs"] == 16.0 / 16.0
    assert rat["0.98"] == 5.0 / 4.5
    assert rat["0.99"] == 5.0 / 6.0  # the first race is left out: the engine never got there
    m = means(races)
    assert m["engine"]["train_seconds"] == 8.0 and m["torch"]["seconds_to"]["0.98"] == 2.25
    assert m["engine"]["seconds_to"]["0.99"] == 5.0 and m["engine"]["reached"] == {"0.98": 2, "0.99": 1}
    assert m["torch"]["test_accuracy_range"] == [0.98, 0.99]
    assert m["engine"]["test_accuracy"] == pytest.approx(0.98)


def test_arguments():
    args = parse_args(["--threads", "1,default", "--max-shift", "0", "--no-nesterov"])
    assert args.threads == [1, 0] and args.seeds == [0, 1, 2]
    recipe = {k: v for k, v in RECIPE.items() if k != "seed"}  # each race adds its own
    assert args.recipe == {**recipe, "max_shift": 0, "nesterov": False}
    quick = parse_args(["--quick"])
    assert quick.threads == [1] and quick.recipe["epochs"] == 2 and quick.limit == 5120
    assert quick.seeds == [0]
    assert parse_args(["--seeds", "3,1"]).seeds == [3, 1]
    for bad in (["--threads", "two"], ["--seeds", "1,1"], ["--seeds", "-1"], ["--seeds", "a"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_whole_benchmark_tiny(mnist_dir, tmp_path):
    """The parent end to end on a tiny race (engine and NumPy only): the two curves are the
    same (bit-identical steps give identical accuracies), and both files are written."""
    from benchmarks import time_to_accuracy

    result = time_to_accuracy.main(
        ["--threads", "1", "--seeds", "0", "--contenders", "engine,numpy", "--sizes", "784,32,10",
         "--epochs", "1", "--parts", "2", "--limit", "640", "--warmup-steps", "1",
         "--data", str(mnist_dir), "--out", str(tmp_path)])
    (run,) = result["runs"]
    (summary,) = result["summary"]
    assert summary["ratios"] == run["ratios"]  # one seed: the summary is that race
    assert set(summary["targets"]) >= {"all epochs, engine/numpy"}
    engine, hand = run["contenders"]["engine"], run["contenders"]["numpy"]
    assert [p["val_accuracy"] for p in engine["curve"]] == [p["val_accuracy"] for p in hand["curve"]]
    assert [p["epochs"] for p in engine["curve"]] == [0.5, 1.0]
    assert engine["test_accuracy"] == hand["test_accuracy"] > 0.2  # 5 steps: well above chance
    assert engine["train_seconds"] > 0 and set(run["ratios"]) == {"engine/numpy"}
    saved = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert saved["recipe"]["sizes"] == [784, 32, 10] and saved["train_examples"] == 640
    table = (tmp_path / "time_to_accuracy.md").read_text()
    assert "| 1 | engine |" in table and "| 1 | 0 | numpy |" in table and "784-32-10" in table
