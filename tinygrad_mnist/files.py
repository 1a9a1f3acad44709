"""Safe file writes: a file a user keeps is either the old one or the complete new one, and a
command never replaces a file it did not create unless the user says so.

Every command that writes uses these helpers:
- `atomic_writer` / `atomic_write`: write to a hidden temp file beside the target, fsync it,
  then `os.replace` it over the target; a failed write raises WriteError, naming the path.
- `picture_format`: the format an `--out` path asks for, by its extension, or a clear refusal.
- `check_writable`: refuse an existing file without `--overwrite`, and a file of another kind
  (a picture over a checkpoint) even with it.
- `remove_stale_temps`: delete the temp files a killed process (SIGKILL) left behind.
"""
from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

# --out extension -> the format name matplotlib and Graphviz use for it
PICTURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}

_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # the names atomic_writer gives its temp files


class WriteError(OSError):
    """Writing a file failed; the message names it: "cannot write PATH: No space left on device"."""


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Raise an OSError of the enclosed block again as a WriteError that names `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        error = WriteError(f"cannot write {path}: {e.strerror or e}")
        error.errno = e.errno
        raise error from e


class _TempFile(io.FileIO):
    """The temp file's raw writes: a failure (a full disk) names the file the user asked for,
    while an error of the writing code itself (a failed download) passes through as it is."""

    def __init__(self, tmp: Path, target: Path):
        super().__init__(tmp, "xb")  # the usual umask permissions, unlike mkstemp's 0600
        self.target = target

    def write(self, data: Any) -> int:
        with _naming(self.target):
            return super().write(data)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file beside `path`; it replaces `path` only if the block succeeds.

    The data is fsynced before the rename (and the directory after it), so after a crash or
    power loss `path` is the old file or the complete new one, never an empty one. A failed
    write (a full disk, no permission) raises WriteError, "cannot write PATH: reason".
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        f = io.BufferedWriter(_TempFile(tmp, path))
    try:
        with f:
            yield f
            with _naming(path):
                f.flush()
                os.fsync(f.fileno())
        with _naming(path):
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, content: bytes) -> Path:
    """Write `content` to `path` atomically (see `atomic_writer`); return the path."""
    with atomic_writer(path) as f:
        f.write(content)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the `.NAME.<hex>.tmp` files that `atomic_writer` leaves only when its process is
    killed outright (SIGKILL, power loss); call it before writing into `directory` again."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TEMP.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def picture_format(path: str | os.PathLike, formats: dict[str, str] = PICTURE_FORMATS,
                   flag: str = "--out") -> str:
    """The format `path`'s extension asks for (e.g. "jpeg" for p.jpg), or a ValueError that
    lists the extensions that work: a picture is never written under a misleading name."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ValueError(f"{flag} {path}: expected a file name ending in "
                         f"{', '.join(formats)}; the extension picks the format")
    return formats[suffix]


def file_kind(path: str | os.PathLike) -> str:
    """What an existing file holds, from its first bytes: "png", "jpeg", "svg", "pdf", "npz",
    "dot", "empty" or "unknown" (used to never put one kind of file over another)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    for magic, kind in [(b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"),
                        (b"%PDF", "pdf"), (b"PK\x03\x04", "npz"), (b"PK\x05\x06", "npz")]:
        if head.startswith(magic):
            return kind
    text = head.lstrip().lower()
    if b"<svg" in text and text.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype")):
        return "svg"
    if re.match(rb"(//[^\n]*\n\s*|/\*.*?\*/\s*)*(strict\s+)?(di)?graph\b", text, re.DOTALL):
        return "dot"
    return "unknown"


def check_writable(path: str | os.PathLike, kind: str, overwrite: bool,
                   flag: str = "--out", why: str = "") -> None:
    """Refuse to replace an existing `path` unless `overwrite`, and even then unless it holds
    the same `kind` of file (see `file_kind`): `--overwrite` replaces an old picture, never a
    checkpoint or a user's DOT source with a picture. `why` says why the command writes
    `path` when the user did not name it (a file written beside --out)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a directory; expected a file name")
    if not overwrite:
        raise FileExistsError(f"{path} already exists{why}; pass --overwrite to replace it, or "
                              f"choose another {flag}")
    found = file_kind(path)
    if found not in (kind, "empty"):
        raise FileExistsError(f"{path} holds a {found} file, not {kind}{why}; refusing to "
                              f"replace it even with --overwrite (choose another {flag})")
