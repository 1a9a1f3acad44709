"""Tests for tinygrad_mnist.data: the real files, every kind of bad file, and downloading.

Downloads go to a local http.server on 127.0.0.1; an autouse fixture keeps every test away
from the real cache, the default mirrors and the TensorFlow fallback.
"""
import functools
import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import types
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tinygrad_mnist import data
from tinygrad_mnist.data import MNISTError, default_cache_dir, download_mnist, load_mnist, read_idx

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TRAIN = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
GZ_NAMES = list(data.GZ_SHA256)
RAW_NAMES = [name.removesuffix(".gz") for name in GZ_NAMES]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real cache, no default mirrors, no TensorFlow, no proxy between us and 127.0.0.1."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "MIRRORS", ())
    monkeypatch.setitem(sys.modules, "tensorflow.keras.datasets", None)  # import -> ImportError
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


# ----------------------------------------------------------------------------- helpers

def idx_images(n, rows=28, cols=28, magic=2051):
    pixels = (np.arange(n * rows * cols) % 256).astype(np.uint8)
    return struct.pack(">IIII", magic, n, rows, cols) + pixels.tobytes()


def idx_labels(labels, magic=2049):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def write_raw_set(d, n_train=3, n_test=2):
    """Four small uncompressed IDX files with the standard names."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "train-images-idx3-ubyte").write_bytes(idx_images(n_train))
    (d / "train-labels-idx1-ubyte").write_bytes(idx_labels([i % 10 for i in range(n_train)]))
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_images(n_test))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_labels([i % 10 for i in range(n_test)]))
    return d


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprints(x, y):
    """Each example as one sortable byte string (pixels back on the 0-255 scale, then label)."""
    rows = np.concatenate([np.rint(x * 255).astype(np.uint8), y.astype(np.uint8)[:, None]], axis=1)
    return np.sort(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel())


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def full(mnist_dir):
    return load_mnist(mnist_dir, val_size=0)


@pytest.fixture(scope="module")
def split(mnist_dir):
    return load_mnist(mnist_dir, val_size=5000, seed=0)


def test_real_shapes_dtypes_ranges(full):
    for x, y, n in [(full.train_x, full.train_y, 60000), (full.test_x, full.test_y, 10000)]:
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
    assert full.val_x.shape == (0, 784) and full.val_x.dtype == np.float32
    assert full.val_y.shape == (0,) and full.val_y.dtype == np.int64


def test_real_labels_match_readme(full):
    assert np.bincount(full.train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(full.test_y, minlength=10).tolist() == TEST_COUNTS
    assert full.train_y[:10].tolist() == FIRST_TRAIN
    assert full.test_y[:10].tolist() == FIRST_TEST


def test_real_pixel_statistics(full):
    assert abs(float(full.train_x.mean(dtype=np.float64)) - 0.1307) < 5e-4
    assert abs(float(full.train_x.std(dtype=np.float64)) - 0.3081) < 5e-4
    # pixels are exactly k/255 in float32, not float64 values rounded afterwards
    assert np.array_equal(full.test_x[0] * 255, np.rint(full.test_x[0] * 255))


def test_validation_split_is_a_partition(full, split):
    assert split.train_x.shape == (55000, 784) and split.train_y.shape == (55000,)
    assert split.val_x.shape == (5000, 784) and split.val_y.shape == (5000,)
    together_y = np.concatenate([split.train_y, split.val_y])
    assert np.bincount(together_y, minlength=10).tolist() == TRAIN_COUNTS
    together = fingerprints(np.concatenate([split.train_x, split.val_x]), together_y)
    assert np.array_equal(together, fingerprints(full.train_x, full.train_y))
    assert np.array_equal(split.test_y, full.test_y)
    # the held-out examples are spread over all digits, not a block from the start
    assert np.bincount(split.val_y, minlength=10).min() > 350


def test_split_is_deterministic_and_seeded(monkeypatch, mnist_dir, split):
    monkeypatch.setenv(data.DATA_ENV, str(mnist_dir))  # also checks the env var is used
    again = load_mnist(seed=0)
    assert np.array_equal(again.val_x, split.val_x) and np.array_equal(again.val_y, split.val_y)
    assert np.array_equal(again.train_y, split.train_y)
    other = load_mnist(seed=1)
    assert not np.array_equal(other.val_y, split.val_y)
    assert not np.array_equal(fingerprints(other.val_x, other.val_y),
                              fingerprints(split.val_x, split.val_y))


@pytest.mark.parametrize("val_size", [-1, 60000, 70000])
def test_val_size_out_of_range(tmp_path, val_size):
    with pytest.raises(ValueError, match=r"val_size must be in \[0, 60000\), got " + str(val_size)):
        load_mnist(tmp_path / "nowhere", val_size=val_size)


# ----------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images, labels = idx_images(3), idx_labels([0, 9, 4])
    if compress:
        images, labels = gzip.compress(images), gzip.compress(labels)
    suffix = ".gz" if compress else ""
    (tmp_path / f"small-images{suffix}").write_bytes(images)
    (tmp_path / f"small-labels{suffix}").write_bytes(labels)
    x = read_idx(tmp_path / f"small-images{suffix}")
    y = read_idx(str(tmp_path / f"small-labels{suffix}"))
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28)
    assert x.ravel().tolist() == [i % 256 for i in range(3 * 784)]
    assert y.dtype == np.uint8 and y.tolist() == [0, 9, 4]


@pytest.mark.parametrize("content, expected", [
    (idx_images(3)[:-1], "expected 2368 bytes, found 2367"),
    (idx_images(3) + b"\0", "expected 2368 bytes, found more than 2368"),
    (idx_labels([1, 2, 3])[:-2], "expected 11 bytes, found 9"),
    (idx_images(3)[:12], "expected a 16-byte IDX image header, found 12 bytes"),
    (b"\0\0\x08", "expected an IDX header of at least 8 bytes, found 3 bytes"),
    (idx_images(3, magic=2052), "expected magic number 2051 (images) or 2049 (labels), found 2052"),
    (idx_labels([1], magic=0x1F8B0808), "found 529205256"),
    (idx_images(2, rows=32, cols=32), "expected 28x28 images, found 32x32"),
    (idx_labels([3, 10, 1]), "expected labels 0..9, found 10"),
])
def test_read_idx_rejects_bad_files(tmp_path, content, expected):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(MNISTError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "small-labels.gz"
    path.write_bytes(gzip.compress(idx_labels([1, 2, 3]))[:-6])
    with pytest.raises(MNISTError, match="expected a gzip file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_non_gzip_bytes_with_gz_name(tmp_path):
    path = tmp_path / "small-labels.gz"
    path.write_bytes(idx_labels([1, 2, 3]))
    with pytest.raises(MNISTError, match="expected a gzip file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_corrupted_standard_gz_fails_checksum(tmp_path, mnist_dir):
    good = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    assert read_idx(good).tolist()[:10] == FIRST_TEST
    content = bytearray(good.read_bytes())
    content[-20] ^= 0xFF
    path = tmp_path / good.name
    path.write_bytes(bytes(content))
    with pytest.raises(MNISTError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert f"expected SHA-256 {data.GZ_SHA256[good.name]}" in message
    assert f"found {hashlib.sha256(content).hexdigest()}" in message


def test_truncated_standard_gz_fails_checksum(tmp_path, mnist_dir):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes((mnist_dir / path.name).read_bytes()[:20000])
    with pytest.raises(MNISTError, match=r"expected SHA-256 3552534a.*\(20000 bytes\)") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MNISTError, match="expected a readable MNIST file") as err:
        read_idx(tmp_path / "train-labels-idx1-ubyte.gz")
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(err.value)


# ----------------------------------------------------------------------------- verified, bounded

@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, mnist_dir):
    """The real files, uncompressed, under their standard names."""
    d = tmp_path_factory.mktemp("raw")
    for name in GZ_NAMES:
        (d / name.removesuffix(".gz")).write_bytes(gzip.decompress((mnist_dir / name).read_bytes()))
    return d


def test_uncompressed_real_files_load_like_the_gz(raw_dir, split):
    raw = load_mnist(raw_dir, val_size=5000, seed=0)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert np.array_equal(getattr(raw, field), getattr(split, field))


def test_uncompressed_labels_shifted_by_one_are_refused(tmp_path, raw_dir):
    """Every label still in 0..9 and every size right: only the SHA-256 can tell."""
    d = tmp_path / "shifted"
    shutil.copytree(raw_dir, d)
    labels = d / "train-labels-idx1-ubyte"
    content = labels.read_bytes()
    labels.write_bytes(content[:8] + bytes((b + 1) % 10 for b in content[8:]))
    with pytest.raises(MNISTError) as err:
        load_mnist(d)
    message = str(err.value)
    expected_sha = data.RAW_IDX["train-labels-idx1-ubyte"][1]
    assert message.startswith(f"{labels}: expected SHA-256 {expected_sha}, found ")
    assert "not the original MNIST file" in message


def peak_memory(fn):
    """(MNISTError raised by fn or None, peak bytes Python allocated while it ran)."""
    tracemalloc.start()
    try:
        fn()
    except MNISTError as e:
        raised = e
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def gz_bomb(path, header, megabytes):
    """`header`, then `megabytes` MB of zeros, as gzip members of 16 MB each (~16 KB apiece)."""
    zeros = gzip.compress(bytes(16 << 20))
    path.write_bytes(gzip.compress(header) + zeros * (megabytes // 16))


@pytest.mark.parametrize("name", ["small-images.gz", "train-images-idx3-ubyte.gz"])
def test_gz_that_decompresses_to_far_more_is_stopped(tmp_path, name):
    """256 MB behind a header that promises 3 images: decompression stops past 2368 bytes.
    Under the standard name the file is refused before that, by its SHA-256."""
    path = tmp_path / name
    gz_bomb(path, idx_images(3)[:16], 256)
    raised, peak = peak_memory(lambda: read_idx(path))
    assert isinstance(raised, MNISTError) and str(path) in str(raised)
    expected = "SHA-256" if name in data.GZ_SHA256 else "expected 2368 bytes, found more than 2368"
    assert expected in str(raised)
    assert peak < 16 << 20


@pytest.mark.parametrize("compress", [False, True])
def test_header_claiming_more_than_mnist_is_refused_before_reading(tmp_path, compress):
    content = struct.pack(">IIII", 2051, 2**32 - 1, 28, 28) + bytes(1000)
    path = tmp_path / ("huge-images.gz" if compress else "huge-images")
    if compress:
        gz_bomb(path, content, 256)
    else:
        path.write_bytes(content)
    raised, peak = peak_memory(lambda: read_idx(path))
    assert isinstance(raised, MNISTError)
    assert str(raised) == (f"{path}: the header says 4294967295 images; "
                           f"no MNIST file has more than 60000")
    assert peak < 16 << 20


def test_standard_name_with_a_non_standard_count_is_refused(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_labels([1] * 10001))
    with pytest.raises(MNISTError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: expected 10000 labels, the header says 10001"


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "big-images.gz", "big-images"])
def test_huge_sparse_file_is_not_read_whole(tmp_path, name):
    """1 GB that takes no disk (a sparse file): refused by its size, by its first bytes or by
    its header, reading almost nothing of it."""
    path = tmp_path / name
    with open(path, "wb") as f:
        if name == "big-images":
            f.write(idx_images(3))
        f.truncate(1 << 30)
    raised, peak = peak_memory(lambda: read_idx(path))
    assert isinstance(raised, MNISTError) and str(path) in str(raised)
    expected = {"train-images-idx3-ubyte.gz": f"expected an MNIST file of at most 47040016 bytes, "
                                              f"found {1 << 30} bytes",
                "big-images.gz": "expected a gzip file",
                "big-images": "expected 2368 bytes, found more than 2368"}[name]
    assert expected in str(raised)
    assert peak < 16 << 20


def test_empty_data_dir_is_not_the_current_directory(tmp_path, monkeypatch):
    write_raw_set(tmp_path)
    monkeypatch.chdir(tmp_path)  # files there would be found if "" meant "."
    with pytest.raises(MNISTError) as err:
        load_mnist("")
    assert str(err.value) == ("data_dir is empty; expected a directory with the MNIST files "
                              "(use '.' for the current directory)")
    with pytest.raises(MNISTError, match="^--data-dir is empty; "):
        load_mnist("", data_dir_name="--data-dir")


def test_messages_name_data_dir_as_the_caller_does(tmp_path):
    with pytest.raises(MNISTError, match=r"is not a directory") as err:
        load_mnist(tmp_path / "nowhere", data_dir_name="--data-dir")
    assert f"{tmp_path / 'nowhere'} (--data-dir) is not a directory" in str(err.value)


# ----------------------------------------------------------------------------- decoded copies

def test_a_verified_gz_leaves_a_decoded_copy_that_later_reads_use(tmp_path, mnist_dir, monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    first = read_idx(mnist_dir / f"{name}.gz")
    copy = default_cache_dir() / "decoded" / name
    assert sha256(copy) == data.RAW_IDX[name][1]
    assert os.listdir(copy.parent) == [name]  # no temporary file left

    def no_gunzip(*args, **kwargs):
        raise AssertionError("decompressed again")

    monkeypatch.setattr(gzip, "GzipFile", no_gunzip)
    again = read_idx(mnist_dir / f"{name}.gz")
    assert np.array_equal(again, first) and again.tolist()[:10] == FIRST_TEST


def test_a_damaged_decoded_copy_is_not_used_and_is_rewritten(tmp_path, mnist_dir):
    name = "t10k-labels-idx1-ubyte"
    good = read_idx(mnist_dir / f"{name}.gz")
    copy = default_cache_dir() / "decoded" / name
    content = copy.read_bytes()
    copy.write_bytes(content[:8] + bytes((b + 1) % 10 for b in content[8:]))  # still valid IDX
    assert np.array_equal(read_idx(mnist_dir / f"{name}.gz"), good)
    assert sha256(copy) == data.RAW_IDX[name][1]


def test_only_verified_standard_files_get_a_decoded_copy(tmp_path):
    path = tmp_path / "small-labels.gz"
    path.write_bytes(gzip.compress(idx_labels([1, 2, 3])))
    read_idx(path)
    assert not default_cache_dir().exists()


def test_an_unwritable_cache_is_no_error(tmp_path, mnist_dir, monkeypatch):
    (tmp_path / "not-a-dir").write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))  # mkdir below it fails
    assert read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz").tolist()[:10] == FIRST_TEST


# ----------------------------------------------------------------------------- directories

def test_wrong_number_of_examples(tmp_path):
    """Standard names promise the standard counts: small files under those names are refused
    from their headers (the images/labels pairing itself is tested through mnist.npz below)."""
    d = write_raw_set(tmp_path / "d")
    with pytest.raises(MNISTError) as err:
        load_mnist(d)
    assert str(err.value) == (f"{d / 'train-images-idx3-ubyte'}: expected 60000 images, "
                              f"the header says 3")


def test_missing_file_in_explicit_dir(tmp_path):
    for name in GZ_NAMES[:3]:
        (tmp_path / name).touch()
    with pytest.raises(MNISTError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert f"MNIST files missing in {tmp_path} (data_dir)" in message
    assert message.endswith("missing t10k-labels-idx1-ubyte.gz")
    assert "mnist.npz" in message


def test_explicit_dir_that_does_not_exist(tmp_path):
    with pytest.raises(MNISTError, match="is not a directory") as err:
        load_mnist(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_env_var_pointing_to_empty_dir(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(empty))
    with pytest.raises(MNISTError) as err:
        load_mnist(mirrors=["http://127.0.0.1:9/never-used/"])
    message = str(err.value)
    assert f"MNIST files missing in {empty} ($TINYGRAD_MNIST_DATA)" in message
    assert all(name in message for name in GZ_NAMES)
    assert not default_cache_dir().exists()  # did not fall through to the cache or a download


def test_explicit_dir_beats_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "from-env"))
    d = write_raw_set(tmp_path / "explicit")
    with pytest.raises(MNISTError, match="expected 60000 images") as err:
        load_mnist(d)
    assert str(d) in str(err.value) and "from-env" not in str(err.value)


def test_cache_dir_is_used_without_downloading(tmp_path):
    cache = write_raw_set(tmp_path / "xdg-cache" / "tinygrad_mnist")
    assert default_cache_dir() == cache
    with pytest.raises(MNISTError, match="expected 60000 images") as err:
        load_mnist(mirrors=["http://127.0.0.1:9/never-used/"])
    assert str(cache) in str(err.value)


def test_no_download_when_disabled(tmp_path):
    with pytest.raises(MNISTError, match="download=False") as err:
        load_mnist(download=False, mirrors=["http://127.0.0.1:9/never-used/"])
    assert str(default_cache_dir()) in str(err.value)
    assert not default_cache_dir().exists()


def test_gz_preferred_over_raw_and_raw_over_npz(tmp_path):
    d = write_raw_set(tmp_path / "d")
    np.savez(d / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(MNISTError, match="expected 60000 images") as err:
        load_mnist(d)
    assert str(d / "train-images-idx3-ubyte") in str(err.value)  # raw IDX, not the npz
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(MNISTError, match="SHA-256") as err:
        load_mnist(d)
    assert str(d / "train-images-idx3-ubyte.gz") in str(err.value)


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == tmp_path / "xdg-cache" / "tinygrad_mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tinygrad_mnist"


# ----------------------------------------------------------------------------- mnist.npz

def small_npz_arrays(n_train=4, n_test=3):
    rng = np.random.default_rng(0)
    return dict(x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                y_train=rng.integers(0, 10, n_train, dtype=np.uint8),
                x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                y_test=rng.integers(0, 10, n_test, dtype=np.uint8))


def test_npz_round_trip(tmp_path):
    arrays = small_npz_arrays()
    np.savez(tmp_path / "mnist.npz", **arrays)
    raw = data._read_npz(tmp_path / "mnist.npz", strict=False)
    for split in ("train", "test"):
        x, y = raw[split]
        assert np.array_equal(x, arrays[f"x_{split}"]) and np.array_equal(y, arrays[f"y_{split}"])


def test_npz_with_wrong_checksum(tmp_path):
    np.savez(tmp_path / "mnist.npz", **small_npz_arrays())
    with pytest.raises(MNISTError, match=f"expected SHA-256 {data.NPZ_SHA256}, found ") as err:
        load_mnist(tmp_path)  # the npz is the only thing there, and it is not Keras' file
    assert str(tmp_path / "mnist.npz") in str(err.value)


def test_npz_object_array_is_refused(tmp_path):
    arrays = small_npz_arrays()
    arrays["y_train"] = np.array([1, "two", None, 4], dtype=object)
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(MNISTError, match="non-object") as err:
        data._read_npz(tmp_path / "mnist.npz", strict=False)
    assert str(tmp_path / "mnist.npz") in str(err.value)


@pytest.mark.parametrize("change, expected", [
    (dict(y_test=None), "expected arrays x_train, y_train, x_test, y_test"),
    (dict(y_train=np.arange(4, dtype=np.uint8) + 7), "[y_train]: expected labels 0..9, found 10"),
    (dict(x_test=np.zeros((3, 28, 28), np.float32)), "[x_test]: expected uint8 images"),
    (dict(y_test=np.zeros(2, np.uint8)), "[x_test] has 3 images but"),
])
def test_npz_bad_contents(tmp_path, change, expected):
    arrays = {**small_npz_arrays(), **change}
    np.savez(tmp_path / "mnist.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(MNISTError) as err:
        data._read_npz(tmp_path / "mnist.npz", strict=False)
    assert str(tmp_path / "mnist.npz") in str(err.value) and expected in str(err.value)


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"definitely not a zip file")
    with pytest.raises(MNISTError, match="expected an .npz archive") as err:
        data._read_npz(tmp_path / "mnist.npz", strict=False)
    assert str(tmp_path / "mnist.npz") in str(err.value)


# ----------------------------------------------------------------------------- downloading

class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist_dir):
    """http://127.0.0.1:PORT serving good/, truncated/ and corrupted/ copies of the .gz files."""
    root = tmp_path_factory.mktemp("mirrors")
    for mirror in ("good", "truncated", "corrupted"):
        (root / mirror).mkdir()
        for name in GZ_NAMES:
            shutil.copyfile(mnist_dir / name, root / mirror / name)
    bad = "train-labels-idx1-ubyte.gz"
    content = (mnist_dir / bad).read_bytes()
    (root / "truncated" / bad).write_bytes(content[: len(content) // 2])
    flipped = bytes(b ^ 0xFF for b in content[1000:1010])
    (root / "corrupted" / bad).write_bytes(content[:1000] + flipped + content[1010:])
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def assert_only_good_files(dest):
    for entry in os.listdir(dest):
        assert entry in GZ_NAMES, f"left behind: {entry}"
        assert sha256(dest / entry) == data.GZ_SHA256[entry]


def test_download_then_load_through_the_cache(server, mnist_dir, split):
    result = load_mnist(mirrors=[f"{server}/good/"])
    cache = default_cache_dir()
    assert sorted(os.listdir(cache)) == sorted([*GZ_NAMES, "decoded"])  # decoded: see below
    assert all(sha256(cache / name) == data.GZ_SHA256[name] for name in GZ_NAMES)
    assert np.array_equal(result.val_x, split.val_x) and np.array_equal(result.test_y, split.test_y)
    # a second call finds everything in place and needs no mirror at all
    assert download_mnist(cache, mirrors=[]) == cache


@pytest.mark.parametrize("mirror", ["truncated", "corrupted"])
def test_bad_mirror_leaves_no_file(tmp_path, server, mirror):
    dest = tmp_path / "dest"
    with pytest.raises(MNISTError) as err:
        download_mnist(dest, mirrors=[f"{server}/{mirror}/"])
    message = str(err.value)
    assert f"could not download train-labels-idx1-ubyte.gz into {dest}" in message
    assert f"{server}/{mirror}/train-labels-idx1-ubyte.gz" in message
    assert f"expected SHA-256 {data.GZ_SHA256['train-labels-idx1-ubyte.gz']}" in message
    assert "train-labels-idx1-ubyte.gz" not in os.listdir(dest)
    assert_only_good_files(dest)


def test_falls_back_to_the_next_mirror(tmp_path, server):
    dest = tmp_path / "dest"
    mirrors = [f"{server}/missing/", f"{server}/corrupted", f"{server}/good/"]
    assert download_mnist(dest, mirrors=mirrors) == dest
    assert sorted(os.listdir(dest)) == sorted(GZ_NAMES)
    assert_only_good_files(dest)


def test_no_mirror_works_and_no_tensorflow(server):
    with pytest.raises(MNISTError) as err:
        load_mnist(mirrors=[f"{server}/missing/"])
    message = str(err.value)
    assert f"MNIST is not in {default_cache_dir()}" in message
    assert "404" in message and "TensorFlow is not importable" in message
    assert f"set ${data.DATA_ENV}" in message and "or point data_dir at it" in message
    with pytest.raises(MNISTError) as err:  # the CLI names its flag
        load_mnist(mirrors=[f"{server}/missing/"], data_dir_name="--data-dir")
    assert str(err.value).endswith("or point --data-dir at it")


def fake_keras(monkeypatch, load_data):
    module = types.ModuleType("tensorflow.keras.datasets")
    module.mnist = types.SimpleNamespace(load_data=load_data)
    monkeypatch.setitem(sys.modules, "tensorflow.keras.datasets", module)


def test_keras_fallback_when_mirrors_fail(monkeypatch):
    calls = []

    def load_data():
        calls.append(1)
        train_y = np.arange(60000, dtype=np.uint8) % 10
        return ((np.full((60000, 28, 28), 51, np.uint8), train_y),
                (np.zeros((10000, 28, 28), np.uint8), np.zeros(10000, np.uint8)))

    fake_keras(monkeypatch, load_data)
    result = load_mnist(mirrors=[], val_size=100)
    assert calls == [1]
    assert result.train_x.shape == (59900, 784) and result.val_x.shape == (100, 784)
    assert result.train_x.dtype == np.float32 and np.all(result.train_x == np.float32(0.2))
    assert result.test_y.dtype == np.int64


def test_keras_fallback_failing_too(monkeypatch):
    def load_data():
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: no network")

    fake_keras(monkeypatch, load_data)
    with pytest.raises(MNISTError, match="mnist.load_data\\(\\) failed: URL fetch failure") as err:
        load_mnist(mirrors=[])
    assert "no mirrors given" in str(err.value) and data.DATA_ENV in str(err.value)


def test_keras_fallback_prints_no_tensorflow_start_up_lines(tmp_path, tf):
    """A real TensorFlow import in a fresh process (its C++ logging starts at import), with
    the mirrors failing: TensorFlow's own log lines must not reach the user's terminal."""
    env = {k: v for k, v in os.environ.items()  # the loader's own settings, not the caller's
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), KERAS_HOME=str(tmp_path / "keras"))
    env.pop(data.DATA_ENV, None)
    code = ("from tinygrad_mnist.data import MNISTError, load_mnist\n"
            "try:\n    load_mnist(mirrors=[])\nexcept MNISTError:\n    pass\nprint('done')")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("done"), result.stderr
    for line in result.stderr.splitlines():  # e.g. "I0000 00:00:... cpu_feature_guard.cc:227] ..."
        assert not re.match(r"[IWEF]\d{4} ", line), result.stderr
        assert "absl" not in line and "TensorFlow" not in line and "oneDNN" not in line, result.stderr
