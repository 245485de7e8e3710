"""Reading a durable SharedDict's journal back: the newest snapshot, then every record after it.

A log is read up to its first bad frame (torn by a crash mid-write, or failing its
checksum: a flipped bit) or a record out of order; it is cut there, with a WARNING that
says what was dropped. The dropped bytes (and any later log) are kept beside it, as
``<file>.dropped-<UTC time>``, so nothing is destroyed. A damaged snapshot is not cut:
starting from part of the state would pass for all of it, so it raises JournalError.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import JournalError
from . import history
from .journal_files import parse_header, scan, write_all

if TYPE_CHECKING:
    from .._codecs import Codec
    from .journal_files import Directory

__all__ = ["Replayed", "cut_back", "replay"]

_LOGGER = logging.getLogger("ipchannel")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class Replayed(NamedTuple):
    """The state a journal holds, and where the next host appends."""

    data: dict[Any, Any]
    applied: dict[str, list[Any]]
    #: (generation, sequence) of the last write replayed, as the host that wrote it numbered it
    position: tuple[int, int]
    #: the last record's number (0: an empty journal)
    number: int
    #: (name, size) of the log to append to, or None to start a new one
    log: tuple[str, int] | None
    snapshot_size: int
    #: the journal holds a state (a snapshot, or a record): else nothing was ever journaled
    found: bool


def _numbered(names: list[str], kind: str) -> list[int]:
    return sorted(
        int(name[len(kind) + 1 :])
        for name in names
        if name.startswith(kind + ".") and name[len(kind) + 1 :].isdigit()
    )


class _State:
    """The state being rebuilt, record by record."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.applied: dict[str, list[Any]] = {}
        self.generation = self.seq = self.number = 0

    def apply(self, record: Any) -> str:
        """Apply one record; return "" or, if it is out of order, why it cannot be applied."""
        number, generation, before, writes = record
        if number <= self.number:
            return ""  # covered by the snapshot (left over from a compaction cut short)
        if number != self.number + 1:
            return f"record {number} where {self.number + 1} was due"
        self.generation, self.seq = generation, before
        for write in writes:
            self.seq = history.apply(self.data, self.applied, self.seq, write)[0]
        self.number = number
        return ""


def replay(directory: Directory, name: str, codec: Codec, codec_name: str) -> Replayed:
    """Return the state ``directory``'s journal holds, cutting a damaged log tail (see the module).

    JournalError if a file cannot be read or cut: one replaced by a symlink, say, which is
    never followed (it could point anywhere, and what it points to would become the state).
    """
    try:
        return _replay(directory, name, codec, codec_name)
    except JournalError:
        raise
    except OSError as exc:
        file = directory.path / exc.filename if isinstance(exc.filename, str) else directory.path
        if exc.errno == errno.ELOOP:
            raise JournalError(
                str(file),
                "is a symlink, which is never followed: it could point anywhere",
                "put the file it points to in its place, if that is this journal's; else move it away",
            ) from None
        raise JournalError(
            str(file), f"cannot be read or cut: {exc.strerror or exc}", "check its permissions", exc.errno
        ) from exc


def _replay(directory: Directory, name: str, codec: Codec, codec_name: str) -> Replayed:
    names = directory.names()
    for leftover in names:
        if leftover.endswith(".tmp"):  # a snapshot that was being written when its host died
            directory.remove(leftover)
    state, snapshot_size = _State(), 0
    snapshots = _numbered(names, "snapshot")
    if snapshots:
        saved, snapshot_size = _load_snapshot(directory, f"snapshot.{snapshots[-1]}", codec, codec_name)
        state.data, state.applied = dict(saved["items"]), saved["applied"]
        state.generation, state.seq, state.number = saved["g"], saved["s"], saved["n"]
    log: tuple[str, int] | None = None
    logs = _numbered(names, "log")
    for index, first in enumerate(logs):
        file = f"log.{first}"
        blob = directory.read(file)
        start = _header(blob, directory, file, codec_name)
        end, problem = _replay_log(state, blob, start, codec)
        if problem:
            later = [f"log.{number}" for number in logs[index + 1 :]]
            _cut(directory, name, file, blob, end, problem, state.number, later)
            log = (file, end) if start is not None else None
            break
        log = (file, len(blob))
    position = (state.generation, state.seq)
    found = bool(snapshots) or state.number > 0
    return Replayed(state.data, state.applied, position, state.number, log, snapshot_size, found)


