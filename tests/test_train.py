"""The training loop on real MNIST: it learns, it is reproducible, and it keeps what it saved."""

import dataclasses
import json
import os
import signal

import numpy as np
import pytest

import tinygrad_mnist.train as train_module
from tinygrad_mnist.checkpoint import EpochState, load_checkpoint, save_checkpoint
from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.predict import evaluate
from tinygrad_mnist.report import draw_pictures
from tinygrad_mnist.run_dir import PICTURES, _new_epochs_effect
from tinygrad_mnist.seeding import epoch_order
from tinygrad_mnist.train import Interrupted, TrainingDiverged, train


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir, val_size=1000, seed=0)


def quiet(*_):
    pass


SMALL = dict(hidden=(32,), batch_size=64, lr=0.05, val_size=1000, train_limit=3000)


def test_short_real_run_learns(mnist, tmp_path):
    config = TrainConfig(hidden=(64,), epochs=1, train_limit=20_000, val_size=1000, shift=0)
    summary = train(config, tmp_path, data=mnist, progress=False, log=quiet).summary
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["test_acc"] >= 0.90  # 20k examples, one epoch, 784-64-10 (measured 0.911)
    assert history[0]["val_acc"] >= 0.90
    assert history[0]["train_loss"] < 0.7  # it starts at ln(10) = 2.3 (measured 0.51)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_acc"] == summary["test_acc"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")


def test_loss_goes_down_over_epochs(mnist, tmp_path):
    config = TrainConfig(epochs=3, **SMALL)
    train(config, tmp_path, data=mnist, progress=False, log=quiet)
    losses = [row["train_loss"] for row in json.loads((tmp_path / "metrics.json").read_text())]
    assert losses[0] > losses[1] > losses[2]


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.npz").model.state_dict()


def _numbers(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in load_checkpoint(run_dir / "checkpoint.npz").history]


def test_same_seed_same_numbers_and_other_seed_differs(mnist, tmp_path):
    config = TrainConfig(epochs=1, dropout=0.2, **SMALL)
    for name, cfg in [("a", config), ("b", config), ("c", dataclasses.replace(config, seed=1))]:
        train(cfg, tmp_path / name, data=mnist, progress=False, log=quiet)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")
    assert not np.array_equal(a["layers.0.weight"], c["layers.0.weight"])


def test_each_dropout_layer_draws_its_own_masks(mnist, tmp_path, monkeypatch):
    """Two Dropout layers of one width must not drop the same units: each gets its own
    stream, and the first keeps the stream runs had before (so old stopped runs resume)."""
    from tinygrad_mnist import seeding
    asked = []

    def spy(seed, epoch, layer=0):
        asked.append((seed, epoch, layer))
        return seeding.dropout_rng(seed, epoch, layer)

    monkeypatch.setattr(train_module, "dropout_rng", spy)
    config = TrainConfig(epochs=1, dropout=0.5, **{**SMALL, "hidden": (32, 32), "train_limit": 256})
    train(config, tmp_path / "run", data=mnist, progress=False, log=quiet)
    assert asked == [(0, 0, 0), (0, 0, 1)]
    first, second = (seeding.dropout_rng(0, 0, k).random(32) for k in (0, 1))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, np.random.default_rng([0, 0, 1]).random(32))


def _signal_at_call(monkeypatch, n, signum=signal.SIGINT):
    """Send this process `signum` during the n-th loss computation, as Ctrl-C or `kill` would."""
    real, calls = train_module.cross_entropy, {"n": 0}

    def cross_entropy(logits, labels):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return real(logits, labels)

    monkeypatch.setattr(train_module, "cross_entropy", cross_entropy)


