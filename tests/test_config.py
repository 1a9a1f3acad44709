"""Training settings: each is checked once, by its Setting, and the command line's flags are read
with the same rule and the same words."""
import re

import numpy as np
import pytest

from tinygrad_mnist.checkpoint import load_checkpoint, save_checkpoint
from tinygrad_mnist.cli import build_parser
from tinygrad_mnist.config import TrainConfig, build_model, build_optimizer, settings


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(optimizer="rmsprop"),
                                 dict(schedule="linear"), dict(hidden=(0,)), dict(batch_size=0),
                                 dict(shift=-1), dict(shift=5), dict(shift=1.5)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match="bad training config"):
        TrainConfig(**bad)


def test_a_bad_setting_is_named_with_its_value_alone():
    with pytest.raises(ValueError, match=r"^bad training config: lr must be .*\(got -1.0\)$"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"hidden must be a list of layer sizes.*\(got 512\)$"):
        TrainConfig(hidden=512)


def test_config_takes_numpy_numbers_and_stores_plain_ones(tmp_path):
    config = TrainConfig(hidden=np.array([8]), epochs=np.int64(2), lr=np.float32(0.5))
    assert config.hidden == (8,) and type(config.hidden[0]) is int and type(config.epochs) is int
    assert type(config.lr) is float
    model = build_model(config)
    save_checkpoint(tmp_path / "c.npz", model, build_optimizer(config, model), config, 0, [])
    assert load_checkpoint(tmp_path / "c.npz").config == config


@pytest.mark.parametrize("name, text, value", [
    ("hidden", "64,32", (64, 32)), ("epochs", "3", 3), ("lr", "0.5", 0.5), ("shift", "0", 0),
    ("optimizer", "adam", "adam"), ("val_size", "59999", 59999)])
def test_every_flag_reads_what_the_config_takes(name, text, value):
    """The train command's flags are made from the settings: each reads its text to the value
    the config keeps, and the config takes it."""
    args = build_parser().parse_args(["train", f"--{name.replace('_', '-')}", text])
    assert getattr(args, name) == value
    assert getattr(TrainConfig(**{name: value}), name) == value


@pytest.mark.parametrize("name, bad", [("epochs", 0), ("lr", float("nan")), ("momentum", 1.0),
                                       ("hidden", (4, 0)), ("val_size", 60_000), ("seed", -1)])
def test_a_flag_and_the_config_refuse_in_the_same_words(name, bad, capsys):
    """One rule per setting, one message: the CLI says "expected X", the config "must be X"."""
    what = settings()[name].what
    with pytest.raises(ValueError, match=re.escape(f"{name} must be {what}")):
        TrainConfig(**{name: bad})
    text = ",".join(map(str, bad)) if isinstance(bad, tuple) else str(bad)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", f"--{name.replace('_', '-')}={text}"])
    assert f"expected {what}, got {text!r}" in capsys.readouterr().err


def test_every_setting_is_a_train_flag():
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert set(settings()) <= flags
