"""Every random number a training run draws after the model's initial weights, by (seed, epoch).

Each epoch has its own streams, made from the run's seed and the epoch alone: the order of
its examples, the dropout masks, and the augmentation. So a run resumed at epoch k draws
exactly what an uninterrupted run draws there, and every benchmark contender that asks for
the same (seed, epoch) trains on the same batches.
"""
from __future__ import annotations

import numpy as np


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which an epoch visits the n training examples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def dropout_rng(seed: int, epoch: int, layer: int = 0) -> np.random.Generator:
    """The generator of an epoch's dropout masks in the model's `layer`-th Dropout layer (its
    own, so two layers of one width do not drop the same units; layer 0's stream is the one
    runs had before layers got their own)."""
    return np.random.default_rng([seed, epoch, 1, layer])


def augment_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of an epoch's augmentation (one draw per position in `epoch_order`)."""
    return np.random.default_rng([seed, epoch, 2])
