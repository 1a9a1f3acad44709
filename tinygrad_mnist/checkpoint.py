"""Checkpoints: a run's weights, optimizer state and settings in one plain .npz, and a reader
that trusts nothing in it.

A checkpoint is `model/<name>` and `optim/<key>` arrays plus `meta`, a JSON text with the
format tag, the TrainConfig, the completed epochs and their metrics, and (in
`interrupted.npz`) the position inside a stopped epoch. Nothing is pickled either way; every
size is checked against the model the metadata describes before a byte is read, so a crafted
file costs no more memory than the model.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig, build_model, build_optimizer, check_model_size
from .files import atomic_write
from .nn import MLP, Module
from .optim import Optimizer

FORMAT = "tinygrad_mnist-checkpoint-1"
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class CheckpointError(ValueError):
    """A file is not a readable tinygrad_mnist checkpoint."""


@dataclass
class EpochState:
    """Where a stopped epoch was (in interrupted.npz): enough to continue it number for number.
    The shuffling order is re-drawn from (seed, epoch); dropout's generators are restored."""

    epoch: int  # 1-based, as the user sees it
    step: int  # steps done in it
    loss_sum: float
    correct: int
    seen: int
    seconds: float
    dropout_rng: list[dict]  # bit_generator.state of each Dropout, in model order


@dataclass
class Checkpoint:
    model: MLP
    optimizer_state: dict[str, np.ndarray]
    config: TrainConfig
    epoch: int  # completed epochs
    history: list[dict]
    partial: EpochState | None = None  # the stopped epoch, in interrupted.npz


def save_checkpoint(path: str | os.PathLike, model: Module, optimizer: Optimizer,
                    config: TrainConfig, epoch: int, history: list[dict],
                    partial: EpochState | None = None) -> None:
    """Write weights, optimizer state and metadata as a plain .npz (no pickle), atomically."""
    meta: dict[str, Any] = {"format": FORMAT, "config": dataclasses.asdict(config),
                            "epoch": epoch, "history": history}
    if partial is not None:
        meta["partial"] = dataclasses.asdict(partial)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(meta))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # NumPy's stub: a bool kwarg
    atomic_write(Path(path), buffer.getvalue())


MAX_META_BYTES = 64 << 20  # the JSON metadata; a 1000-epoch history is about 1 MB
_NPY_HEADER = 65_546  # the largest header an .npy file can have (version 1.0)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, trusting nothing in it.

    Every member's size (from the zip headers) is checked against the shapes of the model its
    metadata describes before anything is read, and no member is ever unpickled, so a crafted
    file is refused without allocating more than the model needs.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a checkpoint file (an .npz "
                                f"written by `tinygrad-mnist train`, e.g. {path / 'checkpoint.npz'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            members = {info.filename: info for info in z.infolist()}
            if "meta.npy" not in members:
                raise ValueError("it has no metadata (meta.npy)")
            text = _read_npy(z, members["meta.npy"], "U", max_bytes=MAX_META_BYTES)
            meta = _check_meta(json.loads(str(text[()])))
            config = TrainConfig(**{**meta["config"], "hidden": tuple(meta["config"]["hidden"])})
            check_model_size([784, *config.hidden, 10], config.batch_size)
            model = build_model(config)
            shapes = _expected_shapes(config, model)
            unexpected = sorted(set(members) - set(shapes) - {"meta.npy"})
            missing = sorted(n for n in shapes if n.startswith("model/") and n not in members)
            if unexpected or missing:
                raise ValueError(f"its arrays do not fit MLP {model.sizes}: missing {missing}, "
                                 f"unexpected {unexpected}")
            arrays = {name[:-4]: _read_npy(z, members[name], kind, shape)
                      for name, (shape, kind) in shapes.items() if name in members}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, TypeError, KeyError, OSError,
            EOFError, NotImplementedError, RecursionError) as e:  # RecursionError: [[[[... JSON
        raise CheckpointError(f"{path} is not a tinygrad_mnist checkpoint (an .npz written by "
                              f"`tinygrad-mnist train`), or it is damaged: {e}") from None
    optimizer_state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    try:
        model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        build_optimizer(config, model).load_state_dict(optimizer_state)  # checked now, not at resume
    except ValueError as e:
        raise CheckpointError(f"{path} does not fit its own settings: {e}") from None
    partial = meta.get("partial")
    return Checkpoint(model, optimizer_state, config, meta["epoch"], meta["history"],
                      EpochState(**partial) if partial is not None else None)


