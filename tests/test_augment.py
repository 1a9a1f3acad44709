"""Random shifts move every pixel exactly where a per-image reference puts it; affine and elastic
distortions sample bilinearly and go the way their captions say; all keep shape and dtype and
are drawn from (seed, epoch) alone, so a resumed run repeats an uninterrupted one."""
import numpy as np
import pytest

from tinygrad_mnist.augment import (
    KINDS,
    distort,
    distorts,
    epoch_moves,
    epoch_shifts,
    random_shift,
    random_shifts,
    shift,
    source_points,
    warp,
)


def reference_shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """One 28×28 image moved by (dy, dx), pixel by pixel: the obvious, slow definition."""
    out = np.zeros_like(image)
    for y in range(28):
        for x in range(28):
            if 0 <= y - dy < 28 and 0 <= x - dx < 28:
                out[y, x] = image[y - dy, x - dx]
    return out


@pytest.fixture
def images():
    return np.random.default_rng(0).random((40, 784), dtype=np.float32)


@pytest.mark.parametrize("max_shift", [1, 2, 3])
def test_pixels_move_exactly_as_the_reference(images, max_shift):
    shifts = random_shifts(np.random.default_rng(1), len(images), max_shift)
    out = shift(images, shifts)
    assert out.shape == images.shape and out.dtype == images.dtype
    for img, moved, (dy, dx) in zip(images.reshape(-1, 28, 28), out.reshape(-1, 28, 28), shifts):
        np.testing.assert_array_equal(moved, reference_shift(img, dy, dx))
    assert len({tuple(s) for s in shifts}) > 5  # many different shifts in one batch


def test_every_shift_in_range_is_drawn_and_none_outside():
    shifts = random_shifts(np.random.default_rng(0), 5000, max_shift=2)
    assert shifts.min() == -2 and shifts.max() == 2
    assert len({tuple(s) for s in shifts}) == 25


def test_shape_dtype_and_input_kept():
    square = (np.arange(3 * 784) % 256).astype(np.uint8).reshape(3, 28, 28)
    before = square.copy()
    out = random_shift(square, np.random.default_rng(0))
    assert out.shape == (3, 28, 28) and out.dtype == np.uint8
    np.testing.assert_array_equal(square, before)  # the training set itself is never changed
    one_pixel = np.zeros((1, 28, 28), np.float64)
    one_pixel[0, 10, 20] = 1.0
    moved = shift(one_pixel, np.array([[2, -1]]))
    assert moved[0, 12, 19] == 1.0 and moved.sum() == 1.0  # down 2, left 1


def test_max_shift_zero_is_identity(images):
    out = random_shift(images, np.random.default_rng(0), max_shift=0)
    np.testing.assert_array_equal(out, images)
    assert out is not images


def test_empty_batch():
    out = random_shift(np.zeros((0, 784), np.float32), np.random.default_rng(0))
    assert out.shape == (0, 784) and out.dtype == np.float32


def test_epoch_shifts_depend_on_seed_and_epoch_only():
    a = epoch_shifts(seed=3, epoch=5, n=1000)
    np.testing.assert_array_equal(a, epoch_shifts(seed=3, epoch=5, n=1000))
    assert not np.array_equal(a, epoch_shifts(seed=3, epoch=6, n=1000))
    assert not np.array_equal(a, epoch_shifts(seed=4, epoch=5, n=1000))
    # the training loop's shuffle stream [seed, epoch] is a different stream
    assert not np.array_equal(a, np.random.default_rng([3, 5]).integers(-2, 3, size=(1000, 2)))


def test_batches_of_an_epoch_are_the_same_whether_cut_up_or_not(images):
    """Augmenting batch by batch with slices of the epoch's shifts equals augmenting the whole
    epoch at once: what a resumed run or a benchmark worker training a slice relies on."""
    order = np.random.default_rng([0, 1]).permutation(len(images))
    shifts = epoch_shifts(0, 1, len(images))
    whole = shift(images[order], shifts)
    parts = [shift(images[order[i:i + 16]], shifts[i:i + 16]) for i in range(0, len(order), 16)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 28)), r"\(N, 784\) or \(N, 28, 28\)"),
    (np.zeros((2, 27, 27)), r"got \(2, 27, 27\)"),
    (np.zeros(784), r"got \(784,\)"),
])
def test_bad_images_are_refused_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        random_shift(bad, np.random.default_rng(0))


