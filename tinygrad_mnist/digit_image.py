"""A picture of a digit, made into what the network reads: 28x28 pixels in [0, 1], white ink on
black, the way MNIST's own digits were made (so a drawing or a photo is read like MNIST).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import SIDE

BOX = 20  # MNIST scaled each digit's ink to fit a BOX x BOX square and put its centre of mass
CENTRE = 14.5  # CENTRE px from the top and left edges: the middle of pixel (14, 14)


# ----------------------------------------------------------------------------- the digit


def prepare_digit(image: Any) -> np.ndarray:
    """A (28, 28) float32 digit in [0, 1], white ink on black, made the way MNIST was made.

    `image` is a 2-D array of any size and value range (uint8 0-255, float, bool), either
    dark ink on light paper or light on dark (the border decides), or a path to a PNG/JPEG
    (transparency composited on white, colour turned grey). The ink is cropped, its longer
    side scaled to 20 px (anti-aliased, aspect kept), and placed in 28x28 with its centre of
    mass in the middle. Raises ValueError for a blank image, a wrong shape or a non-image file.
    """
    a = _read_image(image) if isinstance(image, (str, os.PathLike)) else _as_2d(image)
    a = _normalized(a)  # float32 from here on, changed in place: no big temporaries
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 0.5:  # light paper: make the ink the bright part, as in MNIST
        np.subtract(1, a, out=a)
        border = 1 - border
    a -= np.float32(np.median(border))  # the background, at 0
    a /= max(float(a.max()), 1e-12)
    np.clip(a, 0, 1, out=a)
    ink_at = a > 0.1
    rows, cols = np.flatnonzero(ink_at.any(axis=1)), np.flatnonzero(ink_at.any(axis=0))
    if rows.size == 0:
        raise ValueError("the image is blank: no ink stands out from the background")
    ink = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = BOX / max(ink.shape)  # output pixels per input pixel
    by_row, by_col = ink.sum(axis=1, dtype=np.float64), ink.sum(axis=0, dtype=np.float64)
    total = by_row.sum()
    cy = (by_row * np.arange(ink.shape[0])).sum() / total + 0.5  # centre of mass,
    cx = (by_col * np.arange(ink.shape[1])).sum() / total + 0.5  # pixel edges at 0, 1, ..
    # the input point that lands on the canvas centre: the centre of mass, unless that would
    # push the ink over an edge of the canvas
    half = CENTRE / scale
    cy = float(np.clip(cy, ink.shape[0] - (SIDE - CENTRE) / scale, half))
    cx = float(np.clip(cx, ink.shape[1] - (SIDE - CENTRE) / scale, half))
    # Black paper around the ink, as wide as the box below and Lanczos's reach beyond it
    # (3 input pixels per output pixel, PIL's support) need: PIL never cuts a filter short.
    reach = 3 * max(1.0, 1 / scale) + 1
    side = SIDE / scale  # the canvas, in input pixels
    top = int(np.ceil(max(0.0, half - cy) + reach))
    left = int(np.ceil(max(0.0, half - cx) + reach))
    bottom = int(np.ceil(max(0.0, cy - half + side - ink.shape[0]) + reach))
    right = int(np.ceil(max(0.0, cx - half + side - ink.shape[1]) + reach))
    padded = np.zeros((top + ink.shape[0] + bottom, left + ink.shape[1] + right), np.float32)
    padded[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    box = (cx + left - half, cy + top - half, cx + left - half + side, cy + top - half + side)
    # reducing_gap: Pillow first shrinks by a whole factor (a box filter), then Lanczos for the
    # rest; the result differs from Lanczos alone by under a grey level, and a big drawing,
    # which every page request sends, is read much sooner (docs/benchmarks.md)
    resized = Image.fromarray(padded).resize((SIDE, SIDE), Image.Resampling.LANCZOS, box=box,
                                             reducing_gap=3.0)
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)  # Lanczos rings past the range
    if out.max() <= 0:
        raise ValueError("the image is blank: no ink is left at 28x28 pixels")
    return out


def _read_image(path: str | os.PathLike) -> np.ndarray:
    """Grey levels in [0, 1] of a picture file, transparent parts as white paper."""
    try:
        with Image.open(path) as img:
            img.load()
            grey = grey_on_white(img)
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image (expected a PNG or JPEG): {e}") from None
    return np.multiply(grey, np.float32(1 / 255), dtype=np.float32)


def grey_on_white(img: Image.Image) -> np.ndarray:
    """A picture as uint8 grey levels, its transparent parts laid on white paper (a drawing
    on a transparent canvas is dark ink on nothing) and its colours turned grey."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, img.convert("RGBA"))
    return np.asarray(img.convert("L"))


def _as_2d(image: Any) -> np.ndarray:
    raw = np.asarray(image)
    if raw.ndim != 2:
        raise ValueError(f"a digit image must be a 2-D array (height, width) or a file path, "
                         f"got shape {raw.shape}")
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"a digit image must hold numbers, got dtype {raw.dtype}")
    if min(raw.shape) < 2:
        raise ValueError(f"a digit image must be at least 2x2 pixels, got shape {raw.shape}")
    if raw.dtype == np.uint8:  # the common case (a PNG, MNIST): float32 is exact enough
        return np.multiply(raw, np.float32(1 / 255), dtype=np.float32)
    a = raw.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("the image contains NaN or infinite values")
    return a


def _normalized(a: np.ndarray) -> np.ndarray:
    """The values stretched to [0, 1], as a new float32 array; refuse an image with (almost)
    no contrast."""
    lo, hi = float(a.min()), float(a.max())
    # in a known range ([0, 1], or uint8 scaled to it) less than 5 % contrast is blank paper
    if hi - lo <= (0.05 if lo >= 0 and hi <= 1 else 0.0):
        raise ValueError(f"the image is blank: all values lie in [{lo:.3g}, {hi:.3g}]")
    out = (a - lo).astype(np.float32, copy=False)
    out *= np.float32(1 / (hi - lo))
    return out


def network_input(image: Any) -> np.ndarray:
    """The (28, 28) float32 digit: used as is when it is already MNIST-shaped in [0, 1]."""
    if not isinstance(image, (str, os.PathLike)):
        a = np.asarray(image)
        if a.shape == (SIDE * SIDE,):
            a = a.reshape(SIDE, SIDE)
        if a.shape == (SIDE, SIDE) and a.dtype.kind == "f" and np.isfinite(a).all() \
                and a.min() >= 0 and a.max() <= 1:
            return a.astype(np.float32)
    return prepare_digit(image)