def _expected_shapes(config: TrainConfig, model: Module) -> dict[str, tuple[tuple | None, str]]:
    """The .npz member names a checkpoint of this model may hold, with shape and dtype kind."""
    shapes: dict[str, tuple[tuple | None, str]] = {
        f"model/{name}.npy": (p.shape, "f") for name, p in model.named_parameters()}
    params = model.parameters()
    for key in build_optimizer(config, model).state_keys:  # per parameter; "step" is a count
        shapes.update({f"optim/{key}.{i}.npy": ((), "iu") if key == "step" else (p.shape, "f")
                       for i, p in enumerate(params)})
    shapes["optim/steps.npy"] = ((), "iu")
    return shapes


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, kinds: str, shape: tuple | None = None,
              max_bytes: int = 0) -> np.ndarray:
    """One .npy member of dtype kind `kinds`, and of `shape` if given (else at most
    `max_bytes`), bounded: its zip header's size, then its .npy header (dtype, shape), are
    checked before its data is read; zipfile never inflates past the size it declared."""
    if shape is not None:
        max_bytes = _NPY_HEADER + 8 * math.prod(shape)
    if info.file_size > max_bytes:
        raise ValueError(f"{info.filename} is {info.file_size:,} bytes unpacked; at most "
                         f"{max_bytes:,} expected" + (f" for shape {shape}" if shape else ""))
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        found, fortran, dtype = read_header(f)
        fits = dtype.kind == "U" if kinds == "U" else dtype.kind in kinds and dtype.itemsize <= 8
        if dtype.hasobject or not fits:
            raise ValueError(f"{info.filename} holds {dtype} values, expected "
                             f"{'text' if kinds == 'U' else 'numbers'} (objects are never unpickled)")
        if shape is not None and found != shape:
            raise ValueError(f"{info.filename} has shape {found}, the model expects {shape}")
        nbytes = math.prod(found) * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(f"{info.filename} declares {nbytes:,} bytes, at most {max_bytes:,} "
                             f"expected")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{info.filename} is truncated")
    return np.frombuffer(data, dtype).reshape(found, order="F" if fortran else "C")


def _check_meta(meta: Any) -> dict[str, Any]:
    """The metadata with every field's type checked, so a hand-edited file fails here, at load
    time, and not in the middle of a resumed run."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta, dict):
        raise TypeError("its metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    config = meta.get("config")
    if isinstance(config, dict):
        config.setdefault("shift", 0)  # checkpoints from before augmentation trained without it
        config.setdefault("augment", "shift")  # ... and from before distortions, with shifts only
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(config, dict) or set(config) != fields:
        raise ValueError(f"metadata 'config' must be an object with the keys {sorted(fields)}")
    if not isinstance(config["hidden"], list) or not all(is_int(h) for h in config["hidden"]):
        raise ValueError(f"metadata config 'hidden' must be a list of integers, "
                         f"got {config['hidden']!r}")
    for name in ("optimizer", "schedule"):
        if not isinstance(config[name], str):
            raise TypeError(f"metadata config {name!r} must be a string, got {config[name]!r}")
    epoch: Any = meta.get("epoch")
    history = meta.get("history")
    if not is_int(config["epochs"]):
        raise ValueError(f"metadata config 'epochs' must be an integer, got {config['epochs']!r}")
    if not is_int(epoch) or not 0 <= epoch <= config["epochs"]:
        raise ValueError(f"metadata 'epoch' must be an integer in [0, epochs], got {epoch!r}")
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"metadata 'history' must be a list of {epoch} rows (one per epoch), "
                         f"got {str(history)[:60]!r}")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or set(row) != set(HISTORY_KEYS) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()):
            raise ValueError(f"metadata 'history' row {i} must map {list(HISTORY_KEYS)} to "
                             f"numbers, got {str(row)[:80]!r}")
    partial = meta.get("partial")
    if partial is not None:
        _check_partial(partial, epoch)
    return meta


def _check_partial(partial: Any, epoch: int) -> None:
    fields = [f.name for f in dataclasses.fields(EpochState)]
    if not isinstance(partial, dict) or list(partial) != fields:
        raise ValueError(f"metadata 'partial' must be an object with the keys {fields}")
    counts = [partial[k] for k in ("epoch", "step", "correct", "seen")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts) or \
            partial["epoch"] != epoch + 1 or not all(
                isinstance(partial[k], (int, float)) for k in ("loss_sum", "seconds")):
        raise ValueError(f"metadata 'partial' holds bad values: {str(partial)[:80]!r}")
    if not isinstance(partial["dropout_rng"], list):
        raise TypeError("metadata 'partial' dropout_rng must be a list")
    for state in partial["dropout_rng"]:
        np.random.PCG64().state = state  # raises ValueError/TypeError/KeyError if malformed
