"""The monitor: one background thread per channel, and the policy of what it does each tick.

Thread ``ipchannel-monitor:NAME`` runs ``tick()`` until the channel's stop Event
is set; a tick that raises is logged and the loop goes on. It ticks every
interval, except in a process that only connects while the coordinator gives an
exit notice of the host (a pidfd): then it sleeps in ``poll()`` on that notice
and ticks the moment the host exits, else every ``IDLE_INTERVAL`` (an idle
client wakes less than once a second). Each tick, in this order of concern:

- in the host: restart a server thread that died; step down if the host no
  longer holds what makes it host (the coordinator's lock and record, the
  transport's published address), so a fresh election never leaves two hosts;
- elsewhere: if the recorded host is still the one we know and serving, nothing
  to do; if it handed over (record gone or replaced) or died, forget it; then
  one election step, as ``connect()`` would (the coordinator decides whether the
  recorded host serves); with a live host, stand by to host next if nobody does;
- nobody hosts and the election cannot proceed for ``STUCK_WARNING_AFTER``
  seconds: say once, loudly, what holds it (a lock inherited across fork, say).

So the whole failover path reads: this module (what next), ``_coordinator``
(is the host dead?), ``_channel`` (the election step and the connect loop).
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
    from collections.abc import Callable

    from .._local.coordinator import Coordinator
    from .._local.unix import Listener
    from .._seams.record import HostRecord

__all__ = ["Monitor"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0
STUCK_WARNING_AFTER = 2.0  # seconds the election may stay stuck (no live host, lock held) before we say so
IDLE_INTERVAL = 2.0  # seconds between ticks while the host's exit notice is armed
SETTLE = 0.02  # seconds a process that does not stand by leaves a dead host to the standby before it ticks


class _Channel(Protocol):
    """The election steps of the Channel this monitor watches (``_channel.Channel``)."""

    may_host: bool

    @property
    def name(self) -> str: ...

    @property
    def is_host(self) -> bool: ...

    @property
    def _standing_by(self) -> bool: ...

    @property
    def _server(self) -> Listener | None: ...

    @property
    def _record(self) -> HostRecord | None: ...

    def _elect(self, avoid: HostRecord | None, *, verify: bool) -> HostRecord | None: ...

    def _adopt(self, record: HostRecord) -> None: ...

    def _forget_host(self, record: HostRecord) -> None: ...

    def _keep_standby(self) -> None: ...

    def _step_down(self, server: Listener, record: HostRecord, problem_of: Callable[[], str]) -> None: ...


class Monitor:
    """Watches one channel's host every ``interval`` seconds on a named daemon thread until ``stopping``."""

    def __init__(
        self, channel: _Channel, coordinator: Coordinator, interval: float, stopping: threading.Event
    ) -> None:
        self._channel, self._coordinator = channel, coordinator
        self._interval = interval
        self._stopping = stopping
        self._stuck_since: float | None = None
        self._stuck_reported = False
        self._fd_lock = threading.Lock()  # others write to the pipe: never after it is closed
        self._wake_r, self._wake_w = os.pipe()  # poke(): a byte here ends the wait at once
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._notice: tuple[HostRecord, int] | None = None  # the host watched, its exit notice
        self._notice_fired = False
        self._thread = threading.Thread(
            target=self._run, name=f"ipchannel-monitor:{channel.name}", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def poke(self) -> None:
        """Tick now rather than at the next interval (the host found its claim lapsed)."""
        self._send(b"!")

    def rewatch(self) -> None:
        """Watch the exit notice of the host just adopted; tick ``SETTLE`` seconds later, not now."""
        self._send(b"w")

    def _send(self, byte: bytes) -> None:
        with self._fd_lock, contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is coming
            if self._wake_w != -1:
                os.write(self._wake_w, byte)

    def join(self) -> None:
        """Wait for the thread to end, then close its descriptors; the caller has set the stop Event."""
        self.poke()
        if self._thread is threading.current_thread():
            return
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT)
        if self._thread.is_alive():
            _LOGGER.warning("%s did not stop within %.1f s", self._thread.name, _JOIN_TIMEOUT)
            return  # it may still poll them: leave its descriptors open
        self._close_descriptors()

    def abandon_after_fork(self) -> None:
        """In a forked child: close the copies of the parent monitor's descriptors (its thread is gone)."""
        self._fd_lock = threading.Lock()  # a parent thread may have held it at fork time
        self._close_descriptors()

    def _close_descriptors(self) -> None:
        self._disarm()
        with self._fd_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        _platform.leave_signals_to_the_application()
        try:
            self._coordinator.warm_up()  # off the failover path: what becoming host needs
        except Exception:
            _LOGGER.exception("%s: start-up work failed", self._thread.name)
        while True:
            try:
                self._wait()
            except Exception:
                _LOGGER.exception("%s: waiting for the next tick failed", self._thread.name)
                self._disarm()
                self._stopping.wait(self._interval)
            if self._stopping.is_set():
                return
            try:
                self.tick()
            except Exception:
                _LOGGER.exception("%s: monitor tick failed", self._thread.name)

    def _wait(self) -> None:
        """Sleep until poked, the watched host exits, or the interval (longer with an exit notice) ends.

        When the host exits, the standby ticks at once; other processes ``SETTLE`` seconds later,
        off the failover path (their sockets reconnect on their own, through the standby).
        """
        settle_until: float | None = None
        while True:
            armed = self._arm()
            timeout = max(self._interval, IDLE_INTERVAL) if armed else self._interval
            if settle_until is not None:
                timeout = max(0.0, settle_until - time.monotonic())
            events = self._poll.poll(timeout * 1000)
            if not events:
                return
            for fd, _events in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        got = os.read(self._wake_r, 512)
                        if b"!" in got:
                            return
                        if settle_until is None:  # a new host: tick soon (stand by?), not on its way in
                            settle_until = time.monotonic() + SETTLE
                elif self._notice is not None and fd == self._notice[1]:
                    self._notice_fired = True  # readable for good: poll it no more
                    self._poll.unregister(fd)
                    if self._channel._standing_by:  # noqa: SLF001
                        return
                    settle_until = time.monotonic() + SETTLE

    def _arm(self) -> bool:
        """Watch the exit notice of the host we connect to; True if one is armed and not yet fired."""
        channel = self._channel
        record = channel._record  # noqa: SLF001
        if channel._server is not None or record is None:  # noqa: SLF001
            self._disarm()
            return False
        if self._notice is None or self._notice[0] != record:
            self._disarm()
            fd = self._coordinator.exit_notice(record)
            if fd is None:
                return False
            self._notice, self._notice_fired = (record, fd), False
            self._poll.register(fd, select.POLLIN)
        return not self._notice_fired

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
        channel = self._channel
        server, record = channel._server, channel._record  # noqa: SLF001 - the channel we watch
        if server is not None and record is not None:
            self._keep_hosting(server, record)
            return
        if record is not None:
            self._stuck_since, self._stuck_reported = None, False
            if self._still_there(record):
                channel._keep_standby()  # noqa: SLF001
                return
        try:
            found = channel._elect(record, verify=True)  # noqa: SLF001
        except ChannelClosed:
            return  # close() began during this tick
        if found is not None:
            channel._adopt(found)  # noqa: SLF001
            if not channel.is_host:
                channel._keep_standby()  # noqa: SLF001
        elif channel.may_host:  # (a process kept out of elections never tries the lock)
            self._report_stuck()

    def _still_there(self, record: HostRecord) -> bool:
        """Tell whether the known host serves; else forget it, unless only the lock can tell (a zombie)."""
        if self._coordinator.released(record):  # gone, its lock free: the standby's first question
            self._channel._forget_host(record)  # noqa: SLF001
            return False
        current = self._coordinator.read()
        if current == record and self._coordinator.serving(record):
            return True
        # handed over (its record is gone or replaced), dead, or exiting: its lock is free or about to be
        if current != record or self._coordinator.liveness(record) != "unknown":
            self._channel._forget_host(record)  # noqa: SLF001
        return False

    def _keep_hosting(self, server: Listener, record: HostRecord) -> None:
        """As host: a dead server thread restarts; losing the lock, record or address means stepping down."""
        server.restart_if_dead()
        if self._hosting_problem(server, record):
            self._channel._step_down(server, record, lambda: self._hosting_problem(server, record))  # noqa: SLF001

    def _hosting_problem(self, server: Listener, record: HostRecord) -> str:
        """Say what the host lost ("" for nothing): its lock, its published address, or its record."""
        problem = self._coordinator.holding_problem()
        if not problem and not server.still_published():
            problem = f"its socket file {server.address} was removed or replaced"
        return problem or self._coordinator.record_problem(record)

    def _report_stuck(self) -> None:
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
            return
        if self._stuck_reported or now - self._stuck_since < STUCK_WARNING_AFTER:
            return
        self._stuck_reported = True
        _LOGGER.warning(
            "channel %r: no live host for %.1f s but %s",
            self._channel.name,
            now - self._stuck_since,
            self._coordinator.stuck_report(),
        )
