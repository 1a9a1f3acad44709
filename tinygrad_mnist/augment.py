"""Data augmentation: show the network digits it has not seen before.

An MLP memorises MNIST's 55,000 training digits; small random distortions make each epoch's
digits new ones, the classic cure (Simard et al. 2003). Each is what a hand might do to the
same digit, so the label stays true:
- "shift": move it by up to `max_shift` whole pixels each way;
- "affine": also turn it a little, scale it and shear (slant) it, and move it by up to
  `max_shift` pixels (not only whole ones);
- "elastic": also bend it along a smooth random displacement field, as a hand wobbles;
- "none": the digits as they are.

The distortions of a whole epoch are drawn at once from its augmentation stream
(`seeding.augment_rng`), one row per position in the epoch's order (`epoch_moves`), so they
depend on nothing but (seed, epoch); `distort` applies a batch's rows, vectorized.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .data import SIDE
from .seeding import augment_rng

KINDS = ("none", "shift", "affine", "elastic")
MAX_TURN = np.deg2rad(12.0)  # rotation, either way
SCALES = (0.9, 1.1)  # size, relative
MAX_SHEAR = 0.2  # slant: x moves by up to 0.2 px per px of height
ELASTIC_ALPHA, ELASTIC_SIGMA = 8.0, 4.0  # strength and smoothness (px) of the bending
FIELDS = 64  # smooth fields in the bank; each is used in 8 mirrored variants
_CENTRE = (SIDE - 1) / 2
_GRID = np.mgrid[0:SIDE, 0:SIDE].reshape(2, -1).astype(np.float32)  # (row, col) of each pixel


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


def distorts(kind: str, max_shift: int) -> bool:
    """Whether augmentation `kind` with shifts of up to `max_shift` changes the digits at all."""
    if kind not in KINDS:
        raise ValueError(f"augmentation must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind != "none" and (kind != "shift" or max_shift > 0)


def epoch_moves(kind: str, seed: int, epoch: int, n: int, max_shift: int) -> np.ndarray | None:
    """The distortions of one epoch, row i for the i-th example of the epoch's order (None:
    nothing to do). A batch `order[i:i + b]` gets `distort(x[order[i:i + b]], moves[i:i + b],
    kind)`. For "shift" the rows are `epoch_shifts`; for "affine" and "elastic" they are
    (turn, scale, shear, dy, dx, field, variant), field -1 for no bending."""
    if not distorts(kind, max_shift):
        return None
    if kind == "shift":
        return epoch_shifts(seed, epoch, n, max_shift)
    rng = augment_rng(seed, epoch)
    moves = np.empty((n, 7))
    moves[:, 0] = rng.uniform(-MAX_TURN, MAX_TURN, n)
    moves[:, 1] = rng.uniform(*SCALES, n)
    moves[:, 2] = rng.uniform(-MAX_SHEAR, MAX_SHEAR, n)
    moves[:, 3:5] = rng.uniform(-max_shift, max_shift, (n, 2))
    moves[:, 5] = rng.integers(0, FIELDS, n) if kind == "elastic" else -1
    moves[:, 6] = rng.integers(0, 8, n)
    return moves


def distort(images: np.ndarray, moves: np.ndarray, kind: str) -> np.ndarray:
    """`images` ((N, 784) or (N, 28, 28)) distorted by their rows of `epoch_moves`."""
    if kind == "shift":
        return shift(images, moves)
    if kind not in ("affine", "elastic"):
        raise ValueError(f"distort needs kind 'shift', 'affine' or 'elastic'; got {kind!r}")
    images, moves = np.asarray(images), np.asarray(moves)
    if images.ndim not in (2, 3) or images.shape[1:] not in ((SIDE * SIDE,), (SIDE, SIDE)):
        raise ValueError(f"expected images of shape (N, 784) or (N, 28, 28), got {images.shape}")
    if images.dtype.kind != "f":  # turning a digit blends neighbouring pixels: fractions
        raise TypeError(f"{kind} distortion needs float images (as load_mnist gives, 0 to 1), "
                        f"got {images.dtype}")
    n = len(images)
    if moves.shape != (n, 7):
        raise ValueError(f"expected moves of shape ({n}, 7) for {n} images, got {moves.shape}")
    return warp(images.reshape(n, SIDE, SIDE), *source_points(moves)).reshape(images.shape)


def source_points(moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel of each image takes its ink from, (N, 28, 28) rows and
    columns: the inverse of "scale, shear, turn about the centre, then move", as one matrix
    per image applied to the whole pixel grid at once, plus the bending field there."""
    turn, scale, shear = moves[:, 0], moves[:, 1], moves[:, 2]
    cos, sin = np.cos(turn) / scale, np.sin(turn) / scale
    inverse = np.stack([np.stack([cos, -sin], 1), np.stack([sin - shear * cos, cos + shear * sin], 1)],
                       1).astype(np.float32)  # (N, 2, 2), acting on (row, column)
    start = _CENTRE - np.einsum("nij,nj->ni", inverse, _CENTRE + moves[:, 3:5])
    points = inverse @ _GRID + start[:, :, None].astype(np.float32)  # (N, 2, 784)
    bent = moves[:, 5] >= 0
    if bent.any():  # one gather from the bank: field k in its mirrored variant v is row 8k + v
        points[bent] += _field_bank()[8 * moves[bent, 5].astype(np.intp) + moves[bent, 6].astype(np.intp)]
    return points[:, 0].reshape(-1, SIDE, SIDE), points[:, 1].reshape(-1, SIDE, SIDE)