def test_bad_shifts_are_refused_clearly(images):
    with pytest.raises(ValueError, match=r"integer shifts of shape \(40, 2\)"):
        shift(images, np.zeros((39, 2), np.int64))
    with pytest.raises(ValueError, match="integer shifts"):
        shift(images, np.zeros((40, 2), np.float32))
    with pytest.raises(ValueError, match="smaller than the 28-pixel image"):
        shift(images, np.full((40, 2), 28))
    with pytest.raises(ValueError, match=r"max_shift must be in \[0, 28\), got -1"):
        random_shift(images, np.random.default_rng(0), max_shift=-1)


# ----------------------------------------------------------------------------- distortions


def _neutral(n):
    """Rows that turn, scale, slant, move and bend nothing."""
    moves = np.zeros((n, 7))
    moves[:, 1], moves[:, 5] = 1.0, -1
    return moves


def test_neutral_distortion_is_the_identity_and_whole_pixel_moves_equal_shift(images):
    x = images[:5]
    np.testing.assert_array_equal(distort(x, _neutral(5), "affine"), x)
    moves = _neutral(5)
    moves[:, 3:5] = [[1, 2], [-2, 0], [0, -1], [2, 2], [0, 0]]
    np.testing.assert_allclose(distort(x, moves, "affine"),
                               shift(x, moves[:, 3:5].astype(int)), atol=1e-6)


def test_a_turn_a_slant_and_a_scale_go_the_way_their_captions_say():
    line = np.zeros((1, 28, 28), np.float32)
    line[0, 14, 4:24] = 1  # a horizontal stroke
    turned = _neutral(1)
    turned[0, 0] = np.deg2rad(12)
    ys, xs = np.nonzero(distort(line, turned, "affine")[0] > 0.3)
    assert ys[xs.argmax()] > ys[xs.argmin()]  # clockwise on screen: the right end goes down
    small = _neutral(1)
    small[0, 1] = 0.9
    assert distort(line, small, "affine").sum() < line.sum()  # shorter stroke, less ink


@pytest.mark.parametrize("kind", ["affine", "elastic"])
def test_distortions_keep_shape_dtype_and_range_and_are_seeded_by_seed_and_epoch(images, kind):
    x = images[:16]
    moves = epoch_moves(kind, 3, 1, 16, 2)
    out = distort(x, moves, kind)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and not np.array_equal(out, x)
    np.testing.assert_array_equal(moves, epoch_moves(kind, 3, 1, 16, 2))  # --resume repeats it
    assert not np.array_equal(moves, epoch_moves(kind, 3, 2, 16, 2))
    assert (moves[:, 5] >= 0).all() == (kind == "elastic")


def test_bending_moves_ink_smoothly_by_about_a_pixel(images):
    affine = epoch_moves("affine", 0, 0, 8, 2)
    bent = affine.copy()
    bent[:, 5] = np.arange(8)
    (y0, x0), (y1, x1) = source_points(affine), source_points(bent)
    d = np.hypot(y1 - y0, x1 - x0)
    assert 0.05 < d.mean() < 2 and d.max() < 4
    assert np.abs(np.diff(y1 - y0, axis=1)).max() < 0.5  # neighbours move alike: smooth


def test_warp_samples_bilinearly_and_is_black_outside():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    img = np.pad(img, ((0, 0), (0, 24), (0, 24)))  # a 28x28 image with a 4x4 ramp in a corner
    y, x = np.full((1, 28, 28), 1.5, np.float32), np.full((1, 28, 28), 2.25, np.float32)
    assert warp(img, y, x)[0, 0, 0] == pytest.approx(4 * 1.5 + 2.25)  # exact on a linear ramp
    far = warp(img, y - 100, x + 100)
    assert not far.any()


def test_augmentation_kinds_and_their_refusals():
    assert KINDS == ("none", "shift", "affine", "elastic")
    assert not distorts("none", 2) and not distorts("shift", 0) and distorts("affine", 0)
    assert epoch_moves("none", 0, 0, 5, 2) is None and epoch_moves("shift", 0, 0, 5, 0) is None
    np.testing.assert_array_equal(epoch_moves("shift", 0, 4, 9, 2), epoch_shifts(0, 4, 9, 2))
    with pytest.raises(ValueError, match="augmentation must be one of none, shift, affine, elastic"):
        epoch_moves("rotate", 0, 0, 5, 2)
    with pytest.raises(ValueError, match=r"moves of shape \(3, 7\)"):
        distort(np.zeros((3, 784), np.float32), np.zeros((3, 2)), "affine")
    with pytest.raises(TypeError, match="affine distortion needs float images .* got uint8"):
        distort(np.zeros((3, 784), np.uint8), epoch_moves("affine", 0, 0, 3, 2), "affine")
