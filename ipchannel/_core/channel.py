"""The public ``Channel``: state, the connect loop, hooks, fork reset and close.

Who hosts and where is the coordinator's business (``_coordinator``: the local
one is a flock, a JSON record and pid liveness); how to reach the host is the
transport's (``_transport``: the local one is a Unix socket). The monitor
thread's policy lives in ``_monitor``. Channel only sequences them: read the
record, connect, or try to become host (listen, publish the record, publish
the address); on the way out, retract the record before the listener closes.
Shared state lives under ``_state_lock``; ``_elect_lock`` lets one thread of
this process at a time take part in the election.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Literal, overload

from .. import _fork, _hooks
from .._auth import validate_authkey
from .._backends import open_backend
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, CoordinatorUnavailable
from .._local.lock import Backoff
from .._local.paths import validate_name
from .._remote.coordinator import LostClaim
from .._timing import Deadline, validate_timeout
from .monitor import Monitor
from .server import handler_class

if TYPE_CHECKING:
    import socket
    import socketserver
    import ssl
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from .._local.coordinator import Coordinator
    from .._local.standby import StandbyListener
    from .._local.unix import Listener, Transport
    from .._seams.record import HostRecord
    from .socket import ChannelSocket

__all__ = ["Channel", "open_channel"]

_LOGGER = logging.getLogger("ipchannel")

State = Literal["initiated", "connecting", "connected", "closed"]


class Channel:
    """One shared service among peer processes: one of them hosts it, all connect to it.

    Every process runs the same code::

        def handler(conn):                  # runs in a server thread of the host process
            conn.sendall(conn.recv(1024))

        with Channel("echo", handler) as channel:
            sock = channel.connect(timeout=5)
            sock.sendall(b"hi"); print(sock.recv(1024))

    :param name: 1-64 characters of letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``.
    :param handler: a callable ``handler(conn: socket.socket)``, called in a server thread of
        the host process for each connection (closed when it returns), or a
        ``socketserver.BaseRequestHandler`` subclass used as it is.
    :param runtime_dir: where the lock, host record and socket live; default ``IPCHANNEL_DIR``,
        else ``$XDG_RUNTIME_DIR/ipchannel``, else ``<tempdir>/ipchannel-<uid>``.
    :param auto_reconnect: follow the host across failover (see ``connect()``).
    :param may_host: False keeps this process out of elections: it only ever connects to a host
        another process runs, waiting (within its timeouts) while there is none. Settable later
        as the ``may_host`` attribute.
    :param authkey: if given (bytes, e.g. ``os.urandom(32)`` shared by your processes), every
        connection first proves in both directions that it knows the key (HMAC challenge-response,
        as ``multiprocessing.connection``); a process with another key, or none, gets
        ``AuthenticationError`` and the host never runs the handler for it. Required with a coordinator.
    :param coordinator: across machines, the engine that elects the host: ``"etcd://HOST:2379"``
        (several: ``"etcd://h1,h2,h3/PREFIX"``) or ``"redis://[:PASSWORD@]HOST:6379/DB"``
        (``rediss://`` for TLS). None reads ``IPCHANNEL_COORDINATOR``; unset, the channel is local.
    :param listen: with a coordinator, ``"HOST:PORT"`` this process listens on if it hosts
        (port 0: any free one); None reads ``IPCHANNEL_LISTEN``, else ``"0.0.0.0:0"``.
    :param advertise: the ``"HOST:PORT"`` others dial (port 0: the one bound); None reads
        ``IPCHANNEL_ADVERTISE``, else the listen address, or for ``0.0.0.0`` the address this
        machine reaches the coordinator from.
    :param ttl: seconds a host's claim outlives its last renewal (default 5, at least 1): the
        failover time after a crash. The host renews every ttl/3 and stops serving a margin before.
    :param ssl_context: TLS for the TCP transport: an ``ssl.SSLContext`` for both sides, or a
        pair ``(host_side, client_side)``; None is plain TCP (the authkey still applies).
    :raises ValueError: the name breaks the rule above; a coordinator without ``authkey``.
    :raises TypeError: the handler is neither accepted form.
    :raises RuntimeDirError: the runtime directory cannot be created or used safely.
    :raises CoordinatorURLError: the coordinator URL cannot be parsed or names an unknown engine.
    :raises MissingExtraError: the engine's client is not installed (``pip install 'ipchannel[etcd]'``).
    """

    #: Seconds between two checks of the host by the monitor thread.
    monitor_interval: float = 0.1

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        name: str,
        handler: Callable[[socket.socket], object] | type[socketserver.BaseRequestHandler],
        *,
        runtime_dir: str | os.PathLike[str] | None = None,
        auto_reconnect: bool = True,
        authkey: bytes | None = None,
        may_host: bool = True,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        _coordinator: Coordinator | None = None,
        _transport: Transport | None = None,
    ) -> None:
        self._name = validate_name(name)
        self._handler = handler_class(handler)
        self._authkey = validate_authkey(authkey)
        if not isinstance(auto_reconnect, bool):
            raise TypeError(f"auto_reconnect must be a bool, not {type(auto_reconnect).__name__}")
        if not isinstance(may_host, bool):
            raise TypeError(f"may_host must be a bool, not {type(may_host).__name__}")
        if _coordinator is None or _transport is None:
            _coordinator, _transport = open_backend(
                self._name,
                runtime_dir=runtime_dir,
                coordinator=coordinator,
                listen=listen,
                advertise=advertise,
                ttl=ttl,
                ssl_context=ssl_context,
                authkey=self._authkey,
            )
        self._coordinator, self._transport = _coordinator, _transport
        self.auto_reconnect = auto_reconnect
        self.may_host = may_host
        self._sockets: weakref.WeakSet[ChannelSocket] = weakref.WeakSet()
        self._last_generation = 0
        self._last_host_pid: int | None = None
        self._elected_callbacks: list[Callable[[int], object]] = []
        self._demoted_callbacks: list[Callable[[int], object]] = []
        self._reset_runtime_state("initiated")
        _fork.register(self)

    def _reset_runtime_state(self, state: State) -> None:
        self._state_lock = threading.Lock()
        self._elect_lock = threading.Lock()
        self._recovery_lock = threading.Lock()  # the one socket looking for the next host holds it
        self._stopping = threading.Event()
        self._state: State = state
        self._record: HostRecord | None = None  # the live host we know; ours while hosting
        self._server: Listener | None = None
        self._monitor: Monitor | None = None
        self._resigning = False  # set when this process starts to give hosting up
        self._standby: StandbyListener | None = None  # ready to host next (``_standby``)
        self._standby_record: HostRecord | None = None

    # -- public properties -------------------------------------------------------

    @property
    def name(self) -> str:
        """The channel name."""
        return self._name

    @property
    def runtime_dir(self) -> Path:
        """The directory holding this channel's local files (lock, host record and socket, locally)."""
        return self._coordinator.runtime_dir

    @property
    def state(self) -> State:
        """``"initiated"``, ``"connecting"`` (looking for a host), ``"connected"`` or ``"closed"``."""
        return self._state

    @property
    def connected(self) -> bool:
        """True while a live host is known (this process or another)."""
        return self._state == "connected"

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._state == "closed"

    @property
    def is_host(self) -> bool:
        """True while this process hosts the server."""
        return self._server is not None

    @property
    def host_pid(self) -> int | None:
        """Pid of the current host, or None while none is known."""
        record = self._record
        return None if record is None else record.pid

    @property
    def generation(self) -> int | None:
        """Generation of the current host (1 for the first, +1 per new host), or None."""
        record = self._record
        return None if record is None else record.generation

    # -- connect and close -----------------------------------------------------

    def connect(self, timeout: float | None = 5.0) -> ChannelSocket:
        """Return a new socket connected to the host, electing this process if there is none.

        The first call starts the election and the monitor thread. With
        ``auto_reconnect``, the socket follows the host across failover:
        ``send``/``sendall`` on a dead host's connection are delivered to the new
        host; a ``recv`` waiting on it raises ``HostChanged`` once connected to the new host.

        :param timeout: seconds to wait for a host, here and when reconnecting later; None waits forever.
        :raises ChannelTimeout: no host could be reached in time.
        :raises ChannelClosed: the channel was closed.
        """
        deadline = Deadline(validate_timeout(timeout))
        sock, record = self._open_connection(deadline)
        sock._attach(self, record, deadline.timeout)  # noqa: SLF001
        self._sockets.add(sock)
        return sock

    def join(self, timeout: float | None = 5.0) -> bool:
        """Take part in the election without opening a connection; return True if this process hosts.

        For processes that should be able to host from start-up (a scheduler, a
        replica) but have nothing to send yet. Like ``connect()``, it starts the
        monitor thread, which keeps this process in every later election.

        :raises ChannelTimeout: no live host could be found or become one within ``timeout``.
        """
        deadline = Deadline(validate_timeout(timeout))
        self._start()
        backoff = Backoff(deadline, self._stopping.wait)
        while True:
            record = self._elect(None, verify=True)  # the coordinator checks the host: no connection
            if record is not None:
                self._adopt(record)
                return self.is_host
            if not backoff.sleep():
                if self._stopping.is_set():
                    raise ChannelClosed(self._name)
                raise self._timeout_error(deadline)

    def on_elected(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` each time this process becomes host (once per term).

        It runs in the thread that won the election (a ``connect()`` or ``join()``
        caller, a thread whose socket was reconnecting, or ``ipchannel-monitor:NAME``),
        after the host is published. It must not block: start a thread for long work.
        An exception it raises is logged. Returns ``callback``, so it works as a decorator.
        """
        self._elected_callbacks.append(_check_callback(callback))
        return callback

    def on_demoted(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` when this process stops hosting: ``close()``, exit, stepping down.

        It runs in the thread that closes the channel (or ``ipchannel-monitor:NAME``
        when the host steps down), *before* the lock is released and the server
        stops, so work it stops cannot overlap the next host's. It must not block
        for long nor call into this channel. A process killed outright runs nothing.
        """
        self._demoted_callbacks.append(_check_callback(callback))
        return callback

    def _run_callbacks(self, callbacks: list[Callable[[int], object]], generation: int, kind: str) -> None:
        for callback in list(callbacks):
            try:
                callback(generation)
            except Exception:
                _LOGGER.exception("channel %r: %s callback %r raised", self._name, kind, callback)

    def close(self) -> None:
        """Close the channel: stop the monitor, hand hosting over, close this process's sockets.

        In the host, the server stops, the record and socket file are removed
        and the lock released, so another process takes over at once. Idempotent.
        """
        with self._state_lock:
            if self._state == "closed":
                return
            self._state = "closed"
            monitor, self._monitor = self._monitor, None
        self._stopping.set()
        if monitor is not None:
            monitor.join()
        with self._elect_lock:
            self._stop_standing_by()
            server, record = self._server, self._record
            self._server = self._record = None
            if server is not None and record is not None:
                self._resign(server, record)
            self._transport.tidy()
        self._coordinator.close()
        for sock in list(self._sockets):
            sock._close_for_channel()  # noqa: SLF001
        atexit.unregister(self.close)

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        host = "" if self._record is None else f" host_pid={self._record.pid} gen={self._record.generation}"
        role = " (host)" if self.is_host else ""
        return f"<Channel {self._name!r} {self._state}{role}{host}>"

    # -- connection and election -------------------------------------------------

    def _start(self) -> None:
        with self._state_lock:
            if self._state == "closed":
                raise ChannelClosed(self._name)
            if self._monitor is not None:
                return
            if self._state == "initiated":
                self._state = "connecting"
            self._monitor = Monitor(self, self._coordinator, self.monitor_interval, self._stopping)
            self._monitor.start()
        atexit.register(self.close)

    def _open_connection(
        self, deadline: Deadline, avoid: HostRecord | None = None
    ) -> tuple[ChannelSocket, HostRecord]:
        """Connect to the live host, electing one if needed; ``avoid`` is a host known to be gone."""
        self._start()
        known = self._record
        if known is not None and known != avoid:  # the warm path: a live host is known
            sock = self._transport.connect(known, self._authkey)
            if sock is not None:
                return sock, known
        if avoid is not None and (found := self._via_standby(avoid, deadline)) is not None:
            return found
        return self._elect_and_connect(deadline, avoid)

    def _elect_and_connect(
        self, deadline: Deadline, avoid: HostRecord | None
    ) -> tuple[ChannelSocket, HostRecord]:
        """Run the election loop of ``_open_connection``: until connected to a live host, or the deadline."""
        # A lost lock race means another process is starting to host: its publication (watched every
        # 0.5 ms) wakes us, so the timer only matters if it died too; no need to retry the lock soon.
        backoff = Backoff(deadline, self._stopping.wait, first=Backoff.FIRST if avoid is None else 0.005)
        while True:
            changed = self._coordinator.watch(avoid)
            record = self._record
            if record is None or record == avoid:
                record = self._elect(avoid, verify=False)
            if record is not None and record != avoid:
                sock = self._transport.connect(record, self._authkey)
                if sock is not None:
                    self._adopt(record)
                    return sock, record
                if not self._recorded_and_serving(record):
                    avoid = record
                    self._forget_host(record)
                    continue  # straight to the lock: the host is gone, or handed over and lives on
            if not backoff.sleep(changed=changed):
                if self._stopping.is_set():
                    raise ChannelClosed(self._name)
                raise self._timeout_error(deadline)

    def _via_standby(self, dead: HostRecord, deadline: Deadline) -> tuple[ChannelSocket, HostRecord] | None:
        """After the host ``dead`` is gone: wait at the standby's side socket until it hosts (or give up)."""
        standby = self._coordinator.standby()
        if standby is None or standby.pid == dead.pid or self._coordinator.serving(dead):
            return None  # no standby, or a handover: the host lives on, nothing tells the standby

        def another_host() -> bool:
            current = self._coordinator.read()
            return current is not None and current != dead and current.pid != standby.pid

        found = self._transport.connect_standby(standby, self._authkey, deadline, another_host)
        if found is not None:
            self._adopt(found[1])  # the record it published before it said hello
        return found

    def _recorded_and_serving(self, record: HostRecord) -> bool:
        """Tell whether ``record`` is still current and its host serving (asked at the source)."""
        return self._coordinator.confirm(record)

    def _elect(self, avoid: HostRecord | None, *, verify: bool) -> HostRecord | None:
        """One election step: the recorded host if it may be alive, else try to become host.

        ``verify`` asks the coordinator whether the recorded host serves (the
        monitor); without it, connecting is the check (``connect()``: cheaper).
        """
        with self._elect_lock:
            if self._stopping.is_set():
                raise ChannelClosed(self._name)
            if self._server is not None:
                return self._record
            record = self._coordinator.read()
            if record is not None:
                self._last_host_pid = record.pid
                if record != avoid and (not verify or self._coordinator.serving(record)):
                    return record
            if (
                not self.may_host
                or not self._coordinator.may_campaign(record)
                or not self._coordinator.try_acquire()
            ):
                return None
            try:
                elected = self._become_host(record)
            except LostClaim as exc:
                _LOGGER.debug("channel %r: lost the claim: %s", self._name, exc)
                return None
        self._run_callbacks(self._elected_callbacks, elected.generation, "on_elected")
        return elected

    def _become_host(self, previous: HostRecord | None) -> HostRecord:
        """We may host: listen, publish the record, then the address. Undo everything on failure."""
        self._resigning = False
        server: Listener | None = None
        record: HostRecord | None = None
        standby, self._standby = self._standby, None
        try:
            self._coordinator.prepare()  # the runtime directory may have been removed since
            if standby is not None:
                server = standby.listener  # listening, its handler threads ready
            else:
                server = self._transport.listen(self._handler, self._authkey, lambda: self._may_serve)
            record = self._coordinator.new_record(
                server.address, previous, self._last_generation, auth=self._authkey is not None
            )
            record = self._coordinator.publish(record)
            self._set_hosting(server, record)  # before clients can reach it: they must find a host term
            server.publish(record)
            if standby is not None:
                waited = standby.promote(record)  # the clients waiting on its side socket: hosted from now on
                standby_record, self._standby_record = self._standby_record, None
                self._coordinator.stop_standing_by(standby_record)
                _LOGGER.debug("channel %r: %d client(s) waited for this standby to host", self._name, waited)
        except BaseException as exc:
            if self._server is not None:  # published our term, then failed to publish the address
                self._set_hosting(None, None)
            try:
                if standby is not None:
                    self._standby = standby
                    self._stop_standing_by()
            finally:
                self._undo_hosting(server, record)
            if isinstance(exc, OSError) and not isinstance(exc, ChannelError):
                where = self._coordinator.location
                raise ChannelError(f"channel {self._name!r}: cannot host in {where}: {exc}") from exc
            raise
        self._last_generation = record.generation
        self._last_host_pid = record.pid
        _LOGGER.info(
            "channel %r: pid %d elected host (generation %d, previous host pid %s)",
            self._name,
            record.pid,
            record.generation,
            previous.pid if previous else None,
        )
        return record

    @property
    def _standing_by(self) -> bool:
        """True while this process stands by to host next."""
        return self._standby is not None

    def _keep_standby(self) -> None:
        """Stand by to host next if no process does (the monitor, each tick in a process that is not host).

        Off every failover path: the server, its handler threads and the side socket start here.
        """
        with self._elect_lock:
            if self._stopping.is_set() or self._server is not None:
                return
            if self._standby is not None:
                if not self.may_host or not self._coordinator.stand_by():
                    self._stop_standing_by()
                return
            if not self.may_host or not self._coordinator.stand_by():
                return
            try:
                self._coordinator.prepare()
                standby = self._transport.stand_by(self._handler, self._authkey, lambda: self._may_serve)
                if standby is None:
                    self._coordinator.stop_standing_by(None)
                    return
                record = self._coordinator.new_record(
                    standby.address, None, self._last_generation, auth=self._authkey is not None
                )
                self._standby, self._standby_record = standby, record
                self._coordinator.publish_standby(record)
            except (OSError, ChannelError) as exc:
                _LOGGER.warning("channel %r: cannot stand by to host next: %s", self._name, exc)
                self._stop_standing_by()
                return
        _LOGGER.debug("channel %r: pid %d stands by to host next", self._name, os.getpid())

    def _stop_standing_by(self) -> None:
        """Stop standing by (call with ``_elect_lock``): waiting clients are reset and look elsewhere."""
        standby, self._standby = self._standby, None
        record, self._standby_record = self._standby_record, None
        try:
            if standby is not None:
                standby.close()
        finally:
            self._coordinator.stop_standing_by(record)

    def _set_hosting(self, server: Listener | None, record: HostRecord | None) -> None:
        with self._state_lock:
            self._server, self._record = server, record
            if self._state != "closed":  # a close() waiting for the election must stay closed
                self._state = "connected" if server is not None else "connecting"

    def _undo_hosting(self, server: Listener | None, record: HostRecord | None) -> None:
        if server is not None:
            server.stop_listening()
        if record is not None:
            self._coordinator.retract(record)
        self._coordinator.release()

    def _adopt(self, record: HostRecord) -> None:
        with self._state_lock:
            if self._state == "closed":
                return
            changed = record != self._record
            self._record = record
            self._state = "connected"
        if changed:
            self._last_generation = max(self._last_generation, record.generation)
            self._last_host_pid = record.pid
            monitor = self._monitor
            if monitor is not None:
                monitor.rewatch()
        if changed and record.pid != os.getpid():
            _LOGGER.info(
                "channel %r: connected to host pid %d (generation %d)",
                self._name,
                record.pid,
                record.generation,
            )

    def _forget_host(self, record: HostRecord) -> None:
        with self._state_lock:
            if self._record != record or self._server is not None:
                return
            self._record = None
            if self._state == "connected":
                self._state = "connecting"
        _LOGGER.info(
            "channel %r: host pid %d (generation %d) lost", self._name, record.pid, record.generation
        )
        for sock in list(self._sockets):  # a host that lost its claim may still hold them open
            sock._kick(record)  # noqa: SLF001

    def _still_serving(self, record: HostRecord) -> bool:
        """Tell a socket that saw EOF whether the host it talked to is still serving."""
        if self._server is not None and self._record == record:
            return True
        if self._recorded_and_serving(record) and self._transport.reachable(record):
            return True
        self._forget_host(record)
        return False

    def _moved_on_from(self, record: HostRecord) -> bool:
        """Tell a socket that saw EOF whether this channel already follows a newer host than ``record``."""
        known = self._record
        return known is not None and known.generation > record.generation

    def _timeout_error(self, deadline: Deadline, detail: str = "") -> ChannelTimeout:
        """Return the error for a wait on this channel that ran out (the request layer's too).

        An engine that does not answer is named as the reason: ``CoordinatorUnavailable``.
        """
        if problem := self._coordinator.unreachable():
            return CoordinatorUnavailable(self._name, self._coordinator.location, deadline.elapsed(), problem)
        return ChannelTimeout(
            self._name,
            self._coordinator.location,
            deadline.elapsed(),
            self._last_host_pid,
            detail or self._coordinator.stuck_detail(),
        )

    def _recorded_host(self) -> Literal["none", "dead", "maybe alive"]:
        """Say what the coordinator knows of the recorded host, without connecting (SharedDict's grace)."""
        record = self._coordinator.read()
        if record is None:
            return "none"
        return "dead" if self._coordinator.liveness(record) == "dead" else "maybe alive"

    # -- stepping down, graceful handover and fork -----------------------------------

    def _step_down(self, server: Listener, record: HostRecord, problem_of: Callable[[], str]) -> None:
        """Stop hosting if ``problem_of()``, asked again under the election lock, still finds one.

        The monitor found that we lost what makes us host. Asked again here so a
        term being set up right now (its address not yet published) is not taken for a lost one.
        """
        with self._elect_lock:
            if self._server is not server:
                return  # close() got there first
            problem = problem_of()
            if not problem:
                return
            _LOGGER.warning("channel %r: host pid %d steps down: %s", self._name, record.pid, problem)
            self._resigning = True  # before the record goes: a handler running now must not answer
            with self._state_lock:
                self._server = self._record = None
                if self._state == "connected":
                    self._state = "connecting"
            with contextlib.suppress(OSError):
                self._resign(server, record, fenced=not self._coordinator.claim_valid())

    @property
    def _may_serve(self) -> bool:
        """True while this process may answer as host: not handing over, and its claim provably valid.

        Asked before every answer (``RequestHost``) and every TCP connection (the hello), so a
        host whose claim lapsed (frozen, partitioned) answers nothing, even before it steps down.
        """
        if self._handing_over:
            return False
        if self._coordinator.claim_valid():
            return True
        monitor = self._monitor
        if monitor is not None and self._server is not None:
            monitor.poke()  # step down now, not at the next tick
        return False

    @property
    def _handing_over(self) -> bool:
        """True once this process began to give hosting up (``close()`` or stepping down).

        A handler still running then must answer nothing: its caller sees the connection
        end after the record is gone, and sends the request again to the next host.
        """
        return self._resigning or self._state == "closed"

    def _resign(self, server: Listener, record: HostRecord, *, fenced: bool = False) -> None:
        """Stop hosting so another process takes over at once (called with ``_elect_lock`` held).

        ``fenced``: our claim already lapsed, so another host may be serving: every connection
        ends first, before anything that may wait on the engine.
        """
        self._resigning = True
        if _hooks.pause is not None:
            _hooks.pause("channel.resigning", self._name)
        self._run_callbacks(self._demoted_callbacks, record.generation, "on_demoted")
        if fenced:
            server.stop_listening()
            server.close_connections()
        # The record goes first: a client whose connection breaks from here on (closing the
        # listener resets the ones still waiting to be accepted) must not take it for a handler
        # that closed its connection while the host lives on.
        self._coordinator.retract(record)
        server.stop_listening()
        self._coordinator.release()
        server.close_connections()
        _LOGGER.info(
            "channel %r: pid %d stopped hosting (generation %d)", self._name, record.pid, record.generation
        )

    def _reset_after_fork(self) -> None:
        """In a forked child (single-threaded, no locks taken): forget everything owned by the parent."""
        if self._server is not None:
            self._server.abandon_after_fork()
        if self._monitor is not None:
            self._monitor.abandon_after_fork()
        if self._standby is not None:
            self._standby.abandon_after_fork()
        self._coordinator.after_fork()
        for sock in list(self._sockets):
            sock._detach_after_fork()  # noqa: SLF001
        closed = self._state == "closed"
        self._reset_runtime_state("closed" if closed else "initiated")
        if closed:
            self._stopping.set()
        atexit.unregister(self.close)


def _check_callback(callback: Callable[[int], object]) -> Callable[[int], object]:
    if not callable(callback):
        kind = type(callback).__name__
        raise TypeError(f"callback must be callable with the generation number, not {kind}")
    return callback


@overload
def open_channel(
    handler: Callable[[socket.socket], object] | type[socketserver.BaseRequestHandler],
    /,
    *,
    runtime_dir: str | os.PathLike[str] | None = None,
    auto_reconnect: bool = True,
) -> Channel: ...


@overload
def open_channel(
    name: str,
    handler: Callable[[socket.socket], object] | type[socketserver.BaseRequestHandler],
    /,
    *,
    runtime_dir: str | os.PathLike[str] | None = None,
    auto_reconnect: bool = True,
) -> Channel: ...


def open_channel(
    name_or_handler: object,
    handler: object = None,
    /,
    *,
    runtime_dir: str | os.PathLike[str] | None = None,
    auto_reconnect: bool = True,
) -> Channel:
    """Return ``Channel(name, handler, ...)``; the name defaults to ``"ipchannel"``.

    ``open_channel(handler)`` or ``open_channel(name, handler)``.
    """
    if handler is None:
        name, handler = "ipchannel", name_or_handler
    else:
        name = name_or_handler  # type: ignore[assignment]
    return Channel(name, handler, runtime_dir=runtime_dir, auto_reconnect=auto_reconnect)  # type: ignore[arg-type]
