"""Hosting: this process's terms as host, and its standby, from becoming host to stepping down.

``Hosting`` does what a process does once the election is its own: listen (the
transport's listener, served by ``server.Server``), publish the record, then the address
(clients must find a host term before they can reach it); answer "may I serve?"
(``may_serve``: not handing over, and the coordinator's ``fence``); check each monitor
tick that it still holds what makes it host, and step down if not; resign on close.
Where the backend has a standby, it stands by to host next, off every failover path.

Every method that changes the term runs under the connector's election lock.
Callbacks: ``on_elected`` run in the thread that won the election, ``on_demoted`` in
the one that gives hosting up (``close()``, or ``ipchannel-monitor:NAME`` stepping down).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Protocol

from .. import _hooks
from .._errors import ChannelError
from .server import IDLE_THREADS, READY_THREADS, Server

if TYPE_CHECKING:
    import socketserver
    from collections.abc import Callable

    from .._seams.base import Backend, StandbyPost
    from .._seams.record import HostRecord
    from .._wakeup import Wakeup

__all__ = ["Follow", "Hosting", "Term"]

_LOGGER = logging.getLogger("ipchannel")

#: A host term: the server and the record it was published as.
Term = tuple[Server, "HostRecord"]


class Follow(Protocol):
    """What hosting needs of the connector (``connect.Connector``): its locks, and to follow our term."""

    elect_lock: threading.Lock
    stopping: threading.Event

    @property
    def eligible(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def set_term(self, record: HostRecord | None) -> None: ...


class Hosting:
    """A process as host (at most one term at a time), and as the standby."""

    def __init__(  # noqa: PLR0913 - made in one place, by Channel
        self,
        name: str,
        backend: Backend,
        handler: type[socketserver.BaseRequestHandler],
        follow: Follow,
        wakeup: Wakeup,
        *,
        auth: bool,
    ) -> None:
        self._name, self._handler, self._follow, self._wakeup, self._auth = (
            name,
            handler,
            follow,
            wakeup,
            auth,
        )
        self._coordinator, self._transport = backend.coordinator, backend.transport
        self._standby_place = backend.standby
        self.elected_callbacks: list[Callable[[int], object]] = []
        self.demoted_callbacks: list[Callable[[int], object]] = []
        self.reset()

    def reset(self) -> None:
        """No term, no standby (also in a forked child, after ``abandon_after_fork``)."""
        self.term: Term | None = None
        self._resigning = False  # set when this process starts to give hosting up
        self._claimed: HostRecord | None = None  # the term whose claim we hold, until we release it
        self._standby: tuple[StandbyPost, Server] | None = None
        self._exit_noted = False  # logged once that the interpreter exits (no standby then)

    @property
    def is_host(self) -> bool:
        """True while this process hosts."""
        return self.term is not None

    @property
    def standing_by(self) -> bool:
        """True while this process stands by to host next."""
        return self._standby is not None

    def serving(self) -> int | None:
        """Return the generation of the term this process hosts while it may serve it, else None."""
        term = self.term
        return term[1].generation if term is not None and self.may_serve() else None

    def may_serve(self) -> bool:
        """Tell whether this process may answer as host: its term is on and the coordinator's fence holds.

        Asked before every answer (``RequestHost``), every TCP connection (the hello) and
        every job run, so a host whose claim lapsed (frozen, partitioned) answers nothing,
        even before it steps down; nor does a new host holding off after an engine reset.
        """
        term = self.term
        if term is None or self._resigning or self._follow.closed:  # closing: handing over already
            return False
        if self._coordinator.holding_off(term[1]):  # an engine reset: an earlier host may still serve
            return False
        if not self._coordinator.fence(term[1]):
            return True
        self._wakeup.send(b"!")  # step down now, not at the next tick
        return False

    def claim_problem(self) -> str:
        """Say why this process's claim can have lapsed ("" while it surely holds it).

        Unlike ``may_serve``, a host handing over still holds its claim (the lock, the key) until
        it releases it: ``run_on_host`` asks this of a run still going when its term ends.
        """
        record = self._claimed
        if record is None:
            return "it holds no claim"
        return self._coordinator.fence(record)

    # -- becoming host ---------------------------------------------------------------------------

    def become(self, previous: HostRecord | None) -> HostRecord:
        """We may host: listen, publish the record, then the address. Undo everything on failure."""
        self._resigning = False
        server: Server | None = None
        record: HostRecord | None = None
        standby, self._standby = self._standby, None
        try:
            server = standby[1] if standby is not None else self._start_server(READY_THREADS, deferred=True)
            record = self._coordinator.new_record(server.address, previous, auth=self._auth)
            record = self._coordinator.publish(record)
            self._set_term((server, record))  # before clients can reach it: they must find a host term
            server.publish(record)
            if standby is not None:
                waited = standby[0].promote(record, server.serve_connection)  # hosted from now on
                standby[0].close()  # the standby's place is free for the next one
                _LOGGER.debug("channel %r: %d client(s) waited for this standby to host", self._name, waited)
        except BaseException as exc:
            self._undo(server, record, standby)
            if isinstance(exc, OSError) and not isinstance(exc, ChannelError):
                where = self._coordinator.location
                raise ChannelError(f"channel {self._name!r}: cannot host in {where}: {exc}") from exc
            raise
        _LOGGER.info(
            "channel %r: pid %d elected host (generation %d, previous host pid %s)",
            self._name,
            record.pid,
            record.generation,
            previous.pid if previous else None,
        )
        return record

    def _undo(
        self, server: Server | None, record: HostRecord | None, standby: tuple[StandbyPost, Server] | None
    ) -> None:
        if self.term is not None:  # published our term, then failed to publish the address
            self._set_term(None)
        try:
            if standby is not None:
                standby[0].close()
        finally:
            if server is not None:
                server.stop()
            if record is not None:
                self._coordinator.retract(record)
            self._claimed = None
            self._coordinator.release()

    def _start_server(self, ready: int, *, deferred: bool = False) -> Server:
        listener = self._transport.listen(self.may_serve)
        try:
            server = Server(self._name, listener, self._handler, lambda: self._wakeup.send(b"s"))
            server.start(ready, deferred=deferred)
        except BaseException as exc:
            listener.close()
            if isinstance(exc, RuntimeError) and not threading.main_thread().is_alive():
                # Python 3.12 starts no thread once the main thread has ended: not an error of ours
                raise ChannelError(
                    f"channel {self._name!r}: cannot host: the interpreter is exiting"
                ) from exc
            raise
        return server

    def _set_term(self, term: Term | None) -> None:
        self.term = term
        if term is not None:
            self._claimed = term[1]
        self._follow.set_term(None if term is None else term[1])

    def elected(self, generation: int) -> None:
        """Run the ``on_elected`` callbacks (in the thread that won, outside the election lock)."""
        self._run(self.elected_callbacks, generation, "on_elected")

    def _run(self, callbacks: list[Callable[[int], object]], generation: int, kind: str) -> None:
        for callback in list(callbacks):
            try:
                callback(generation)
            except Exception:
                _LOGGER.exception("channel %r: %s callback %r raised", self._name, kind, callback)

    # -- while hosting -----------------------------------------------------------------------------

    def check(self, term: Term) -> None:
        """As host (the monitor, each tick): restart a dead server thread; step down if hosting was lost."""
        term[0].restart_if_dead()
        if self._problem(term):
            self._step_down(term)

    def _problem(self, term: Term) -> str:
        """Say what the host lost ("" for nothing): what the coordinator fences on, or its address."""
        server, record = term
        if problem := self._coordinator.fence(record, thorough=True):
            return problem
        return "" if server.still_published() else f"its socket file {server.address} was removed or replaced"

    def _step_down(self, term: Term) -> None:
        """Stop hosting if the problem, asked again under the election lock, is still there.

        Asked again here so a term being set up right now (its address not yet published)
        is not taken for a lost one.
        """
        with self._follow.elect_lock:
            if self.term is not term:
                return  # close() got there first
            problem = self._problem(term)
            if not problem:
                return
            _LOGGER.warning("channel %r: host pid %d steps down: %s", self._name, term[1].pid, problem)
            self._resigning = True  # before the record goes: a handler running now must not answer
            self._set_term(None)
            with contextlib.suppress(OSError):
                self._resign(term, fenced=bool(self._coordinator.fence(term[1])))

    def _resign(self, term: Term, *, fenced: bool = False) -> None:
        """Stop hosting so another process takes over at once (with the election lock held).

        ``fenced``: our claim already lapsed, so another host may be serving: every connection
        ends first, before anything that may wait on the engine.
        """
        server, record = term
        self._resigning = True
        if _hooks.pause is not None:
            _hooks.pause("channel.resigning", self._name)
        self._run(self.demoted_callbacks, record.generation, "on_demoted")
        if fenced:
            server.stop()
        # The record goes first: a client whose connection breaks from here on (closing the
        # listener resets the ones still waiting to be accepted) must not take it for a handler
        # that closed its connection while the host lives on.
        self._coordinator.retract(record)
        server.stop_listening()
        self._claimed = None
        self._coordinator.release()
        server.close_connections()
        _LOGGER.info(
            "channel %r: pid %d stopped hosting (generation %d)", self._name, record.pid, record.generation
        )

    def close(self) -> None:
        """Give hosting and the standby's place up (the channel closes)."""
        with self._follow.elect_lock:
            self._stop_standing_by()
            term = self.term
            if term is not None:
                self._set_term(None)
                self._resign(term)

    # -- the standby -------------------------------------------------------------------------------

    def keep_standby(self) -> None:
        """Stand by to host next if no process does (the monitor, each tick in a process that is not host).

        Off every failover path: the server, its handler threads and the side socket start here.
        """
        place = self._standby_place
        if place is None:
            return
        with self._follow.elect_lock:
            if self._follow.stopping.is_set() or self.term is not None:
                return
            if self._standby is not None:
                if not self._follow.eligible or not place.try_stand_by():
                    self._stop_standing_by()
                return
            if not self._follow.eligible or self._interpreter_exits() or not place.try_stand_by():
                return
            try:
                post = place.open(self._auth)  # first: a process listening without a side socket hosts
                try:
                    server = self._start_server(IDLE_THREADS)
                except BaseException:
                    post.close()
                    raise
            except (OSError, ChannelError) as exc:
                _LOGGER.warning("channel %r: cannot stand by to host next: %s", self._name, exc)
                return
            self._standby = (post, server)
        _LOGGER.debug("channel %r: pid %d stands by to host next", self._name, os.getpid())

    def _interpreter_exits(self) -> bool:
        """Tell whether the main thread has ended: a standby then would only be handed over again.

        Python 3.12+ starts no thread from then on (atexit handlers run first, the channel's
        ``close`` among them), so standing by would fail anyway.
        """
        if threading.main_thread().is_alive():
            return False
        if not self._exit_noted:
            self._exit_noted = True
            pid = os.getpid()
            _LOGGER.debug("channel %r: the main thread has ended: pid %d does not stand by", self._name, pid)
        return True

    def _stop_standing_by(self) -> None:
        """Stop standing by (with the election lock): waiting clients are reset and look elsewhere."""
        standby, self._standby = self._standby, None
        if standby is not None:
            try:
                standby[1].stop()
            finally:
                standby[0].close()

    def abandon_after_fork(self) -> None:
        """In a forked child: drop our copies of the parent's server and side socket (nothing shared)."""
        self._exit_noted = False
        if self.term is not None:
            self.term[0].abandon_after_fork()
        if self._standby is not None:
            self._standby[0].abandon_after_fork()
            self._standby[1].abandon_after_fork()
        if self._standby_place is not None:
            self._standby_place.after_fork()
        self.reset()
