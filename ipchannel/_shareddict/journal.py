"""A durable SharedDict's journal: the host appends each batch before applying it; the next host replays.

Used by the host only, from the start of its term (``start``: take the journal's lock,
replay it, cut a damaged tail) to its end (``close``). Each batch of prepared writes is one
record ``[number, generation, sequence before, writes]``, appended (and, with
``appendfsync="always"``, synced) before the batch is applied, published or answered: a
write the journal refused was applied nowhere; each term opens with an empty one. Records
are numbered without gaps across terms and restarts; replay applies them with
``history.apply``, which gives the results the host gave. When a log outgrows the last
snapshot (and ``COMPACT_MIN_BYTES``), a new log starts and ``ipchannel-journal:NAME``
writes a snapshot of the state at that point, then removes what it covers. That thread
also syncs once a second under ``"everysec"``. The files and their format: ``journal_files``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._errors import ChannelClosed, JournalError
from .journal_files import Directory, frame, header, write_all
from .journal_replay import Replayed, cut_back, replay

if TYPE_CHECKING:
    from pathlib import Path

    from .._codecs import Codec

__all__ = ["COMPACT_MIN_BYTES", "POLICIES", "Journal"]

_LOGGER = logging.getLogger("ipchannel")
POLICIES = ("always", "everysec", "no")
#: A log is compacted once larger than this and than the last snapshot (Redis: auto-aof-rewrite-*).
COMPACT_MIN_BYTES = 8 << 20
_LOCK_WAIT = 2.0  # how long a new host waits for the previous writer to let go of the journal
_SYNC_EVERY = 1.0  # appendfsync="everysec"
_sync_data = getattr(os, "fdatasync", os.fsync)
#: what a compaction snapshots: record number, items, generation, sequence, each writer's last write
_Snapshot = tuple[int, list[Any], int, int, dict[str, list[Any]]]
_FREE_SPACE = (
    "the write was applied nowhere (reads still answer from memory); free space on that filesystem:"
    " writes go on by themselves once the journal can be written"
)


class Journal:
    """One durable dict's journal, as the host writing it holds it (closed between terms)."""

    def __init__(self, name: str, base: Path, *, create_base: bool, codec: Codec, policy: str) -> None:
        self._name, self._base, self._create_base = name, base, create_base
        self._codec, self.policy = codec, policy
        self._codec_name = str(getattr(codec, "name", type(codec).__qualname__))
        self._dir: Directory | None = None
        self._lock_fd: int | None = None
        self._log_fd: int | None = None
        self.after_fork()

    @property
    def path(self) -> Path:
        """The journal's directory."""
        return self._base / f"{self._name}.journal"

    def after_fork(self) -> None:
        """Start closed, with new locks and no thread (in a forked child: close the parent's descriptors).

        Closing our copy never unlocks: the flock belongs to the open file the parent still holds.
        """
        self._close_files()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._log_name = ""
        self._log_size = self._good_size = 0
        self._number = 0  # the last record written
        self._snapshot_size = 0
        self._dirty = False
        self._last_sync = 0.0
        self._sync_failed: JournalError | None = None
        self._pending: _Snapshot | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- a term: start, append, compact, close ---------------------------------------------------

    def start(
        self, data: dict[Any, Any], applied: dict[str, list[Any]], position: tuple[int, int], generation: int
    ) -> tuple[dict[Any, Any], dict[str, list[Any]]]:
        """Open the journal for host term ``generation``; return the state to start from (once per term).

        The journal's state, unless this process's replica (``data`` at ``position``) is
        ahead of it: then a host did not journal (a process opened the dict without
        ``appendonly``), and the journal restarts from the replica's state.
        """
        with self._lock:
            if self._dir is not None:
                raise RuntimeError("journal started twice")
            self._dir = Directory.open(self._base, self._name, create_base=self._create_base)
            try:
                self._take_lock()
                found = replay(self._dir, self._name, self._codec, self._codec_name)
                data, applied = self._choose(found, data, applied, position)
            except BaseException:
                self._close_files()
                raise
            try:  # an empty batch opens the term where its replicas start: if this host dies before it
                self._append(generation, 0, [])  # writes, the next finds the journal level with them
            except JournalError as exc:  # the term starts all the same
                _LOGGER.warning("shared dict %r: %s", self._name, exc)
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"ipchannel-journal:{self._name}", daemon=True
            )
            self._thread.start()
            return data, applied

    def _choose(
        self, found: Replayed, data: dict[Any, Any], applied: dict[str, list[Any]], position: tuple[int, int]
    ) -> tuple[dict[Any, Any], dict[str, list[Any]]]:
        assert self._dir is not None
        self._number, self._snapshot_size = found.number, found.snapshot_size
        if found.found and found.position >= position:
            _LOGGER.info(
                "shared dict %r: replayed journal %s to record %d (%d keys)",
                self._name, self._dir.path, found.number, len(found.data),
            )  # fmt: skip
            self._open_log(found.log)
            return found.data, found.applied
        if found.found:
            _LOGGER.warning(
                "shared dict %r: journal %s is behind this process's replica (%s < %s): a host did not"
                " journal (every process must open the dict with the same appendonly); starting from the"
                " replica and rewriting the journal",
                self._name, self._dir.path, found.position, position,
            )  # fmt: skip
        if data or found.found:
            self._snapshot_size = self._write_snapshot(self._number, list(data.items()), *position, applied)
        self._open_log(None)
        return data, applied

    def append(self, generation: int, seq: int, writes: list[list[Any]]) -> None:
        """Journal one batch of prepared writes before it is applied; JournalError if it cannot be."""
        with self._lock:
            if self._log_fd is None:  # the term ended (the host is leaving): the next host gets it
                raise ChannelClosed(self._name, "SharedDict")
            self._append(generation, seq, writes)

    def _append(self, generation: int, seq: int, writes: list[list[Any]]) -> None:
        assert self._log_fd is not None
        assert self._dir is not None
        if self._sync_failed is not None:
            self._retry_sync()
        record = frame(self._codec.dumps([self._number + 1, generation, seq, writes]))
        try:  # ours: what follows the last good record is an append of ours that failed
            ours = self._log_size != self._good_size
            cut_back(self._dir, self._name, (self._log_name, self._log_fd), self._good_size, ours=ours)
        except OSError as exc:
            raise self._error("cannot cut the log back to its last record", exc) from exc
        self._log_size = self._good_size
        try:
            # at its offset, not appended: bytes someone appends meanwhile cannot come before it
            write_all(self._log_fd, record, self._good_size)
            self._log_size += len(record)
            if self.policy == "always":
                _sync_data(self._log_fd)
        except OSError as exc:
            self._log_size = self._good_size + len(record)  # unknown: cut back before the next one
            with contextlib.suppress(OSError):  # now: a refused record must not be replayed after a crash
                os.ftruncate(self._log_fd, self._good_size)
                self._log_size = self._good_size
            raise self._error("cannot append to the log", exc) from exc
        self._good_size = self._log_size
        self._number += 1
        if self.policy == "everysec" and not self._dirty:
            self._dirty = True
            self._cond.notify()

    def compact_if_due(
        self, data: dict[Any, Any], applied: dict[str, list[Any]], position: tuple[int, int]
    ) -> None:
        """After a batch: if the log outgrew the snapshot, start a new log and snapshot the state so far."""
        with self._lock:
            if (
                self._log_fd is None
                or self._pending is not None
                or self._log_size < max(COMPACT_MIN_BYTES, self._snapshot_size)
            ):
                return
            old_fd = self._log_fd
            try:
                self._open_log(None)
            except JournalError as exc:  # the batch is applied: compaction waits for a later one
                _LOGGER.warning("shared dict %r: journal not compacted now: %s", self._name, exc.problem)
                return
            try:
                if self.policy != "no":
                    _sync_data(old_fd)
            except OSError as exc:  # its records are written: a power cut may still lose them
                _LOGGER.warning("shared dict %r: cannot sync the journal's last log: %s", self._name, exc)
            finally:
                os.close(old_fd)
            # a shallow copy: operations replace values, never change one in place (``ops``)
            self._pending = (self._number, list(data.items()), *position, dict(applied))
            self._cond.notify()

    def close(self) -> None:
        """End the term: stop the thread, sync (unless ``"no"``), let go of the lock; ``start`` reopens."""
        with self._lock:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            self._thread = None
            if self._log_fd is not None and self.policy != "no":
                try:
                    _sync_data(self._log_fd)
                except OSError as exc:
                    _LOGGER.error(  # noqa: TRY400 - the message says it all
                        "shared dict %r: cannot sync the journal on close: %s", self._name, exc
                    )
            self._close_files()

    # -- the parts ----------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        assert self._dir is not None
        try:
            self._lock_fd = self._dir.lock(_LOCK_WAIT)
        except OSError as exc:
            raise self._error("cannot open its lock file", exc) from exc

    def _open_log(self, existing: tuple[str, int] | None) -> None:
        """Append to ``existing`` (name, size), or start ``log.<next record>`` (call with _lock)."""
        assert self._dir is not None
        try:
            if existing is not None:
                self._log_name, self._log_size = existing
                self._log_fd = self._dir.open_file(existing[0], os.O_RDWR)
            else:
                name = f"log.{self._number + 1}"
                fd = self._dir.open_file(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
                try:
                    first = header(self._codec_name)
                    write_all(fd, first)
                    _sync_data(fd)
                    self._dir.sync()
                except BaseException:
                    os.close(fd)
                    raise
                self._log_fd, self._log_name, self._log_size = fd, name, len(first)
        except OSError as exc:
            raise self._error("cannot open a log file", exc) from exc
        self._good_size = self._log_size

    def _write_snapshot(
        self, number: int, items: list[Any], generation: int, seq: int, applied: dict[str, list[Any]]
    ) -> int:
        """Write ``snapshot.<number>`` aside, sync it, rename it in place; remove what it covers."""
        directory = self._dir
        assert directory is not None
        state = {"n": number, "g": generation, "s": seq, "items": items, "applied": applied}
        blob = header(self._codec_name) + frame(self._codec.dumps(state))
        try:
            directory.replace(f"snapshot.{number}", blob)
        except OSError as exc:
            raise self._error("cannot write a snapshot", exc) from exc
        directory.remove_covered(number)
        return len(blob)

    def _run(self) -> None:
        """``ipchannel-journal:NAME``: write snapshots; sync once a second under ``"everysec"``."""
        _platform.leave_signals_to_the_application()
        while True:
            with self._lock:
                while not (self._stopping or self._pending is not None or self._dirty):
                    self._cond.wait()
                wait = self._last_sync + _SYNC_EVERY - time.monotonic()
                if self._dirty and self._pending is None and not self._stopping and wait > 0:
                    self._cond.wait(wait)
                pending, self._pending = self._pending, None
                stopping, dirty, self._dirty = self._stopping, self._dirty, False
                fd = os.dup(self._log_fd) if dirty and self._log_fd is not None else None
            if fd is not None:
                self._sync_in_background(fd)
            if pending is not None and not stopping:
                self._compact(pending)
            if stopping:
                return

    def _sync_in_background(self, fd: int) -> None:
        try:
            _sync_data(fd)
        except OSError as exc:
            error = self._error("cannot sync the log", exc)
            _LOGGER.error("shared dict %r: %s", self._name, error)  # noqa: TRY400 - no traceback: said
            with self._lock:
                self._sync_failed = error
        finally:
            os.close(fd)
            self._last_sync = time.monotonic()

    def _retry_sync(self) -> None:
        """Refuse writes until a sync succeeds: a background one failed (as Redis does). Call with _lock."""
        assert self._log_fd is not None
        assert self._sync_failed is not None
        try:
            _sync_data(self._log_fd)
        except OSError:
            raise self._sync_failed from None
        self._sync_failed = None

    def _compact(self, pending: _Snapshot) -> None:
        try:
            size = self._write_snapshot(*pending)
        except JournalError as exc:
            _LOGGER.warning("shared dict %r: journal %s not compacted: %s", self._name, exc.path, exc.problem)
            return
        with self._lock:
            self._snapshot_size = size

    def _error(self, what: str, exc: OSError) -> JournalError:
        return JournalError(str(self.path), f"{what}: {exc.strerror or exc}", _FREE_SPACE, exc.errno)

    def _close_files(self) -> None:
        """Close what is open (call with _lock; ours: the lock goes with it; a forked copy: it does not)."""
        for fd in (self._log_fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.close()
        self._dir, self._lock_fd, self._log_fd = None, None, None
