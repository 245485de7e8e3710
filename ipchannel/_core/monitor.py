"""The monitor: one background thread per channel, and the policy of what it does each tick.

Thread ``ipchannel-monitor:NAME`` runs ``tick()`` until the channel's stop Event
is set; a tick that raises is logged and the loop goes on. It ticks every
interval, except in a process that only connects while the coordinator gives an
exit notice of the host (a pidfd): then it sleeps in ``poll()`` on that notice
and ticks the moment the host exits, else every ``IDLE_INTERVAL`` (an idle
client wakes less than once a second). Likewise in the host, where the backend
gives a notice of changes to what its term rests on (its files, by inotify): it
ticks when one changes, when its server thread dies, else every ``IDLE_INTERVAL``.
Each tick, in this order of concern:

- in the host: ``Hosting.check``: restart a server thread that died; step down if
  the host no longer holds what makes it host (the coordinator's fence, the
  listener's published address), so a fresh election never leaves two hosts;
- elsewhere: if the known host still serves, nothing to do; if it handed over or
  died, forget it (``Connector.still_there``); then one election step, as
  ``connect()`` would; with a live host, stand by to host next if nobody does;
- nobody hosts and the election cannot proceed for ``STUCK_WARNING_AFTER``
  seconds: say once, loudly, what holds it (a lock inherited across fork, say).

The monitor decides only what to look at next: whether the host serves is the
coordinator's to say (``assess``), whether this process may still host its
``fence``'s, and the election step is the connector's (``elect``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Protocol

from .. import _platform
from .._errors import ChannelClosed

if TYPE_CHECKING:
    from .._seams.base import Backend, FileChange
    from .._seams.record import HostRecord
    from .._wakeup import Wakeup
    from .term import Term

__all__ = ["Monitor"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0
STUCK_WARNING_AFTER = 2.0  # seconds the election may stay stuck (no live host, lock held) before we say so
IDLE_INTERVAL = 2.0  # seconds between ticks while the host's exit notice (or our term's) is armed
SETTLE = 0.02  # seconds a process that does not stand by leaves a dead host to the standby before it ticks


class _Hosting(Protocol):
    """What the monitor asks of this process's hosting (``term.Hosting``)."""

    @property
    def term(self) -> Term | None: ...

    @property
    def is_host(self) -> bool: ...

    @property
    def standing_by(self) -> bool: ...

    def check(self, term: Term) -> None: ...

    def keep_standby(self) -> None: ...


class _Connector(Protocol):
    """What the monitor asks of this process's view of the host (``connect.Connector``)."""

    may_host: bool

    @property
    def record(self) -> HostRecord | None: ...

    def still_there(self, record: HostRecord) -> bool: ...

    def elect(self, avoid: HostRecord | None, *, verify: bool) -> HostRecord | None: ...

    def adopt(self, record: HostRecord) -> None: ...