@pytest.mark.parametrize("optimizer, augment", [("sgd", "shift"), ("adam", "elastic")])
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(mnist, tmp_path, monkeypatch,
                                                               optimizer, augment):
    config = TrainConfig(epochs=3, optimizer=optimizer, dropout=0.1, augment=augment,
                         **{**SMALL, "lr": 0.05 if optimizer == "sgd" else 1e-3})
    train(config, tmp_path / "straight", data=mnist, progress=False, log=quiet)
    with monkeypatch.context() as m:
        _signal_at_call(m, 60)  # 3000 / 64 = 47 steps an epoch: stop inside epoch 2
        with pytest.raises(Interrupted):
            train(config, tmp_path / "resumed", data=mnist, progress=False,
                  log=quiet)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.npz").epoch == 1
    train(config, tmp_path / "resumed", data=mnist, resume=True, log=quiet,
          progress=optimizer == "adam")  # the progress bar starts at the step it resumes from
    assert not (tmp_path / "resumed" / "interrupted.npz").exists()  # superseded, removed
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    assert _numbers(tmp_path / "straight") == _numbers(tmp_path / "resumed")


def test_checkpoint_round_trip_gives_the_same_predictions(mnist, tmp_path):
    config = TrainConfig(epochs=1, **SMALL)
    summary = train(config, tmp_path, data=mnist, progress=False, log=quiet).summary
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt.config == config and ckpt.epoch == 1
    loss, acc = evaluate(ckpt.model, mnist.test_x, mnist.test_y)
    assert acc == summary["test_acc"] and loss == pytest.approx(summary["test_loss"])


