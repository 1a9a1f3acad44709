"""A training run's settings: what each one may be, and what builds the model, optimizer and
learning-rate schedule from them.

Each setting is described once, as a `Setting` in its field's metadata: `TrainConfig` checks
values with it, and the command line derives its flags from it (parsing text, then the same
check), so a rule and its message live in one place.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Any

import numpy as np

from .augment import KINDS
from .data import N_TRAIN
from .nn import MLP, Module
from .optim import SGD, Adam, CosineLR, Optimizer, StepLR

MAX_SHIFT = 4  # MNIST centres each digit's 20-pixel box in 28: a shift over 4 cuts off ink
# `train --preset NAME`: what it is for, and its settings (flags given beside it win); the
# figures they were chosen by are in docs/benchmarks.md
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "quick": ("a first look in seconds (about 98 %)",
              {"epochs": 2, "hidden": (256, 128), "shift": 1, "augment": "shift"}),
    "best": ("the highest test accuracy measured in at most 5 minutes",
             {"epochs": 50, "augment": "affine"}),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _isnumber(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


@dataclass(frozen=True)
class Setting:
    """What one TrainConfig field may hold (`ok`, described by `what`, e.g. "a positive
    integer") and how its command-line flag reads text (`parse`; None: `choices`)."""

    what: str
    ok: Callable[[Any], bool]
    help: str = ""
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] = ()


def integer(low: int, high: int | None = None, help: str = "") -> Setting:
    what = f"an integer from {low} to {high}" if high is not None else \
        ("a non-negative integer" if low == 0 else "a positive integer")
    return Setting(what, lambda v: _is_int(v) and v >= low and (high is None or v <= high),
                   help, int)


def number(low: float, high: float | None = None, low_open: bool = False,
            help: str = "") -> Setting:
    what = f"a finite number {'>' if low_open else '>='} {low:g}" if high is None else \
        f"a finite number in [{low:g}, {high:g})"
    return Setting(what, lambda v: _isnumber(v) and (v > low if low_open else v >= low)
                   and (high is None or v < high), help, float)


def choice(*options: str, help: str = "") -> Setting:
    return Setting(" or ".join(repr(o) for o in options), lambda v: v in options, help,
                   choices=options)


# layer sizes, as --hidden takes them
SIZES = Setting("comma-separated positive layer sizes like 512,256",
                lambda v: isinstance(v, tuple) and all(_is_int(h) and h >= 1 for h in v),
                "hidden layer sizes, comma-separated",
                lambda text: tuple(int(s) for s in text.split(",")))


def _setting(default: Any, setting: Setting) -> Any:
    return field(default=default, metadata={"setting": setting})


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers (and is stored in its checkpoint)."""

    hidden: tuple[int, ...] = _setting((512, 256), SIZES)
    epochs: int = _setting(25, integer(1))
    batch_size: int = _setting(128, integer(1))
    optimizer: str = _setting("sgd", choice("sgd", "adam", help="sgd is Nesterov momentum"))
    lr: float = _setting(0.1, number(0, low_open=True, help="peak learning rate"))
    momentum: float = _setting(0.9, number(0, 1))
    weight_decay: float = _setting(1e-4, number(0))
    schedule: str = _setting("cosine", choice(
        "cosine", "step", "none", help="step: x0.1 every third of the run"))
    dropout: float = _setting(0.0, number(0, 1))
    seed: int = _setting(0, integer(0))
    val_size: int = _setting(5000, integer(0, N_TRAIN - 1, "training examples held out "
                                                            "for validation"))
    train_limit: int | None = _setting(None, integer(1, help="train on the first N examples "
                                                            "only (a quick run)"))
    shift: int = _setting(2, integer(0, MAX_SHIFT, "move each training digit by a random 0 "
                                                    "to SHIFT pixels each way, anew every epoch "
                                                    "(0: no move; --augment none turns "
                                                    "augmentation off)"))
    augment: str = _setting("affine", choice(*KINDS, help="how else each training digit is "
                                                         "distorted every epoch: shift only, "
                                                         "affine (also turned, scaled and "
                                                         "slanted), elastic (also bent), none"))

    def __post_init__(self) -> None:
        # plain Python numbers (not NumPy scalars), so that the config is JSON in checkpoints
        if not isinstance(self.hidden, (tuple, list, np.ndarray)):
            raise ValueError(f"bad training config: hidden must be a list of layer sizes, "
                             f"e.g. (512, 256) (got {self.hidden!r})")
        self.hidden = tuple(_plain(h) for h in self.hidden)
        for f in fields(self):
            value = _plain(getattr(self, f.name))
            if f.name in ("lr", "momentum", "weight_decay", "dropout") and _is_int(value):
                value = float(value)
            setting: Setting = f.metadata["setting"]
            if not (setting.ok(value) or (f.name == "train_limit" and value is None)):
                raise ValueError(f"bad training config: {f.name} must be {setting.what} "
                                 f"(got {value!r})")
            setattr(self, f.name, value)


def _plain(v: Any) -> Any:
    """A NumPy scalar as the Python number it holds; anything else as it is."""
    return v.item() if isinstance(v, np.generic) else v


def settings() -> dict[str, Setting]:
    """Each TrainConfig field's Setting, in field order (the command line's flags)."""
    return {f.name: f.metadata["setting"] for f in fields(TrainConfig)}


def check_model_size(sizes: Sequence[int], batch_size: int = 128) -> None:
    """Refuse, before anything is allocated, an MLP that cannot fit in this machine's memory.

    The estimate counts float32 weights, gradients, two optimizer buffers and the two copies a
    checkpoint save makes, plus a few activations per layer for one batch.
    """
    params = sum((a + 1) * b for a, b in pairwise(sizes))
    need = 4 * (6 * params + 4 * batch_size * sum(sizes))
    have = _physical_memory()
    if need > have:
        raise ValueError(f"an MLP {'-'.join(map(str, sizes))} has {params:,} parameters and needs "
                         f"about {_gigabytes(need)} of memory; this machine has {_gigabytes(have)}. "
                         f"Choose smaller --hidden sizes")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume a large desktop
        return 64 << 30


def _gigabytes(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GB"


def build_model(config: TrainConfig) -> MLP:
    return MLP([784, *config.hidden, 10], dropout=config.dropout, seed=config.seed)


def build_optimizer(config: TrainConfig, model: Module) -> Optimizer:
    if config.optimizer == "adam":
        return Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
               nesterov=config.momentum > 0, weight_decay=config.weight_decay)


def lr_schedule(config: TrainConfig) -> Callable[[float], float]:
    """Learning rate at a point of the run, in (fractional, 0-based) epochs: cosine decays
    every step, so even a one-epoch run ends with a small, settling learning rate."""
    if config.schedule == "cosine":
        return CosineLR(config.lr, config.epochs)
    if config.schedule == "step":
        return StepLR(config.lr, step_size=max(1, math.ceil(config.epochs / 3)), gamma=0.1)
    return lambda epoch: config.lr
