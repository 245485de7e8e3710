"""Connecting: finding the host (electing one if needed), following it, recovering a lost connection.

``Connector`` keeps what this process knows of the host (the record it follows, the channel's phase)
and opens connections to it:

- ``open``: the known host (the warm path); else, when the host just died, the standby's side
  socket (``Standby.wait``); else the election loop: one election step (``elect``: the recorded
  host if it serves, else try to become host, ``Hosting.become``), connect, back off until the
  coordinator says something changed;
- ``recover``: a socket's connection ended. Is its host still serving (``assess``, asked at the
  source)? Then its handler closed it. Else forget it and ``open`` the next one; one socket of the
  channel at a time, the others then take the warm path;
- ``still_there``: the monitor's look at the known host.

Whether a host serves is the coordinator's to say (``Coordinator.assess``), nowhere here.
Threads: any caller's (``connect``, ``join``, a socket's read or write) and the monitor's.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Literal, Protocol

from .._errors import ChannelClosed, ChannelError, ChannelTimeout, CoordinatorUnavailable
from .._seams.base import LostClaim, plain_socket
from .._timing import Backoff, Deadline
from .socket import ChannelSocket, socket_maker
from .sockets import Sockets
from .waits import ElectionWaits

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._seams.base import Backend, Connection, Coordinator, HostState, SocketMaker
    from .._seams.record import HostRecord
    from .._wakeup import Wakeup

__all__ = ["Campaign", "Connector", "Phase"]

_LOGGER = logging.getLogger("ipchannel")
_GATE_WAIT = 0.25  # longest a socket waits for another to find the next host before looking itself
_AVOID_RECHECK = 0.5  # seconds between two looks at a host avoided as gone, while no other is found

Phase = Literal["initiated", "connecting", "connected", "closed"]


class Campaign(Protocol):
    """What the election step needs of this process's hosting (``term.Hosting``)."""

    def become(self, previous: HostRecord | None) -> HostRecord:
        """Become host (the right to is ours): listen, publish; LostClaim if an engine says no."""

    def elected(self, generation: int) -> None:
        """Run the ``on_elected`` callbacks (outside the election lock)."""


