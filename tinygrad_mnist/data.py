"""MNIST loading: find the files, check they are the real ones, and split off a validation set.

Every file is checked (magic numbers, shapes, lengths, label range, and for the standard
files their SHA-256, compressed or not) because a silently truncated or corrupted download
would otherwise show up much later as a model that mysteriously trains worse. Sizes are
bounded before anything is read or decompressed, so a crafted file costs little memory. Any
problem raises `MNISTError` naming the file and what was expected.
"""
import gzip
import hashlib
import http.client
import os
import struct
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_writer

DATA_ENV = "TINYGRAD_MNIST_DATA"
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")
N_TRAIN, N_TEST = 60_000, 10_000

# SHA-256 of the original distribution files, the ones the mirrors serve.
GZ_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
# SHA-256 of Keras' mnist.npz (what tensorflow.keras.datasets.mnist.load_data() downloads).
NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

# The uncompressed IDX files: name -> (number of items, SHA-256), so raw copies are verified too.
RAW_IDX = {
    "train-images-idx3-ubyte":
        (N_TRAIN, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte":
        (N_TRAIN, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte":
        (N_TEST, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte":
        (N_TEST, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
SIDE = 28  # MNIST's pictures are SIDE x SIDE pixels: the one place this is said
PIXELS = SIDE * SIDE
# No MNIST file, compressed or not, is larger than the raw training images: a bigger one is
# refused before a byte of it is read.
_MAX_BYTES = 16 + N_TRAIN * PIXELS
# split -> (images file, labels file, number of examples), file names without ".gz"
_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", N_TRAIN),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", N_TEST),
}

_Raw = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images (N, 28, 28), uint8 labels)


class MNISTError(ValueError):
    """The MNIST files are missing, damaged, or not the files they claim to be."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == has no single truth value
class MNIST:
    """Pixels as float32 in [0, 1], images flattened to 784 columns, labels as int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_mnist(data_dir: str | os.PathLike | None = None, *, val_size: int = 5000, seed: int = 0,
               download: bool = True, mirrors: Sequence[str] | None = None,
               data_dir_name: str = "data_dir") -> MNIST:
    """Load MNIST with `val_size` training examples held out, chosen by a permutation from `seed`.

    The files come from `data_dir`, else from ${TINYGRAD_MNIST_DATA}, else from
    `default_cache_dir()`, which is filled from `mirrors` (or Keras, as a last resort) when
    empty and `download` is true. The remaining training examples keep the files' order.
    Messages call `data_dir` by `data_dir_name`, so a CLI can pass its flag ("--data-dir").
    """
    if not 0 <= val_size < N_TRAIN:
        raise ValueError(f"val_size must be in [0, {N_TRAIN}), got {val_size}")
    raw = _load_raw(data_dir, download, mirrors, data_dir_name)
    train_x, train_y = raw["train"]
    held_out = np.zeros(N_TRAIN, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(N_TRAIN)[:val_size]] = True
    test_x, test_y = raw["test"]
    return MNIST(_pixels(train_x[~held_out]), train_y[~held_out].astype(np.int64),
                 _pixels(train_x[held_out]), train_y[held_out].astype(np.int64),
                 _pixels(test_x), test_y.astype(np.int64))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzipped or raw, as a read-only uint8 array: (N, 28, 28) or (N,) labels.

    A file with a standard MNIST name must have its standard number of items and match its
    published SHA-256 (a .gz is checked before it is decompressed). The header is read first
    and bounds everything after it: a file claiming more items than MNIST has is refused, and
    a .gz is decompressed only up to the size its header promises.
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    name = path.name.removesuffix(".gz")
    count, raw_sha = RAW_IDX.get(name, (None, None))
    standard_gz = gz and path.name in GZ_SHA256
    if standard_gz:
        _check_file_sha256(path, GZ_SHA256[path.name])
        decoded = _decoded_copy(name)
        if decoded is not None:
            return decoded
    try:
        with open(path, "rb") as f:
            if not gz:
                header, shape, body = _read_idx_stream(f.read, path, count)
            else:
                try:
                    with gzip.GzipFile(fileobj=f) as stream:
                        header, shape, body = _read_idx_stream(stream.read, path, count)
                except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                    raise MNISTError(f"{path}: expected a gzip file, but it could not be "
                                     f"decompressed ({e})") from e
    except OSError as e:
        raise MNISTError(f"{path}: expected a readable MNIST file ({e.strerror or e})") from e
    if raw_sha is not None and not gz:  # a .gz was verified as it is, above
        digest = hashlib.sha256(header)
        digest.update(body)
        _check_sha256(path, digest.hexdigest(), raw_sha, len(header) + len(body))
    array = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    if len(shape) == 1:
        _check_labels(array, str(path))
    if standard_gz:
        _keep_decoded(name, header, body)
    return array


def _decoded_path(name: str) -> Path:
    return default_cache_dir() / "decoded" / name


def _decoded_copy(name: str) -> np.ndarray | None:
    """The uncompressed copy of a standard file kept by an earlier read, if it is there and
    intact (read_idx checks its SHA-256 as for any raw file); None otherwise."""
    path = _decoded_path(name)
    if not path.is_file():
        return None
    try:
        return read_idx(path)
    except MNISTError:  # damaged: decompress the .gz again, which rewrites the copy
        return None


def _keep_decoded(name: str, header: bytes, body: bytes) -> None:
    """Keep an uncompressed copy of a verified standard file in the cache: reading and
    checking it costs less than decompressing the .gz again. Not being able to
    write it (a read-only or full disk) is no error: the next load decompresses again."""
    try:
        with atomic_writer(_decoded_path(name)) as f:
            f.write(header)
            f.write(body)
    except OSError:
        pass


def _read_idx_stream(read: Callable[[int], bytes], path: Path,
                     count: int | None) -> tuple[bytes, tuple[int, ...], bytes]:
    """The header, the array shape and the body of an IDX stream, reading no more than the
    header allows (and `count` items, or at most as many as MNIST has, when None)."""
    header = read(8)
    if len(header) < 8:
        raise MNISTError(f"{path}: expected an IDX header of at least 8 bytes, "
                         f"found {len(header)} bytes")
    magic, n = struct.unpack(">II", header)
    shape: tuple[int, ...]
    if magic == _IMAGES_MAGIC:
        header += read(8)
        if len(header) < 16:
            raise MNISTError(f"{path}: expected a 16-byte IDX image header, "
                             f"found {len(header)} bytes")
        rows, cols = struct.unpack(">II", header[8:16])
        if (rows, cols) != (SIDE, SIDE):
            raise MNISTError(f"{path}: expected {SIDE}x{SIDE} images, found {rows}x{cols}")
        what, shape = "images", (n, rows, cols)
    elif magic == _LABELS_MAGIC:
        what, shape = "labels", (n,)
    else:
        raise MNISTError(f"{path}: expected magic number {_IMAGES_MAGIC} (images) or "
                         f"{_LABELS_MAGIC} (labels), found {magic}")
    if count is not None and n != count:
        raise MNISTError(f"{path}: expected {count} {what}, the header says {n}")
    if n > N_TRAIN:
        raise MNISTError(f"{path}: the header says {n} {what}; no MNIST file has more than "
                         f"{N_TRAIN}")
    size = int(np.prod(shape))
    body = read(size + 1)  # one byte more tells a file that goes on from one that ends here
    if len(body) != size:
        found = f"more than {len(header) + size}" if len(body) > size else len(header) + len(body)
        raise MNISTError(f"{path}: header says {n} items, so expected {len(header) + size} bytes, "
                         f"found {found} (truncated or corrupted file)")
    return header, shape, body


def default_cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/tinygrad_mnist, or ~/.cache/tinygrad_mnist."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygrad_mnist"


def download_mnist(dest_dir: str | os.PathLike, mirrors: Sequence[str] | None = None) -> Path:
    """Download the four .gz files into `dest_dir`, trying each mirror in turn; return the dir.

    Files already there with the right SHA-256 are kept. Each download goes to a temporary
    file next to its target and is renamed only once its checksum matches, so an interrupted
    or bad download never leaves a file that looks complete.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    mirrors = MIRRORS if mirrors is None else mirrors
    for name, sha in GZ_SHA256.items():
        target = dest / name
        if _is_intact(target, sha):
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                _fetch(url, target, sha)
                break
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
                failures.append(f"{url}: {e}")
        else:
            raise MNISTError(f"could not download {name} into {dest}: "
                             + ("; ".join(failures) or "no mirrors given"))
    return dest


def _load_raw(data_dir: str | os.PathLike | None, download: bool,
              mirrors: Sequence[str] | None, data_dir_name: str) -> _Raw:
    """Resolve where the files come from; an explicitly named directory must have them."""
    if data_dir is not None:
        if os.fspath(data_dir) == "":  # Path("") would silently mean the current directory
            raise MNISTError(f"{data_dir_name} is empty; expected a directory with the MNIST "
                             f"files (use '.' for the current directory)")
        return _read_dir(Path(data_dir), data_dir_name)
    if os.environ.get(DATA_ENV):
        return _read_dir(Path(os.environ[DATA_ENV]), f"${DATA_ENV}")
    cache = default_cache_dir()
    if not download or _has_files(cache):
        return _read_dir(cache, "the cache directory" + ("" if download else "; download=False"))
    try:
        download_mnist(cache, mirrors)
    except MNISTError as download_error:
        try:
            return _load_with_keras()
        except MNISTError as keras_error:
            raise MNISTError(f"MNIST is not in {cache}, downloading it failed ({download_error}), "
                             f"and so did the Keras fallback ({keras_error}); put the four "
                             f"MNIST .gz files (or Keras' mnist.npz) in a directory and set "
                             f"${DATA_ENV} to it, or point {data_dir_name} at it") from keras_error
    return _read_dir(cache, "the cache directory")


def _find_idx(d: Path) -> dict[str, Path | None]:
    """Each IDX file in `d`, preferring the .gz (it can be checksummed) over the raw one."""
    found = {}
    for images, labels, _ in _SPLITS.values():
        for name in (images, labels):
            found[name] = next((p for p in (d / f"{name}.gz", d / name) if p.is_file()), None)
    return found


def _has_files(d: Path) -> bool:
    return all(_find_idx(d).values()) or (d / "mnist.npz").is_file()


def _read_dir(d: Path, origin: str) -> _Raw:
    """Read the IDX files in `d` if all four are there, else its mnist.npz."""
    if not d.is_dir():
        raise MNISTError(f"{d} ({origin}) is not a directory; expected one with the MNIST files")
    found = _find_idx(d)
    paths = {name: path for name, path in found.items() if path is not None}
    if len(paths) == len(found):
        raw = {}
        for split, (images, labels, n) in _SPLITS.items():
            x_path, y_path = paths[images], paths[labels]
            raw[split] = _pair(read_idx(x_path), read_idx(y_path), str(x_path), str(y_path), n)
        return raw
    if (d / "mnist.npz").is_file():
        return _read_npz(d / "mnist.npz")
    missing = ", ".join(f"{name}.gz" for name, path in found.items() if path is None)
    raise MNISTError(f"MNIST files missing in {d} ({origin}): expected the four IDX files "
                     f"(.gz or uncompressed) or mnist.npz; missing {missing}")


def _read_npz(path: Path, *, strict: bool = True) -> _Raw:
    """Read Keras' mnist.npz without ever unpickling; strict=False skips the checks only the
    real file passes (its SHA-256 and the 60000/10000 sizes), for small test files."""
    if strict:
        _check_file_sha256(path, NPZ_SHA256)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise MNISTError(f"{path}: expected arrays x_train, y_train, x_test, y_test; {e}") from e
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # TypeError: np.load returned a lone .npy array, not an archive
        raise MNISTError(f"{path}: expected an .npz archive of plain (non-object) "
                         f"arrays ({e})") from e
    return {split: _pair(arrays[f"x_{split}"], arrays[f"y_{split}"], f"{path}[x_{split}]",
                         f"{path}[y_{split}]", n if strict else None)
            for split, (_, _, n) in _SPLITS.items()}


def _load_with_keras() -> _Raw:
    """Last resort after the mirrors: Keras downloads MNIST from its own mirror."""
    source = "tensorflow.keras.datasets.mnist.load_data()"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before the import: no C++ start-up lines
    # nor the notice that oneDNN is on (where the CPU makes it the default), which the level above
    # does not silence; a download needs none of its kernels
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        with warnings.catch_warnings():  # nor Python warnings from TensorFlow's own imports
            warnings.simplefilter("ignore")
            from tensorflow.keras.datasets import mnist
    except ImportError as e:
        raise MNISTError(f"TensorFlow is not importable ({e})") from e
    try:
        (train_x, train_y), (test_x, test_y) = mnist.load_data()
    except Exception as e:  # Keras reports a failed download as a bare Exception
        raise MNISTError(f"{source} failed: {e}") from e
    return {"train": _pair(train_x, train_y, f"{source} x_train", f"{source} y_train", N_TRAIN),
            "test": _pair(test_x, test_y, f"{source} x_test", f"{source} y_test", N_TEST)}


def _pair(x: np.ndarray, y: np.ndarray, x_source: str, y_source: str,
          n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Check that images and labels have the right form and line up (and number `n`)."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise MNISTError(f"{x_source}: expected uint8 images of shape (N, {SIDE}, {SIDE}), "
                         f"found {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise MNISTError(f"{y_source}: expected uint8 labels of shape (N,), "
                         f"found {y.dtype} {y.shape}")
    _check_labels(y, y_source)
    if len(x) != len(y):
        raise MNISTError(f"{x_source} has {len(x)} images but {y_source} has {len(y)} labels; "
                         f"expected the same number")
    if n is not None and len(x) != n:
        raise MNISTError(f"{x_source}: expected {n} images, found {len(x)}")
    return x, y


def _check_labels(y: np.ndarray, source: str) -> None:
    if y.size and y.max() > 9:
        raise MNISTError(f"{source}: expected labels 0..9, found {int(y.max())}")


def _pixels(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1], with no float64 copy on the way
    (cast, then divide in place: the same numbers as a mixed-type divide, with no temporary)."""
    out = x.reshape(len(x), PIXELS).astype(np.float32)
    return np.divide(out, np.float32(255), out=out)


def _file_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks; one larger than any MNIST file is refused
    before it is read."""
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise MNISTError(f"{path}: expected an MNIST file of at most {_MAX_BYTES} bytes, "
                             f"found {size} bytes; delete it and fetch it again")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as e:
        raise MNISTError(f"{path}: expected a readable MNIST file ({e.strerror or e})") from e
    return digest.hexdigest(), size


def _is_intact(path: Path, sha: str) -> bool:
    try:
        return path.is_file() and _file_sha256(path)[0] == sha
    except MNISTError:
        return False


def _check_file_sha256(path: Path, expected: str) -> None:
    found, size = _file_sha256(path)
    _check_sha256(path, found, expected, size)


def _check_sha256(path: Path, found: str, expected: str, size: int) -> None:
    if found != expected:
        raise MNISTError(f"{path}: expected SHA-256 {expected}, found {found} ({size} bytes); "
                         f"the file is corrupted, incomplete or not the original MNIST file, "
                         f"delete it and fetch it again")


def _fetch(url: str, target: Path, sha: str) -> None:
    """Download `url` to `target` atomically: no file appears unless its SHA-256 is `sha`."""
    digest, size = hashlib.sha256(), 0
    with atomic_writer(target) as out, urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
            if size > _MAX_BYTES:
                raise MNISTError(f"expected at most {_MAX_BYTES} bytes, got more")
        if digest.hexdigest() != sha:
            raise MNISTError(f"expected SHA-256 {sha}, got {digest.hexdigest()} ({size} bytes)")