def _replay_log(state: _State, blob: bytes, start: int | None, codec: Codec) -> tuple[int, str]:
    """Apply a log's records from ``start``; return where it ends, and what is wrong there ("": nothing)."""
    if start is None:
        return 0, "a torn header"
    frames, end, problem = scan(blob, start)
    for offset, payload in frames:
        try:
            wrong = state.apply(codec.loads(payload))
        except Exception:  # noqa: BLE001 - whatever the codec raises, or a record of another shape
            return offset, "a record that cannot be decoded"
        if wrong:
            return offset, wrong
    return end, problem


def _header(blob: bytes, directory: Directory, file: str, codec_name: str) -> int | None:
    """Return where ``file``'s frames start, None if its header is torn; JournalError if not ours."""
    try:
        parsed = parse_header(blob)
    except ValueError as exc:
        raise JournalError(
            str(directory.path / file), str(exc), "move it out of the journal's directory"
        ) from None
    if parsed is None:
        return None
    if parsed[0] != codec_name:
        raise JournalError(
            str(directory.path / file),
            f"was written with codec {parsed[0]!r}, this dict uses {codec_name!r}",
            f"open the dict with codec={parsed[0]!r}",
        )
    return parsed[1]


def _load_snapshot(
    directory: Directory, file: str, codec: Codec, codec_name: str
) -> tuple[dict[str, Any], int]:
    blob = directory.read(file)
    start = _header(blob, directory, file, codec_name)
    frames, end, problem = scan(blob, start) if start is not None else ([], 0, "a torn header")
    if problem or len(frames) != 1:
        raise JournalError(
            str(directory.path / file),
            f"is damaged ({problem or 'not one frame'} at byte {end}); ipchannel will not start from part"
            " of the state",
            "restore the file from a backup; moving the journal's directory away starts the dict empty,"
            " losing what it held",
        )
    return codec.loads(frames[0][1]), len(blob)


def _aside(directory: Directory, file: str) -> str:
    """Return a free name for what is kept aside from ``file``: never one an earlier cut kept."""
    names, base = set(directory.names()), f"{file}.dropped-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    kept, count = base, 0
    while kept in names:
        count += 1
        kept = f"{base}-{count}"
    return kept


def keep_aside(directory: Directory, file: str, data: bytes) -> str:
    """Write ``data``, cut from ``file``, beside it (synced); return the name it is kept under."""
    kept = _aside(directory, file)
    fd = directory.open_file(kept, _CREATE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept


def cut_back(directory: Directory, name: str, log: tuple[str, int], good: int, *, ours: bool) -> None:
    """Cut ``log`` (its name and descriptor) back to byte ``good``, where its host's last record ends.

    What follows is part of an append of the host's that failed (``ours``), or bytes someone
    else appended: those are kept aside, with a WARNING, as a damaged tail is; left there,
    they would hide every later record from the next replay.
    """
    file, fd = log
    size = os.fstat(fd).st_size
    if size <= good:
        return
    if not ours:
        kept = keep_aside(directory, file, os.pread(fd, size - good, good))  # from the file written
        _LOGGER.warning(
            "shared dict %r: journal %s: %d bytes this host did not write at byte %d of %s; cut, and kept"
            " in %s",
            name, directory.path, size - good, good, file, kept,
        )  # fmt: skip
    os.ftruncate(fd, good)


def _cut(  # noqa: PLR0913, PLR0917 - what one cut needs
    directory: Directory,
    name: str,
    file: str,
    blob: bytes,
    end: int,
    problem: str,
    last: int,
    later: list[str],
) -> None:
    """Cut ``file`` at ``end`` and drop the ``later`` logs, keeping what is dropped beside them."""
    kept = keep_aside(directory, file, blob[end:])
    if end:
        truncate = directory.open_file(file, os.O_WRONLY)
        try:
            os.ftruncate(truncate, end)
            os.fsync(truncate)
        finally:
            os.close(truncate)
    else:
        directory.remove(file)
    for other in later:
        directory.rename(other, _aside(directory, other))
    directory.sync()
    _LOGGER.warning(
        "shared dict %r: journal %s: %s at byte %d of %s; dropped every record from number %d on"
        " (%d bytes%s), kept in %s",
        name, directory.path, problem, end, file, last + 1, len(blob) - end,
        f", and the later logs {', '.join(later)}" if later else "", kept,
    )  # fmt: skip
