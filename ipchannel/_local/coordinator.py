"""The coordinator of one machine: a flock elects the host, a JSON file records it, the pid tells if it runs.

``LocalCoordinator`` implements the ``Coordinator`` seam on the runtime directory's
files (``paths``): whoever holds the flock on ``NAME.lock`` (``lock``) hosts; the record
``NAME.host`` (``records``) says who and where. Whether a recorded host runs is told by
its pid and start time (``_platform``: ``/proc`` on Linux, on a clock no wall-clock step
moves); nothing else in the package asks the process table. ``PidExitNotices`` is the
exit-notice capability (pidfds), where the platform has it.

The record is written after the server listens, atomically (a temporary file, then
``os.replace``), so a reader sees the old record, the new one or none, never half of
one (``write_record``); the standby's record (``NAME.standby``) is written the same way.

- Becoming host: ``try_acquire()``, then ``publish(record)`` once the listener is up
  (the record is written before the socket is published, so anything accepting at the
  published path has its record in place); ``retract()`` before the listener closes;
  ``release()`` last. Generations only grow: a new term is numbered above any seen.
- ``assess(record)``: SERVING, RETIRED (alive, but another record replaced it, or none
  did and it gave the lock up), FAILING (exiting: its sockets are closing, its lock not
  yet free), GONE (its lock is free), UNKNOWN (its process cannot be seen).
- ``fence(record)``: the flock is ours until released; ``thorough`` also checks that
  its file and the record are still in place (another process could lock a new file).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import time
from typing import TYPE_CHECKING

from .. import _platform
from .._seams.base import HostState
from .._seams.record import HostRecord, own_create_time
from .lock import HostLock
from .paths import ensure_runtime_dir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._seams.base import Evidence, FileChange, Waiting
    from .paths import ChannelPaths

__all__ = [
    "FileElectionNotices",
    "FileTermNotices",
    "LocalCoordinator",
    "PidExitNotices",
    "read_record",
    "remove_record",
    "write_record",
]

_LOGGER = logging.getLogger("ipchannel")
# Start times are compared, not wall-clock create times: psutil adds the boot time, which
# follows the wall clock, and a clock step (NTP, a VM resumed) made every host look dead. On
# Linux they are clock ticks since boot; the tolerance only absorbs rounding.
_CREATE_TIME_TOLERANCE = 1.0


class LocalCoordinator:
    """The election among the processes of one machine: flock, JSON record file, pid + start time."""

    def __init__(self, name: str, paths: ChannelPaths) -> None:
        self._name = name
        self._paths = paths
        self._lock = HostLock(paths.lock)
        self._seen = 0  # the highest generation this process has seen: a new term is numbered above it

    @property
    def runtime_dir(self) -> Path:
        return self._paths.directory

    @property
    def location(self) -> str:
        return str(self._paths.directory)

    @property
    def lock_fd(self) -> int | None:
        """The descriptor of the held lock (tests hand it to another process to leak the lock)."""
        return self._lock.fd

    def read(self) -> HostRecord | None:
        record = read_record(self._paths.record)
        if record is not None:
            self.saw(record)
        return record

    def saw(self, record: HostRecord) -> None:
        """Note a host record met on the way (a standby's hello): new terms are numbered above it."""
        self._seen = max(self._seen, record.generation)

    def assess(self, record: HostRecord, *, after: Evidence = "look") -> HostState:  # noqa: ARG002 - all the same here
        pid = record.pid
        # The /proc check is ~10x cheaper than psutil and settles the common case, a host that just died.
        if _platform.process_exiting(pid):
            return HostState.GONE if _platform.process_gone(pid) else HostState.FAILING
        running = _running(record)
        if running is False:
            return HostState.GONE
        current = self.read()
        if current != record and (current is not None or not self._holds_lock(record)):
            return HostState.RETIRED  # it handed over, or another host replaced it
        return HostState.SERVING if running else HostState.UNKNOWN

    def _holds_lock(self, record: HostRecord) -> bool:
        """Tell whether ``record``'s host holds the lock: still the host though its record is missing.

        The lock is the authority: a host hands over by releasing it (its record goes first),
        while a record deleted or damaged under a live host is rewritten at its next tick (``fence``).
        """
        return _platform.flock_holder(str(self._paths.lock)) == record.pid

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:
        before = self._marker(dead)
        return lambda: self._marker(dead) != before

    def _marker(self, dead: HostRecord | None) -> tuple[int, int, bool]:
        """Return what changes when the election can move on: a new host renames its files in."""
        inodes = []
        for path in (self._paths.record, self._paths.sock):
            try:
                inodes.append(os.stat(path).st_ino)
            except OSError:
                inodes.append(0)
        # Its sockets close a little before its lock does: the lock is free once it is a zombie or gone.
        return inodes[0], inodes[1], dead is None or _platform.process_gone(dead.pid)

    def try_acquire(self) -> bool:
        ensure_runtime_dir(self._paths.directory)  # it may have been removed since
        if not self._lock.try_acquire():
            return False
        for stale in self._paths.stale_record_temporaries():  # ours to remove now: no host is writing
            stale.unlink(missing_ok=True)
        return True

    def new_record(self, address: str, previous: HostRecord | None, *, auth: bool) -> HostRecord:
        generation = max(previous.generation if previous else 0, self._seen) + 1
        pid = os.getpid()
        return HostRecord(pid, own_create_time(pid), address, generation, time.time(), auth)

    def publish(self, record: HostRecord) -> HostRecord:
        write_record(self._paths.record, record)
        self.saw(record)
        return record

    def retract(self, record: HostRecord) -> None:
        remove_record(self._paths.record, record)
        standby = read_record(self._paths.standby_record)
        if standby is not None and _platform.process_gone(standby.pid):
            remove_record(self._paths.standby_record, standby)  # a killed standby's: nobody else would

    def release(self) -> None:
        self._lock.release()

    def holding_off(self, record: HostRecord) -> float:  # noqa: ARG002 - a flock is never reset
        return 0.0  # the kernel holds the lock: no earlier holder can outlive it unseen

    def fence(self, record: HostRecord, *, thorough: bool = False) -> str:
        if not thorough:
            return ""  # the flock is ours until we release it
        if not self._lock.still_on_its_file():
            # without our lock file, another process could lock a new one and host too
            return f"its lock file {self._paths.lock} was removed or replaced"
        current = self.read()
        if current == record:
            return ""
        if current is not None:
            return f"another record (pid {current.pid}) replaced its own"
        try:
            self.publish(record)
        except OSError as exc:
            return f"its record was damaged and cannot be rewritten: {exc}"
        _LOGGER.warning("channel %r: the host record was missing or unreadable; rewrote it", self._name)
        return ""

    def unreachable(self) -> str:
        return ""  # files and the process table: nothing that can fail to answer

    def blocker(self) -> str:
        record = self.read()
        if record is not None and not self.assess(record).forget:
            return ""
        holders = _platform.lock_holders(str(self._paths.lock))
        if not holders:
            return ""
        return (
            f"the lock {self._paths.lock} is held by pid(s) {holders} but no live host is recorded; "
            "a process that inherited it across fork() without exec() blocks the election"
        )

    def warm_up(self) -> None:
        own_create_time(os.getpid())

    def after_fork(self) -> None:
        self._lock.forget_after_fork()

    def close(self) -> None:
        """Remove the private socket files of processes that died (see ``ChannelPaths.tidy``)."""
        self._paths.tidy()


class PidExitNotices:
    """Exit notices by pidfd: readable from the moment the host is a zombie (its lock is free by then)."""

    def open(self, record: HostRecord) -> int | None:
        # No psutil here (it is on the failover path): the record was just verified (its host
        # answered, or the election read it), and should its pid be reused meanwhile, the next
        # tick's assess() still finds the host gone.
        return _platform.exit_notice(record.pid)


class FileTermNotices:
    """Notices of changes to a local host's lock file, record and socket file (inotify, on Linux).

    What ``fence(thorough=True)`` and ``still_published`` look at: any of them removed,
    replaced or rewritten wakes the host's monitor at once, instead of at its next look.
    """

    def __init__(self, paths: ChannelPaths) -> None:
        self._paths = paths

    def open(self, record: HostRecord) -> FileChange | None:  # noqa: ARG002 - the files are the channel's
        paths = self._paths
        names = [paths.lock.name, paths.record.name, paths.sock.name]
        return _platform.file_notice(str(paths.directory), names, contents=[paths.record.name])


class FileElectionNotices:
    """What wakes a process waiting in the election: a host's files, or the dead host's exit.

    The record or socket file coming or going (a host publishing itself, by inotify); the dead
    host's pidfd turning readable (its lock is free then). Instead of looking at both every
    0.5 ms: a process waiting for a host it may not become (``may_host=False``, a SharedDict
    newcomer kept out) woke 1,500 times a second for nothing.
    """

    def __init__(self, paths: ChannelPaths) -> None:
        self._paths = paths

    def open(self, dead: HostRecord | None) -> Waiting | None:
        paths = self._paths
        files = _platform.file_notice(str(paths.directory), [paths.record.name, paths.sock.name], [])
        if files is None:
            return None
        # None if gone already (reaped: nothing left to wait for) or not ours to watch: the
        # caller's look every STOP_CHECK tells
        exit_fd = None if dead is None else _platform.exit_notice(dead.pid)
        return _ElectionWait(files, exit_fd)


class _ElectionWait:
    def __init__(self, files: FileChange, exit_fd: int | None) -> None:
        self._files, self._exit_fd = files, exit_fd
        self._poll = select.poll()
        self._poll.register(files.fd, select.POLLIN)
        if exit_fd is not None:
            self._poll.register(exit_fd, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        fired = False
        for fd, _events in self._poll.poll(timeout * 1000):
            if fd == self._exit_fd:
                self._poll.unregister(fd)  # readable for good
                fired = True
            elif self._files.touched():
                fired = True
        return fired

    def close(self) -> None:
        self._files.close()
        if self._exit_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._exit_fd)


def _running(record: HostRecord) -> bool | None:
    """Tell whether the recorded process runs: True, False, or None when it cannot be seen.

    Its start time must match the record's, so a pid reused by another process is not the host.
    """
    started = _platform.start_time(record.pid)
    if started is None:
        return False
    if math.isnan(started):
        return None  # not allowed to look
    return abs(started - record.create_time) <= _CREATE_TIME_TOLERANCE


def read_record(path: Path) -> HostRecord | None:
    """Return the record at ``path``, or None if it is missing or unreadable (logged at DEBUG)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _LOGGER.debug("cannot read host record %s: %s", path, exc)
        return None
    try:
        return HostRecord.from_json(data)
    except ValueError as exc:
        _LOGGER.debug("ignoring host record %s: %s", path, exc)
        return None


def write_record(path: Path, record: HostRecord) -> None:
    """Write ``record`` to ``path`` atomically. Only the lock holder calls this."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, record.to_json())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_record(path: Path, ours: HostRecord) -> None:
    """Remove the record at ``path`` if it is still ``ours`` (never another host's). Lock holder only."""
    if read_record(path) == ours:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