class Connector:
    """What this process knows of the host, and every connection it opens to it."""

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        name: str,
        backend: Backend,
        wakeup: Wakeup,
        start: Callable[[], None],
        *,
        auto_reconnect: bool,
        may_host: bool,
    ) -> None:
        self._name, self._wakeup, self._start = name, wakeup, start
        self._coordinator, self._transport = backend.coordinator, backend.transport
        self._standby, self._election_notices = backend.standby, backend.election_notices
        self.auto_reconnect, self.may_host = auto_reconnect, may_host
        #: asked before campaigning or standing by: False keeps this process out for now (SharedDict)
        self.campaign_gate: Callable[[], bool] | None = None
        self.hosting: Campaign | None = None  # set once, right after construction
        self.sockets = Sockets(name)
        self.last_host_pid: int | None = None
        self.reset("initiated")

    @property
    def eligible(self) -> bool:
        """Tell whether this process may campaign or stand by now: ``may_host``, then the gate."""
        return self.may_host and (self.campaign_gate is None or self.campaign_gate())

    def reset(self, phase: Phase) -> None:
        """Start afresh in ``phase`` (also in a forked child: no lock a lost thread held, no host known)."""
        self.state_lock = threading.Lock()
        self.elect_lock = threading.Lock()  # one thread of this process at a time takes part in the election
        self._recovery_lock = threading.Lock()  # held by the one socket looking for the next host
        self.stopping = threading.Event()
        self.phase: Phase = phase
        self.record: HostRecord | None = None  # the live host we know; ours while hosting
        self._own: HostRecord | None = None  # our own term's record, while this process hosts
        self._started = False  # the channel's start hook ran (the monitor thread runs)

    def close(self) -> None:
        """Forget the host and close every socket this channel made (a blocked call raises): it closed."""
        with self.state_lock:
            self.record = None
        self.sockets.tell("close")

    def after_fork(self) -> None:
        """In a forked child: sockets reconnect on first use; nothing of the parent's host is known."""
        self.sockets.tell("fork")
        closed = self.phase == "closed"
        self.reset("closed" if closed else "initiated")
        if closed:
            self.stopping.set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self.phase == "closed"

    @property
    def _hosting(self) -> Campaign:
        assert self.hosting is not None
        return self.hosting

    # -- connect and join ---------------------------------------------------------------------

    def connect(self, timeout: float | None) -> ChannelSocket:
        """Return a new socket connected to the host (``Channel.connect``): built by the transport as ours."""
        known, connection = self.record, None
        if known is not None and self._started and self.phase != "closed":  # the warm path, first
            connection = self._transport.connect(known, socket_maker(self, known, timeout))
        if connection is None:
            connection, _record = self.open(
                Deadline(timeout), make=functools.partial(socket_maker, self, timeout=timeout)
            )
        sock = connection[0]
        assert isinstance(sock, ChannelSocket)  # built by the transport with our maker: never a copy
        self.sockets.add(sock)  # ChannelClosed if it closed meanwhile, on another thread
        return sock

    def join(self, deadline: Deadline) -> None:
        """Take part in the election until a live host is known (``Channel.join``)."""
        self._ensure_started()
        backoff = Backoff(deadline, self.stopping.wait)
        while True:
            record = self.elect(None, verify=True)  # the coordinator checks the host: no connection
            if record is not None:
                self.adopt(record)
                return
            if not backoff.sleep():
                if self.stopping.is_set():
                    raise ChannelClosed(self._name)
                raise self.timeout_error(deadline)

    def open(
        self,
        deadline: Deadline,
        avoid: HostRecord | None = None,
        dead: HostState | None = None,
        make: Callable[[HostRecord], SocketMaker] | None = None,
    ) -> tuple[Connection, HostRecord]:
        """Connect to the live host, electing one if needed; ``avoid`` is a host known to be gone.

        ``make(record)``: what builds the socket of a connection to ``record`` (a new
        ChannelSocket); without it, a plain one, whose descriptor a socket that lost its host takes over.
        """
        if not self._started or self.phase == "closed":
            self._ensure_started()
        known = self.record
        if known is not None and known != avoid:  # the warm path: a live host is known
            connection = self._transport.connect(known, plain_socket if make is None else make(known))
            if connection is not None:
                return connection, known
        if avoid is not None and (found := self._via_standby(avoid, dead, deadline)) is not None:
            return found
        return self._elect_and_connect(deadline, avoid, make)

    def _ensure_started(self) -> None:
        """Run the channel's start hook on first use (it raises ChannelClosed once closed)."""
        if self.phase == "closed":
            raise ChannelClosed(self._name)
        if not self._started:
            self._start()
            self._started = True

    def _elect_and_connect(
        self, deadline: Deadline, avoid: HostRecord | None, make: Callable[[HostRecord], SocketMaker] | None
    ) -> tuple[Connection, HostRecord]:
        """Run the election loop of ``open``: until connected to a live host, or the deadline."""
        # A lost lock race means another process is starting to host: its publication (a notice, or
        # looked at every 0.5 ms) wakes us, so the timer only matters if it died too: no quick retry.
        backoff = Backoff(deadline, self.stopping.wait, first=Backoff.FIRST if avoid is None else 0.005)
        failure, checked = "", time.monotonic()
        with ElectionWaits(self._election_notices) as waits:
            while True:
                changed = self._coordinator.watch(avoid)
                record = self.record
                if avoid is not None and time.monotonic() - checked > _AVOID_RECHECK:
                    checked, avoid = time.monotonic(), _unless_serving(self._coordinator, avoid)
                if record is None or record == avoid:
                    record, failure = _elect(self, avoid, failure, for_a_socket=make is None)
                if record is not None and record != avoid:
                    found = self._transport.connect(record, plain_socket if make is None else make(record))
                    if found is not None:
                        self.adopt(record)
                        return found, record
                    if not (state := self._coordinator.assess(record, after="refused")).serving:
                        avoid = _avoided(record, state)
                        self.forget(record)
                        continue  # straight to the lock: the host is gone, or handed over and lives on
                if not backoff.sleep(changed=changed, events=waits.events(avoid)):
                    if self.stopping.is_set():
                        raise ChannelClosed(self._name)
                    raise self.timeout_error(deadline, failure)

    def _via_standby(
        self, dead: HostRecord, state: HostState | None, deadline: Deadline
    ) -> tuple[Connection, HostRecord] | None:
        """After the host ``dead`` is gone: wait at the standby's side socket until it hosts (or give up)."""
        if self._standby is None or self._another_host(dead) or (standby := self._standby.find(dead)) is None:
            return None  # no standby, or a host is recorded already (the standby, faster): the usual way
        if (state or self._coordinator.assess(dead)).lives_on:
            return None  # a handover: the host lives on, and nothing tells the standby

        def another_host() -> bool:
            return self._another_host(dead, but=standby.pid)

        found = self._standby.wait(standby, deadline, another_host)
        if found is not None:
            self.adopt(found[1])  # the record it published before it said hello
        return found

    def _another_host(self, dead: HostRecord, but: int | None = None) -> bool:
        """Tell whether a host other than ``dead`` (and than pid ``but``) is recorded now."""
        current = self._coordinator.read()
        return current is not None and current != dead and current.pid != but

    # -- the election step ------------------------------------------------------------------------

    def elect(self, avoid: HostRecord | None, *, verify: bool) -> HostRecord | None:
        """One election step: the recorded host if it may serve, else try to become host.

        ``verify`` asks the coordinator whether the recorded host serves (the monitor,
        ``join``); without it, connecting is the check (``open``: cheaper).
        """
        with self.elect_lock:
            if self.stopping.is_set():
                raise ChannelClosed(self._name)
            if self._own is not None:
                return self.record
            record = self._coordinator.read()
            if record is not None:
                self.last_host_pid = record.pid
                if record != avoid and (not verify or self._coordinator.assess(record).serving):
                    return record
            if not self._may_campaign(record) or not self._coordinator.try_acquire():
                return None
            try:
                elected = self._hosting.become(record)
            except LostClaim as exc:
                _LOGGER.debug("channel %r: lost the claim: %s", self._name, exc)
                return None
        self._hosting.elected(elected.generation)
        return elected

    def _may_campaign(self, recorded: HostRecord | None) -> bool:
        """Tell whether to try for the lock now: allowed to host, and no live standby to leave it to."""
        return self.eligible and (self._standby is None or not self._standby.defer(recorded))

    # -- following the host ------------------------------------------------------------------------

    def set_term(self, record: HostRecord | None) -> None:
        """Follow this process's own term: begun (``record``) or ended (None), told by ``Hosting``."""
        with self.state_lock:
            self.record = self._own = record
            if self.phase != "closed":  # a close() waiting for the election must stay closed
                self.phase = "connected" if record is not None else "connecting"
        if record is not None:
            self.last_host_pid = record.pid

    def adopt(self, record: HostRecord) -> None:
        """Follow ``record``'s host from now on."""
        with self.state_lock:
            if self.phase == "closed":
                return
            changed = record != self.record
            self.record = record
            self.phase = "connected"
        if not changed:
            return
        self.last_host_pid = record.pid
        self._wakeup.send(b"w", urgent=False)  # the monitor arms its exit notice now (or looks soon anyway)
        if record.pid != os.getpid():
            _LOGGER.info(
                "channel %r: connected to host pid %d (generation %d)",
                self._name,
                record.pid,
                record.generation,
            )

    def forget(self, record: HostRecord) -> None:
        """Stop following ``record``'s host (gone, or no longer the host); its connections are ended."""
        with self.state_lock:
            if self.record != record or self._own is not None:
                return
            self.record = None
            if self.phase == "connected":
                self.phase = "connecting"
        _LOGGER.info(
            "channel %r: host pid %d (generation %d) lost", self._name, record.pid, record.generation
        )
        self.sockets.tell("kick", record)  # a host that lost its claim may still hold them open

    def still_there(self, record: HostRecord) -> bool:
        """Tell whether the known host serves (the monitor); else forget it, unless its state is unknown."""
        state = self._coordinator.assess(record)
        if not state.serving and state.forget:
            self.forget(record)
        return state.serving

    # -- recovery (the sockets' owner) ---------------------------------------------------------------

    def recover(self, old: HostRecord | None, timeout: float | None) -> tuple[Connection, HostRecord] | None:
        """After a socket's connection to ``old`` ended: one to the next host, or None if ``old`` serves on.

        A host's death ends every connection to it at once. One socket of the channel at a time
        finds the next host; the others then connect to it straight away, instead of all asking
        the coordinator together: a herd of threads doing that holds the GIL for milliseconds.
        """
        gated = self._recovery_lock.acquire(timeout=_GATE_WAIT)
        try:
            state = None
            known = self.record
            if old is not None and (known is None or known.generation <= old.generation):
                if known == old and self._own is not None:
                    return None  # our own term: the handler closed it
                state = self._coordinator.assess(old, after="eof")
                if state.serving:
                    return None
                if state.forget:
                    self.forget(old)
            return self.open(Deadline(timeout), avoid=_avoided(old, state), dead=state)
        finally:
            if gated:
                self._recovery_lock.release()

    def reopen(self, timeout: float | None) -> tuple[Connection, HostRecord]:
        """Return a new connection to the live host, for a socket whose own is gone but not its host."""
        return self.open(Deadline(timeout))

    def timeout_error(self, deadline: Deadline, detail: str = "") -> ChannelTimeout:
        """Return the error for a wait that ran out (the layers above too); a silent engine is named."""
        coordinator, elapsed = self._coordinator, deadline.elapsed()
        if problem := coordinator.unreachable():
            return CoordinatorUnavailable(self._name, coordinator.location, elapsed, problem)
        blocker = detail or coordinator.blocker()
        return ChannelTimeout(self._name, coordinator.location, elapsed, self.last_host_pid, blocker)


