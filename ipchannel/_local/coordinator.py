"""The coordinator seam: who hosts a channel, and where. Is the recorded host dead? Decided here only.

``Coordinator`` is what ``Channel`` asks; ``LocalCoordinator`` implements it for
one machine: the flock on ``NAME.lock`` (filelock, in ``_election``), the JSON
record ``NAME.host`` (``_hostrecord``) and liveness by pid + start time (``_platform``).

- Becoming host: ``try_acquire()``; then ``publish(record)`` once the listener
  is up (the record is written before the socket is published, so anything
  accepting at the published address has its record in place); ``retract()``
  before the listener closes; ``release()`` last.
- The generation (the fencing number) only grows: ``next_generation()``.
- Whether a recorded host is serving, alive, or gone: ``serving()``,
  ``liveness()``, ``released()``; ``exit_notice()`` to be told when it exits.
  Nothing else in the package asks psutil.
- Waiting: ``watch(dead)`` returns a predicate that turns true once the
  election can move on (a new record, or the dead host's lock freed).
- A host checks it still holds what makes it host: ``holding_problem()``.
- The standby (``_standby``): ``stand_by()``, ``publish_standby()``, ``standby()``,
  ``stop_standing_by()``; others leave a dead host's place to it: ``may_campaign()``.
- After fork: ``after_fork()``. Timeouts and stuck elections: ``stuck_detail()``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Protocol

from .. import _platform
from .._seams.record import HostRecord, Liveness, own_create_time, read_record, remove_record, write_record
from .lock import HostLock
from .paths import ensure_runtime_dir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .paths import ChannelPaths

__all__ = ["STANDBY_GRACE", "Coordinator", "LocalCoordinator"]

_LOGGER = logging.getLogger("ipchannel")
STANDBY_GRACE = 0.25  # seconds others leave a dead host's place to a live standby


class Coordinator(Protocol):
    """Who hosts a channel and where: the election, the host record, and the host's liveness."""

    @property
    def runtime_dir(self) -> Path:
        """Return where this process keeps the channel's local files."""

    @property
    def location(self) -> str:
        """Return where the election happens, for messages: the runtime directory, or the engine's URL."""

    def read(self) -> HostRecord | None:
        """Return the current host record, or None."""

    def try_acquire(self) -> bool:
        """Try, without waiting, to become the one allowed to host; True if we now are."""

    def release(self) -> None:
        """Give up the right to host (idempotent)."""

    def new_record(
        self, address: str, previous: HostRecord | None, last_seen: int, *, auth: bool
    ) -> HostRecord:
        """Return the record of a new term of this process at ``address``, with the next generation."""

    def prepare(self) -> None:
        """Before publishing a record: make sure it can be written (directory, stale temporaries)."""

    def publish(self, record: HostRecord) -> HostRecord:
        """Make ``record`` the current host record; return it as published (an engine numbers it).

        May raise ``LostClaim`` (an engine: another process claimed the channel first).
        """

    def retract(self, record: HostRecord) -> None:
        """Remove the current record if it is still ``record`` (never another host's)."""

    def serving(self, record: HostRecord) -> bool:
        """Tell whether the recorded host runs and is not exiting (an EOF then was its handler's)."""

    def confirm(self, record: HostRecord) -> bool:
        """Like ``serving()``, asked of the source itself (after an EOF: an engine, not a cached copy)."""

    def liveness(self, record: HostRecord) -> Liveness:
        """Say whether the recorded host runs: "alive", "dead" or "unknown" (counted as alive)."""

    def released(self, record: HostRecord) -> bool:
        """Tell whether a dead host's hold on the channel is gone (its lock free, or about to be)."""

    def exit_notice(self, record: HostRecord) -> int | None:
        """Return a descriptor that polls readable once the recorded host exits, or None (none here).

        The caller closes it. Readable at once if the host is gone already.
        """

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:
        """Return a predicate that turns True once the election can move on from now."""

    def stand_by(self) -> bool:
        """Try, without waiting, to become (or stay) the standby, the process that hosts next; True if we are.

        False for a standby whose lock file was removed: it must stop standing by.
        """

    def publish_standby(self, record: HostRecord) -> None:
        """As the standby: say where clients of a dead host wait for us (``record.sock``)."""

    def standby(self) -> HostRecord | None:
        """Return the record of the standby if it is another process (it may have died since), or None."""

    def stop_standing_by(self, record: HostRecord | None) -> None:
        """Give the standby's place up (its record, if still ``record``, then its lock). Idempotent."""

    def may_campaign(self, dead: HostRecord | None) -> bool:
        """Tell whether to try for hosting after the host ``dead`` is gone, or leave it to the standby.

        A live standby gets ``STANDBY_GRACE`` seconds to take over first (it may be frozen).
        """

    def holding_problem(self) -> str:
        """As host: return "" if we still hold the right to host, else how we lost it."""

    def record_problem(self, record: HostRecord) -> str:
        """As host: return "" if ``record`` is still current (a damaged one is rewritten), else why not."""

    def claim_valid(self) -> bool:
        """As host: True while our right to host is provably ours (asked before answering a request)."""

    def unreachable(self) -> str:
        """Say why the coordinator does not answer ("" if it does, or cannot fail to: a local one)."""

    def stuck_detail(self) -> str:
        """Say why no host can be elected though nobody serves ("" if nothing is known to block it)."""

    def stuck_report(self) -> str:
        """Say what holds the election, for the monitor's warning that it cannot proceed."""

    def warm_up(self) -> None:
        """Compute ahead of time what becoming host needs (off the failover path)."""

    def after_fork(self) -> None:
        """In a forked child: forget the parent's hold, without touching the parent's."""

    def close(self) -> None:
        """Stop what the coordinator runs in the background (the channel closes)."""


