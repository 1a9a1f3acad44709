"""files.py: atomic, fsynced writes that name the path on failure, and the overwrite rules."""
import errno
import os
import signal

import pytest

from tinygrad_mnist import files
from tinygrad_mnist.files import (
    WriteError,
    atomic_write,
    atomic_writer,
    check_writable,
    file_kind,
    picture_format,
    remove_stale_temps,
)


def test_a_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(files.os, "replace",
                        lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write(tmp_path / "a.bin", b"data")
    assert events[:2] == ["fsync", "replace"]  # then the directory's fsync
    assert (tmp_path / "a.bin").read_bytes() == b"data"


def test_a_full_disk_names_the_path_and_keeps_the_old_file(tmp_path):
    """A disk that fills up, by a file-size limit: the write fails with EFBIG (POSIX)."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "metrics.json"
    path.write_bytes(b"old")
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(WriteError) as error:
            atomic_write(path, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(error.value) == f"cannot write {path}: {os.strerror(errno.EFBIG)}"
    assert error.value.errno == errno.EFBIG and isinstance(error.value, OSError)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_error_of_the_writing_code_passes_through_unchanged(tmp_path):
    """A failed download inside the block is not a write error: it keeps its own message."""
    with pytest.raises(ConnectionError, match="^no network$"), atomic_writer(tmp_path / "a"):
        raise ConnectionError("no network")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=f"cannot write {blocker / 'sub' / 'a.png'}: "):
        atomic_write(blocker / "sub" / "a.png", b"x")


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / ".checkpoint.npz.0123456789ab.tmp", tmp_path / ".metrics.json.abcdef012345.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / ".x.ZZZZZZZZZZZZ.tmp",
            tmp_path / "checkpoint.npz"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temps(tmp_path / "missing") == []


@pytest.mark.parametrize("name, fmt", [("a.png", "png"), ("a.JPG", "jpeg"), ("a.jpeg", "jpeg"),
                                       ("d/a.svg", "svg"), ("a.pdf", "pdf")])
def test_the_extension_picks_the_format(name, fmt):
    assert picture_format(name) == fmt


@pytest.mark.parametrize("name", ["a.npz", "a", "a.gif", "a.png.txt"])
def test_other_extensions_are_refused(name):
    with pytest.raises(ValueError, match=r"--out .*expected a file name ending in .png, .jpg"):
        picture_format(name)


@pytest.mark.parametrize("content, kind", [
    (b"\x89PNG\r\n\x1a\nrest", "png"), (b"\xff\xd8\xff\xe0rest", "jpeg"), (b"%PDF-1.4", "pdf"),
    (b"PK\x03\x04rest", "npz"), (b'<?xml version="1.0"?>\n<svg ...>', "svg"),
    (b"digraph {\n a -> b\n}", "dot"), (b"// mine\nstrict digraph g { }", "dot"),
    (b"", "empty"), (b"hello", "unknown")])
def test_file_kind_reads_the_first_bytes(tmp_path, content, kind):
    (tmp_path / "f").write_bytes(content)
    assert file_kind(tmp_path / "f") == kind


def test_check_writable_rules(tmp_path):
    check_writable(tmp_path / "new.png", "png", overwrite=False)  # a new file is fine
    old = tmp_path / "old.png"
    old.write_bytes(b"\x89PNG\r\n\x1a\nold")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        check_writable(old, "png", overwrite=False)
    check_writable(old, "png", overwrite=True)  # the same kind, and the user said so
    with pytest.raises(FileExistsError, match="holds a png file, not svg; refusing"):
        check_writable(old, "svg", overwrite=True)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_writable(tmp_path, "png", overwrite=True)