class Monitor:
    """Watches one channel's host every ``interval`` seconds on a named daemon thread until ``stopping``."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by Channel
        self,
        name: str,
        hosting: _Hosting,
        connector: _Connector,
        backend: Backend,
        wakeup: Wakeup,
        interval: float,
        stopping: threading.Event,
    ) -> None:
        self._name, self._hosting, self._connector, self._wakeup = name, hosting, connector, wakeup
        self._coordinator, self._exit_notices = backend.coordinator, backend.exit_notices
        self._interval = interval
        self._stopping = stopping
        self._stuck_since: float | None = None
        self._stuck_reported = False
        self._poll = select.poll()
        self._poll.register(wakeup.open(), select.POLLIN)  # a byte there ends the wait at once
        self._notice: tuple[HostRecord, int] | None = None  # the host watched, its exit notice
        self._notice_fired = False
        self._term_notices = backend.term_notices
        self._term_notice: tuple[HostRecord, FileChange] | None = None  # our term watched, its notice
        self._quiet_rearm = False  # the next term notice follows a tick: no extra look once armed
        self._thread = threading.Thread(target=self._run, name=f"ipchannel-monitor:{name}", daemon=True)

    def start(self) -> None:
        """Start the thread: it first looks ``SETTLE`` later (the first host is adopted by then: no poke)."""
        self._wakeup.soon = True
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread to end, then close its descriptors; the caller has set the stop Event."""
        self._wakeup.send(b"!")
        if self._thread is threading.current_thread():
            return
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT)
        if self._thread.is_alive():
            _LOGGER.warning("%s did not stop within %.1f s", self._thread.name, _JOIN_TIMEOUT)
            return  # it may still poll them: leave its descriptors open
        self._disarm()
        self._disarm_term()
        self._wakeup.close()

    def abandon_after_fork(self) -> None:
        """In a forked child: close the copies of the parent monitor's descriptors (its thread is gone)."""
        self._disarm()
        self._disarm_term()
        self._wakeup.abandon_after_fork()

    def _run(self) -> None:
        _platform.leave_signals_to_the_application()
        warm = False
        first = True
        while True:
            try:
                self._wait(first)  # first: the connect() that started us goes on meanwhile, holding the GIL
            except Exception:
                _LOGGER.exception("%s: waiting for the next tick failed", self._thread.name)
                self._disarm()
                self._disarm_term()
                self._stopping.wait(self._interval)
            self._wakeup.soon = first = False  # from now on, a new host is worth a poke
            if self._stopping.is_set():
                return
            if not warm:
                warm = True
                try:
                    self._coordinator.warm_up()  # off the failover path: what becoming host needs
                except Exception:
                    _LOGGER.exception("%s: start-up work failed", self._thread.name)
            try:
                self.tick()
            except Exception:
                if threading.main_thread().is_alive():
                    _LOGGER.exception("%s: monitor tick failed", self._thread.name)
                else:  # an exiting interpreter (3.12+) starts no thread: close() comes next
                    name = self._thread.name
                    _LOGGER.debug("%s: monitor tick failed as the interpreter exits", name, exc_info=True)

    def _wait(self, first: bool = False) -> None:
        """Sleep until poked, the watched host exits, or the interval (longer with an exit notice) ends.

        When the host exits, the standby ticks at once; other processes ``SETTLE`` seconds later,
        off the failover path (their sockets reconnect on their own, through the standby).
        """
        wake_fd = self._wakeup.open()
        settle_until = time.monotonic() + SETTLE if first else None
        while True:
            if self._hosting.is_host:
                armed, fresh = self._arm_term()
                if fresh and settle_until is None:  # a change before it was armed is not in it: look
                    settle_until = time.monotonic() + self._interval  # as before: off a failover's path
            else:
                armed = self._arm()
            timeout = max(self._interval, IDLE_INTERVAL) if armed else self._interval
            if settle_until is not None:
                timeout = max(0.0, settle_until - time.monotonic())
            events = self._poll.poll(timeout * 1000)
            if not events:
                return
            for fd, _events in events:
                settle = self._event(fd, wake_fd)
                if settle is None:
                    return
                if settle and settle_until is None:
                    settle_until = time.monotonic() + SETTLE

    def _event(self, fd: int, wake_fd: int) -> bool | None:
        """Handle one readable descriptor: None to tick now, True to tick ``SETTLE`` from now, else False."""
        if fd == wake_fd:
            got = self._wakeup.drain()
            if b"!" in got:
                return None
            return bool(got)  # a new host: tick soon (stand by?), not on its way in
        if self._term_notice is not None and fd == self._term_notice[1].fd:
            if not self._term_notice[1].touched():
                return False
            self._disarm_term()  # a new watch next (the directory's may be gone)
            self._quiet_rearm = True  # the tick that follows looks after it was armed
            return None  # a file our term rests on changed: look now
        if self._notice is not None and fd == self._notice[1]:
            self._notice_fired = True  # readable for good: poll it no more
            self._poll.unregister(fd)
            return None if self._hosting.standing_by else True
        return False

    def _arm(self) -> bool:
        """Watch the exit notice of the host we connect to; True if one is armed and not yet fired."""
        self._disarm_term()
        record = self._connector.record
        if self._exit_notices is None or self._hosting.is_host or record is None:
            self._disarm()
            return False
        if self._notice is None or self._notice[0] != record:
            self._disarm()
            fd = self._exit_notices.open(record)
            if fd is None:
                return False
            self._notice, self._notice_fired = (record, fd), False
            self._poll.register(fd, select.POLLIN)
        return not self._notice_fired

    def _arm_term(self) -> tuple[bool, bool]:
        """As host: watch what our term rests on (its files); return (armed, just armed: look once now)."""
        self._disarm()  # no host to watch the exit of: we are it
        term = self._hosting.term
        if self._term_notices is None or term is None:
            self._disarm_term()
            return False, False
        record = term[1]
        if self._term_notice is not None and self._term_notice[0] == record:
            return True, False
        self._disarm_term()
        notice = self._term_notices.open(record)
        if notice is None:
            return False, False
        self._term_notice = (record, notice)
        self._poll.register(notice.fd, select.POLLIN)
        fresh, self._quiet_rearm = not self._quiet_rearm, False
        return True, fresh

    def _disarm_term(self) -> None:
        if self._term_notice is not None:
            _record, notice = self._term_notice
            self._term_notice = None
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(notice.fd)
            notice.close()

    def _disarm(self) -> None:
        if self._notice is not None:
            _record, fd = self._notice
            self._notice = None
            if not self._notice_fired:
                with contextlib.suppress(KeyError, ValueError):
                    self._poll.unregister(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def tick(self) -> None:
        """One look at the host, and whatever it calls for (runs on the monitor thread)."""
        term = self._hosting.term
        if term is not None:
            self._hosting.check(term)  # as host: a dead server thread restarts; losing the term steps down
            return
        connector = self._connector
        record = connector.record
        if record is not None:
            self._stuck_since, self._stuck_reported = None, False
            if connector.still_there(record):
                self._hosting.keep_standby()
                return
        try:
            found = connector.elect(record, verify=True)
        except ChannelClosed:
            return  # close() began during this tick
        if found is not None:
            connector.adopt(found)
            if not self._hosting.is_host:
                self._hosting.keep_standby()
        elif connector.may_host:  # (a process kept out of elections never tries the lock)
            self._report_stuck()

    def _report_stuck(self) -> None:
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
            return
        if self._stuck_reported or now - self._stuck_since < STUCK_WARNING_AFTER:
            return
        self._stuck_reported = True
        _LOGGER.warning(
            "channel %r: no live host for %.1f s: %s",
            self._name,
            now - self._stuck_since,
            self._coordinator.blocker() or f"{self._coordinator.location} names no host that can be reached",
        )
