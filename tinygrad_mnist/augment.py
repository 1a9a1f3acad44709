"""Data augmentation: show the network digits it has not seen before.

An MLP memorises MNIST's 55,000 training digits; small random shifts make each epoch's digits
new ones, the classic cure (Simard et al. 2003). The shift is the same operation as moving
the pen a pixel or two, so the label stays true.

The shifts of a whole epoch are drawn at once from its augmentation stream
(`seeding.augment_rng`), one (dy, dx) per position in the epoch's order, so they depend on
nothing but (seed, epoch).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .data import SIDE
from .seeding import augment_rng


def shift(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Image i moved down by shifts[i, 0] and right by shifts[i, 1] pixels, filled with black.

    `images` is (N, 784) or (N, 28, 28); the result has the same shape and dtype. Vectorized:
    the images are padded with black, and one fancy index picks each image's 28×28 window at
    its own offset (out[y, x] = image[y - dy, x - dx]) from a view of all windows. No Python
    loop over images, and no index array as large as the batch.
    """
    images, shifts = np.asarray(images), np.asarray(shifts)
    if images.ndim not in (2, 3) or images.shape[1:] not in ((SIDE * SIDE,), (SIDE, SIDE)):
        raise ValueError(f"expected images of shape (N, 784) or (N, 28, 28), got {images.shape}")
    n = len(images)
    if shifts.shape != (n, 2) or shifts.dtype.kind not in "iu":
        raise ValueError(f"expected integer shifts of shape ({n}, 2) for {n} images, got "
                         f"{shifts.dtype} {shifts.shape}")
    k = int(np.abs(shifts).max()) if n else 0
    if k >= SIDE:
        raise ValueError(f"shifts must be smaller than the {SIDE}-pixel image, got {k}")
    if k == 0:
        return images.copy()
    side = SIDE + 2 * k
    padded = np.zeros((n, side, side), dtype=images.dtype)
    padded[:, k:k + SIDE, k:k + SIDE] = images.reshape(n, SIDE, SIDE)
    windows = sliding_window_view(padded, (SIDE, SIDE), axis=(1, 2))  # (n, 2k+1, 2k+1, 28, 28)
    return windows[np.arange(n), k - shifts[:, 0], k - shifts[:, 1]].reshape(images.shape)


def random_shifts(rng: np.random.Generator, n: int, max_shift: int = 2) -> np.ndarray:
    """n independent (dy, dx), each uniform on the integers in [-max_shift, max_shift]."""
    if not 0 <= max_shift < SIDE:
        raise ValueError(f"max_shift must be in [0, {SIDE}), got {max_shift}")
    return rng.integers(-max_shift, max_shift + 1, size=(n, 2))


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Each image moved by its own random (dy, dx) in [-max_shift, max_shift], filled with black."""
    return shift(images, random_shifts(rng, len(images), max_shift))


def epoch_shifts(seed: int, epoch: int, n: int, max_shift: int = 2) -> np.ndarray:
    """The (n, 2) shifts of one epoch: row i moves the i-th example of the epoch's order.

    A batch `order[i:i + b]` is augmented with `shift(x[order[i:i + b]], shifts[i:i + b])`.
    """
    return random_shifts(augment_rng(seed, epoch), n, max_shift)