def test_existing_run_dir_is_not_overwritten_without_resume(mnist, tmp_path):
    config = TrainConfig(epochs=1, **SMALL)
    train(config, tmp_path, data=mnist, progress=False, log=quiet)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path, data=mnist, progress=False, log=quiet)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(config, tmp_path / "empty", data=mnist, resume=True, log=quiet)


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(mnist, tmp_path):
    config = TrainConfig(epochs=2, **SMALL)
    train(dataclasses.replace(config, epochs=1), tmp_path, data=mnist, progress=False, log=quiet)
    good = (tmp_path / "checkpoint.npz").read_bytes()
    poisoned = mnist.train_x.copy()
    poisoned[:, 0] = np.nan
    bad = dataclasses.replace(mnist, train_x=poisoned)
    with pytest.raises(TrainingDiverged,
                       match=r"loss became nan at epoch 2, step 1.*last completed epoch \(1\)"):
        train(config, tmp_path, data=bad, resume=True, progress=False, log=quiet)
    assert (tmp_path / "checkpoint.npz").read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_weights_between_steps_and_keeps_the_last_epoch(mnist, tmp_path,
                                                                           monkeypatch, signum):
    config = TrainConfig(epochs=2, **SMALL)
    _signal_at_call(monkeypatch, 60, signum)  # step 13 of epoch 2 (47 steps an epoch)
    lines = []
    with pytest.raises(Interrupted) as stopped:
        train(config, tmp_path, data=mnist, progress=False, log=lines.append)
    assert stopped.value.signum == signum
    assert "interrupted during epoch 2 after step 13" in lines[-1]
    assert "checkpoint.npz holds the last completed epoch (1)" in lines[-1]
    assert "--resume continues from step 14, with the same numbers" in lines[-1]
    assert load_checkpoint(tmp_path / "checkpoint.npz").epoch == 1
    partial = load_checkpoint(tmp_path / "interrupted.npz")
    assert partial.epoch == 1 and (partial.partial.epoch, partial.partial.step) == (2, 13)
    assert partial.partial.seen == 13 * 64
    assert partial.optimizer_state["steps"] == 47 + 13  # the step it stopped after is whole
    full = load_checkpoint(tmp_path / "checkpoint.npz").model.state_dict()
    moved = partial.model.state_dict()
    assert not np.array_equal(full["layers.0.weight"], moved["layers.0.weight"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_ctrl_c_and_nan_in_the_first_epoch_say_what_is_kept(mnist, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, **SMALL)
    lines = []
    with monkeypatch.context() as m:
        _signal_at_call(m, 5)
        with pytest.raises(Interrupted):
            train(config, tmp_path / "a", data=mnist, progress=False,
                  log=lines.append)
    assert "no epoch was completed yet" in lines[-1] and "--resume continues from step 6" \
        in lines[-1]
    assert not (tmp_path / "a" / "checkpoint.npz").exists()
    assert load_checkpoint(tmp_path / "a" / "interrupted.npz").partial.step == 5
    train(config, tmp_path / "a", data=mnist, resume=True, progress=False, log=quiet)
    train(config, tmp_path / "straight", data=mnist, progress=False, log=quiet)
    resumed, straight = _weights(tmp_path / "a"), _weights(tmp_path / "straight")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "straight")
    assert not (tmp_path / "a" / "interrupted.npz").exists()
    poisoned = dataclasses.replace(mnist, train_x=np.full_like(mnist.train_x, np.nan))
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1.*no epoch was completed"):
        train(config, tmp_path / "b", data=poisoned, progress=False, log=quiet)
    assert not (tmp_path / "b" / "checkpoint.npz").exists()


def test_pictures_are_written_and_decode(mnist, tmp_path):
    import matplotlib.image as mpimg
    config = TrainConfig(epochs=1, **SMALL)
    run = train(config, tmp_path, data=mnist, progress=False, log=quiet)
    assert not any(tmp_path.glob("*.png"))  # training draws nothing
    pictures = draw_pictures(run.model, run.data, run.history, tmp_path, config)
    names = {p.name for p in pictures.values()}
    assert names == {"digits.png", "augmented.png", "explanation.png", "learning_curves.png",
                     "predictions.png", "confusion_matrix.png", "confident_mistakes.png",
                     "first_layer_weights.png"}
    assert set(PICTURES.values()) == names  # all of them count as the run's own files
    for name in names:
        image = mpimg.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_augmentation_changes_what_is_learned_and_is_repeatable(mnist, tmp_path):
    def weights(shift, name):
        config = TrainConfig(epochs=1, shift=shift, augment="shift", **SMALL)
        train(config, tmp_path / name, data=mnist, progress=False, log=quiet)
        return _weights(tmp_path / name)
    plain, shifted, again = weights(0, "plain"), weights(2, "shifted"), weights(2, "again")
    assert all(np.array_equal(shifted[k], again[k]) for k in shifted)  # seeded by (seed, epoch)
    assert not np.array_equal(plain["layers.0.weight"], shifted["layers.0.weight"])
    assert load_checkpoint(tmp_path / "shifted" / "checkpoint.npz").config.shift == 2


@pytest.mark.parametrize("augment", ["shift", "affine"])
def test_augmentation_feeds_the_distorted_batches(mnist, tmp_path, monkeypatch, augment):
    """The loop trains on exactly distort(x[order[batch]], epoch_moves(...)[batch]): for
    shifts, shift(x[order[batch]], epoch_shifts(...)[batch])."""
    from tinygrad_mnist.augment import distort, epoch_moves, epoch_shifts, shift
    seen = []
    original = train_module.Tensor
    monkeypatch.setattr(train_module, "Tensor", lambda a: seen.append(a.copy()) or original(a))
    config = TrainConfig(epochs=1, shift=2, augment=augment, **SMALL)
    train(config, tmp_path, data=mnist, progress=False, log=quiet)
    x = mnist.train_x[:config.train_limit]
    order = epoch_order(config.seed, 0, len(x))
    moves = epoch_moves(augment, config.seed, 0, len(x), 2)
    np.testing.assert_array_equal(seen[1], distort(x[order[64:128]], moves[64:128], augment))
    if augment == "shift":
        np.testing.assert_array_equal(seen[1], shift(x[order[64:128]], epoch_shifts(0, 0, len(x), 2)[64:128]))
    assert not np.array_equal(seen[1], x[order[64:128]])


def test_a_model_too_big_for_memory_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"784-100000000-10 has 79,500,000,010 parameters"):
        train(TrainConfig(hidden=(100_000_000,)), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("schedule, old, new, done, inside, says", [
    ("cosine", 2, 4, 2, False, ("so epoch 3 starts at lr 0.05 (the 2-epoch schedule is at 0 "
                                "there); the result differs from a straight 4-epoch run")),
    ("step", 2, 3, 2, False, "it gave the same rates so far, so the result equals a straight"),
    ("step", 3, 6, 3, False, "so epoch 4 starts at lr 0.01 (the 3-epoch schedule is at 0.0001"),
    ("step", 3, 4, 1, False, "it gave the same rates so far"),  # x0.1 after epoch 1 in both
    ("step", 3, 4, 1, True, "the result differs from a straight 4-epoch run"),  # not in epoch 2
    ("none", 2, 4, 2, False, "the learning rate is constant (--schedule none), so the result"),
])
def test_a_new_epochs_on_resume_says_what_it_does_to_the_schedule(schedule, old, new, done,
                                                                  inside, says):
    text = _new_epochs_effect(TrainConfig(epochs=old, schedule=schedule),
                              TrainConfig(epochs=new, schedule=schedule), done, inside)
    assert text.startswith(f"--epochs {new} differs from the checkpoint's {old}") and says in text


def test_resume_with_a_new_step_schedule_length_equals_a_straight_run(mnist, tmp_path):
    """The message's claim, checked: 2 then --epochs 3 with the step schedule (x0.1 at epoch 1
    either way) gives exactly the straight 3-epoch run."""
    config = TrainConfig(epochs=3, schedule="step", **SMALL)
    train(config, tmp_path / "straight", data=mnist, progress=False, log=quiet)
    train(dataclasses.replace(config, epochs=2), tmp_path / "resumed", data=mnist,
          progress=False, log=quiet)
    lines = []
    train(config, tmp_path / "resumed", data=mnist, resume=True, progress=False,
          log=lines.append)
    assert any("equals a straight 3-epoch run" in line for line in lines)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight)


