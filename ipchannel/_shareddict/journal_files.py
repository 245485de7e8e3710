"""The files of a durable SharedDict's journal: their directory, their frames, reading them back.

``<dir>/<name>.journal/`` (mode 0700) holds these files, each 0600, every one opened
relative to the directory and never through a symlink:

- ``lock``: flock-ed by the host that writes the journal, so there is one writer at a time.
- ``snapshot.<N>``: the whole state after record N, written aside, synced, then renamed in place.
- ``log.<N>``: the records from number N on; each compaction starts a new one.

Each file starts with a header line (the format, and the codec its payloads are in), then
frames: the payload's length and CRC-32 (``<II``), then the payload. Reading stops at the
first frame that is torn (the file ends inside it) or does not match its checksum.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
import zlib
from typing import TYPE_CHECKING

from .. import _platform, _private_dir
from .._errors import JournalError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Directory", "frame", "header", "parse_header", "scan", "write_all"]

_MAGIC = b"ipchannel-journal 1 "
_HEADER_MAX = 256
_FRAME = struct.Struct("<II")
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC
_FIX = "name a directory of your own, mode 0700, not a symlink, as journal_dir="


def header(codec: str) -> bytes:
    """Return the first line of a journal file whose payloads are in ``codec``."""
    return _MAGIC + codec.encode() + b"\n"


def parse_header(data: bytes) -> tuple[str, int] | None:
    """Return (codec name, offset of the first frame), or None if the header is torn (cut short)."""
    end = data.find(b"\n", 0, _HEADER_MAX)
    if end < 0:
        if len(data) < _HEADER_MAX and _MAGIC.startswith(data[: len(_MAGIC)]):
            return None
        raise ValueError("not an ipchannel journal file (no header line)")
    if not data.startswith(_MAGIC):
        raise ValueError(f"not an ipchannel journal file of this format (header {data[:end]!r})")
    return data[len(_MAGIC) : end].decode(errors="replace"), end + 1


def frame(payload: bytes) -> bytes:
    """Return ``payload`` framed: length, CRC-32, payload."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def scan(data: bytes, start: int) -> tuple[list[tuple[int, bytes]], int, str]:
    """Read frames from ``start``: return [(offset, payload)], where reading stopped, why ("": the end)."""
    frames: list[tuple[int, bytes]] = []
    offset, size = start, len(data)
    while offset < size:
        if offset + _FRAME.size > size:
            return frames, offset, "a torn frame header"
        length, checksum = _FRAME.unpack_from(data, offset)
        end = offset + _FRAME.size + length
        if end > size:
            return frames, offset, f"a torn frame ({size - offset - _FRAME.size} of {length} bytes)"
        payload = data[offset + _FRAME.size : end]
        if zlib.crc32(payload) != checksum:
            return frames, offset, "a frame whose checksum does not match"
        frames.append((offset, payload))
        offset = end
    return frames, offset, ""


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write all of ``data``, at ``offset`` if given (a write may write less, say on a nearly full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        offset = None if offset is None else offset + written


class Directory:
    """A journal's directory, held open: every file in it is reached through this descriptor."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def open(cls, base: Path, name: str, *, create_base: bool) -> Directory:
        """Open (creating it, mode 0700) ``base/name.journal``; JournalError if it is not safe to use."""
        if create_base:
            _make(base)
        _check(base, "the journal directory")
        path = base / f"{name}.journal"
        _make(path)
        _check(path, "the journal's directory")  # says what is wrong; the descriptor's check is the safe one
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
        except OSError as exc:
            raise JournalError(str(path), f"cannot be opened: {exc.strerror}", _FIX, exc.errno) from exc
        try:
            _check_stat(path, os.fstat(fd), "the journal's directory")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def open_file(self, name: str, flags: int) -> int:
        """Open ``name`` in the directory (mode 0600 if created), never through a symlink."""
        return os.open(name, flags | _OPEN, 0o600, dir_fd=self.fd)

    def read(self, name: str) -> bytes:
        fd = self.open_file(name, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def lock(self, wait: float) -> int:
        """Return ``lock`` opened and flock-ed; JournalError if another process holds it past ``wait``."""
        fd = self.open_file("lock", os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                holder = _platform.flock_holder(str(self.path / "lock"))
                raise JournalError(
                    str(self.path),
                    f"is being written by another process (pid {holder})",
                    "two dicts with the same name may not share a journal directory: give each its own"
                    " journal_dir=",
                ) from None
            return fd

    def replace(self, name: str, blob: bytes) -> None:
        """Make ``name`` hold ``blob``, whole or not at all: written aside, synced, renamed in place."""
        temporary = f"{name}.tmp"
        try:
            fd = self.open_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                write_all(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.rename(temporary, name)
            self.sync()
        except OSError:
            self.remove(temporary)
            raise

    def remove_covered(self, number: int) -> None:
        """Remove the logs and snapshots that ``snapshot.<number>`` makes unnecessary."""
        for name in self.names():
            kind, _, suffix = name.partition(".")
            covered = kind in {"log", "snapshot"} and suffix.isdigit() and int(suffix) <= number
            if covered and name != f"snapshot.{number}":
                self.remove(name)

    def sync(self) -> None:
        """Make the directory's entries (a new or renamed file) survive a power cut."""
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _make(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    except OSError as exc:
        raise JournalError(str(path), f"cannot be created: {exc.strerror}", _FIX, exc.errno) from exc


def _check(path: Path, what: str) -> None:
    try:
        st = path.lstat()
    except OSError as exc:
        raise JournalError(str(path), f"cannot be examined: {exc.strerror}", _FIX, exc.errno) from exc
    _check_stat(path, st, what)


def _check_stat(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a directory another user could write to or swap: a journal is replayed as the state."""
    if wrong := _private_dir.problem(st):
        raise JournalError(str(path), f"{what} {wrong}", _FIX)