def warp(images: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear sampling: out[n, i, j] = images[n] at the point (y[n, i, j], x[n, i, j]),
    black outside the image. Four gathers from the whole batch at once, in place where it
    can be: a batch's worth of temporaries is the cost that matters here."""
    n, side = len(images), SIDE + 4
    padded = np.zeros((n, side, side), images.dtype)  # a black border of two pixels, so that
    padded[:, 2:-2, 2:-2] = images  # a point a pixel or more outside samples black only
    y, x = y + 2, x + 2
    np.clip(y, 0, side - 1.001, out=y)  # far outside lands on the black border
    np.clip(x, 0, side - 1.001, out=x)
    y0, x0 = y.astype(np.int32), x.astype(np.int32)  # the floor: y and x are >= 0 here
    y -= y0  # from here on, the fractions
    x -= x0
    corner = y0 * side
    corner += x0
    corner += (np.arange(n, dtype=np.int32) * side * side)[:, None, None]
    flat = padded.ravel()
    top, right = np.take(flat, corner), np.take(flat, corner + 1)
    right -= top
    right *= x
    top += right  # the top row, interpolated along x
    bottom, right = np.take(flat, corner + side), np.take(flat, corner + side + 1)
    right -= bottom
    right *= x
    bottom += right
    bottom -= top
    bottom *= y
    top += bottom  # and along y
    return top


_BANK: np.ndarray | None = None


def _field_bank() -> np.ndarray:
    """FIELDS smooth displacement fields in 8 mirrored variants each (flipped up-down,
    left-right, transposed), (8 * FIELDS, 2, 784) float32 in pixels: uniform noise in
    [-1, 1] smoothed by a Gaussian of ELASTIC_SIGMA px and scaled by ELASTIC_ALPHA (Simard et
    al.'s recipe). Made once, from a fixed seed, so every run and every contender shares it;
    bending a digit then costs one gather, not a convolution."""
    global _BANK
    if _BANK is None:
        i = np.arange(SIDE)
        blur = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * ELASTIC_SIGMA ** 2))
        blur /= np.sqrt(2 * np.pi) * ELASTIC_SIGMA  # a Gaussian filter with black around
        noise = np.random.default_rng(2003).uniform(-1, 1, (FIELDS, 2, SIDE, SIDE))
        fields = ELASTIC_ALPHA * (blur @ noise @ blur.T)  # (FIELDS, 2, 28, 28): rows, columns
        variants = []
        for v in range(8):
            f = fields[:, :, ::-1] if v & 1 else fields
            f = f[:, :, :, ::-1] if v & 2 else f
            variants.append(f[:, ::-1].transpose(0, 1, 3, 2) if v & 4 else f)  # swap the axes
        _BANK = np.stack(variants, 1).reshape(8 * FIELDS, 2, SIDE * SIDE).astype(np.float32)
    return _BANK