def test_an_ignored_sigint_stays_ignored(mnist, tmp_path, monkeypatch):
    """`nohup` and `cmd &` in a script start Python with SIGINT ignored: training goes on."""
    _signal_at_call(monkeypatch, 5)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = train(TrainConfig(epochs=1, **SMALL), tmp_path, data=mnist, progress=False,
                        log=quiet).summary
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert summary["epochs"] == 1 and not (tmp_path / "interrupted.npz").exists()


def test_a_stopped_epoch_that_does_not_fit_the_run_is_refused_before_training(mnist, tmp_path):
    config = TrainConfig(epochs=1, **SMALL)
    model = build_model(config)
    save_checkpoint(tmp_path / "interrupted.npz", model, build_optimizer(config, model), config, 0,
                    [], partial=EpochState(1, 500, 0.0, 0, 0, 0.0, []))
    with pytest.raises(ValueError, match=r"stopped after step 500 of epoch 1, which does not fit "
                                         r"this run \(47 steps an epoch\)"):
        train(config, tmp_path, data=mnist, resume=True, progress=False, log=quiet)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_resume_refuses_epochs_that_end_before_the_stopped_epoch(mnist, tmp_path, monkeypatch):
    config = TrainConfig(epochs=3, **SMALL)
    with monkeypatch.context() as m:
        _signal_at_call(m, 60)  # inside epoch 2
        with pytest.raises(Interrupted):
            train(config, tmp_path, data=mnist, progress=False, log=quiet)
    before = (tmp_path / "interrupted.npz").read_bytes()
    with pytest.raises(ValueError, match=r"--epochs 1 ends before epoch 2, inside which .*"
                                         r"interrupted.npz stopped; resume with --epochs 2"):
        train(dataclasses.replace(config, epochs=1), tmp_path, data=mnist, resume=True,
              log=quiet)
    assert (tmp_path / "interrupted.npz").read_bytes() == before