class LocalCoordinator:
    """The election among the processes of one machine: flock, JSON record file, pid + create time."""

    def __init__(self, name: str, paths: ChannelPaths) -> None:
        self._name = name
        self._paths = paths
        self._lock = HostLock(paths.lock)
        self._standby_lock = HostLock(paths.standby_lock)
        self._deferring: tuple[HostRecord, float] | None = None  # a dead host left to the standby, since

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
        return read_record(self._paths.record)

    def try_acquire(self) -> bool:
        return self._lock.try_acquire()

    def release(self) -> None:
        self._lock.release()

    def new_record(
        self, address: str, previous: HostRecord | None, last_seen: int, *, auth: bool
    ) -> HostRecord:
        generation = max(previous.generation if previous else 0, last_seen) + 1
        pid = os.getpid()
        return HostRecord(pid, own_create_time(pid), address, generation, time.time(), auth)

    def prepare(self) -> None:
        ensure_runtime_dir(self._paths.directory)
        for stale in self._paths.stale_record_temporaries():
            stale.unlink(missing_ok=True)

    def publish(self, record: HostRecord) -> HostRecord:
        write_record(self._paths.record, record)
        return record

    def retract(self, record: HostRecord) -> None:
        remove_record(self._paths.record, record)
        standby = read_record(self._paths.standby_record)
        if standby is not None and _platform.process_gone(standby.pid):
            remove_record(self._paths.standby_record, standby)  # a killed standby's: nobody else would

    def serving(self, record: HostRecord) -> bool:
        # The /proc check is ~10x cheaper than psutil and settles the common case, a host that just died.
        return not _platform.process_exiting(record.pid) and record.liveness() == "alive"

    def confirm(self, record: HostRecord) -> bool:
        return self.serving(record) and self.read() == record  # a dead host needs no file read

    def liveness(self, record: HostRecord) -> Liveness:
        return record.liveness()

    def released(self, record: HostRecord) -> bool:
        # Its sockets close a little before its lock does: the lock is free once it is a zombie or gone.
        return _platform.process_gone(record.pid)

    def exit_notice(self, record: HostRecord) -> int | None:
        # No psutil here (it is on the failover path): the record was just verified (its host
        # answered, or the election read it), and should its pid be reused meanwhile, the next
        # tick's serving() still finds the host gone.
        return _platform.exit_notice(record.pid)

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
        return inodes[0], inodes[1], dead is None or self.released(dead)

    def stand_by(self) -> bool:
        if self._standby_lock.held and not self._standby_lock.still_on_its_file():
            self._standby_lock.release()  # its file was removed: another process may stand by on a new one
            return False
        return self._standby_lock.try_acquire()

    def publish_standby(self, record: HostRecord) -> None:
        write_record(self._paths.standby_record, record)

    def standby(self) -> HostRecord | None:
        # No liveness check (it is on the failover path): a dead standby's side socket refuses
        # the connection, and a client checks the listener's pid.
        record = read_record(self._paths.standby_record)
        return None if record is None or record.pid == os.getpid() else record

    def stop_standing_by(self, record: HostRecord | None) -> None:
        try:
            if record is not None:  # only if it still names us: a newer standby's stays
                remove_record(self._paths.standby_record, record)
        finally:
            self._standby_lock.release()  # idempotent

    def may_campaign(self, dead: HostRecord | None) -> bool:
        standby = None if dead is None or self._standby_lock.held else self.standby()
        if dead is None or standby is None or self.released(standby):
            self._deferring = None
            return True
        now = time.monotonic()
        if self._deferring is None or self._deferring[0] != dead:
            self._deferring = (dead, now)
        return now - self._deferring[1] >= STANDBY_GRACE

    def holding_problem(self) -> str:
        """Without our lock file, another process could lock a new one and host too: we must step down."""
        if not self._lock.still_on_its_file():
            return f"its lock file {self._paths.lock} was removed or replaced"
        return ""

    def record_problem(self, record: HostRecord) -> str:
        """Rewrite a missing or unreadable record; another host's record means we lost."""
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

    def claim_valid(self) -> bool:
        return True  # the flock is ours until we release it (its file's removal is the monitor's to see)

    def unreachable(self) -> str:
        return ""

    def stuck_detail(self) -> str:
        record = self.read()
        if record is not None and record.liveness() != "dead":
            return ""
        holders = _platform.lock_holders(str(self._paths.lock))
        if not holders:
            return ""
        return (
            f"the lock {self._paths.lock} is held by pid(s) {holders} but no live host is recorded; "
            "a process that inherited it across fork() without exec() blocks the election"
        )

    def stuck_report(self) -> str:
        """Name the lock and its holders, for the monitor's warning about a stuck election."""
        holders = _platform.lock_holders(str(self._paths.lock))
        return (
            f"the lock {self._paths.lock} is held (holders: {'unknown' if holders is None else holders}); "
            "a process that inherited it across fork() without exec() blocks the election"
        )

    def warm_up(self) -> None:
        own_create_time(os.getpid())

    def after_fork(self) -> None:
        self._lock.forget_after_fork()
        self._standby_lock.forget_after_fork()
        self._deferring = None

    def close(self) -> None:
        """Nothing runs in the background."""