def _elect(
    connector: Connector, avoid: HostRecord | None, failure: str, *, for_a_socket: bool
) -> tuple[HostRecord | None, str]:
    """Run one election step of ``open``; return its record and why this process failed to host ("").

    ``connect()`` raises that failure at once, saying why this process cannot host. For a socket
    that lost its host (``open`` without ``make``) it is retried within the socket's deadline: its
    reader may have none (a subscription), and the next try, or another process, may well host.
    """
    try:
        return connector.elect(avoid, verify=False), ""
    except ChannelError as exc:
        if not for_a_socket or isinstance(exc, ChannelClosed):
            raise
        # the same failure again, or an interpreter that exits (Python 3.12 starts no thread): no news
        repeated = str(exc) == failure or not threading.main_thread().is_alive()
        _LOGGER.log(logging.DEBUG if repeated else logging.WARNING, "%s; trying again", exc)
        return None, str(exc)


def _unless_serving(coordinator: Coordinator, avoid: HostRecord) -> HostRecord | None:
    """Return ``avoid``, unless it serves after all: its probe failed across a partition that healed.

    While it holds its claim nobody else may host: waiting for another would last for ever.
    """
    return None if coordinator.assess(avoid).serving else avoid


def _avoided(old: HostRecord | None, state: HostState | None) -> HostRecord | None:
    """Return the host the next connection must not go to: ``old``, unless it lives on (``state``).

    A dying host's listener can outlive its connections for a moment; a host that lives on
    names itself again only if its record is rewritten, by it, still the lock holder: it serves.
    """
    return None if state is not None and state.lives_on else old
