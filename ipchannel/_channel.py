"""The public ``Channel``: state, ``connect()``, ``close()``, fork and exit handling.

It ties the parts together: names and paths (``_paths``), the election lock
(``_election``), the host record (``_hostrecord``), the server (``_server``),
the monitor thread (``_monitor``) and the sockets it hands out (``_client``).
Shared state lives under ``_state_lock``; ``_elect_lock`` lets one thread of
this process at a time take part in the election.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING, Literal, overload

from . import _fork, _hooks, _platform
from ._auth import client_handshake, validate_authkey
from ._client import ChannelSocket
from ._election import Backoff, Deadline, HostLock, validate_timeout
from ._errors import AuthenticationError, ChannelClosed, ChannelError, ChannelTimeout
from ._hostrecord import HostRecord, own_create_time, read_record, remove_record, write_record
from ._monitor import Monitor
from ._paths import ChannelPaths, ensure_runtime_dir, resolve_runtime_dir, validate_name
from ._server import HostedServer, handler_class

if TYPE_CHECKING:
    import socketserver
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

__all__ = ["Channel", "open_channel"]

_LOGGER = logging.getLogger("ipchannel")

State = Literal["initiated", "connecting", "connected", "closed"]

_STUCK_WARNING_AFTER = 2.0  # seconds a dead host's lock may stay held before we say so


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
        ``AuthenticationError`` and the host never runs the handler for it.
    :raises ValueError: the name breaks the rule above.
    :raises TypeError: the handler is neither accepted form.
    :raises RuntimeDirError: the runtime directory cannot be created or used safely.
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
    ) -> None:
        self._name = validate_name(name)
        self._handler = handler_class(handler)
        self._authkey = validate_authkey(authkey)
        if not isinstance(auto_reconnect, bool):
            raise TypeError(f"auto_reconnect must be a bool, not {type(auto_reconnect).__name__}")
        if not isinstance(may_host, bool):
            raise TypeError(f"may_host must be a bool, not {type(may_host).__name__}")
        if not _platform.SUN_PATH_MAX:
            raise ChannelError("ipchannel needs Unix domain sockets and flock, which this platform lacks")
        directory = resolve_runtime_dir(runtime_dir)
        ensure_runtime_dir(directory)
        self._paths = ChannelPaths.for_channel(self._name, directory)
        self.auto_reconnect = auto_reconnect
        self.may_host = may_host
        self._lock = HostLock(self._paths.lock)
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
        self._stopping = threading.Event()
        self._state: State = state
        self._record: HostRecord | None = None  # the live host we know; ours while hosting
        self._server: HostedServer | None = None
        self._monitor: Monitor | None = None
        self._stuck_since: float | None = None
        self._stuck_reported = False
        self._resigning = False  # set when this process starts to give hosting up

    # -- public properties -------------------------------------------------------

    @property
    def name(self) -> str:
        """The channel name."""
        return self._name

    @property
    def runtime_dir(self) -> Path:
        """The directory holding this channel's lock, host record and socket."""
        return self._paths.directory

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
            record = self._elect(None, verify=True)  # psutil checks the pid: no connection needed
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
            server, record = self._server, self._record
            self._server = self._record = None
            if server is not None and record is not None:
                self._resign(server, record)
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
            self._monitor = Monitor(
                self._name, self._monitor_tick, self.monitor_interval, self._stopping, first=self._warm_up
            )
            self._monitor.start()
        atexit.register(self.close)

    def _open_connection(
        self, deadline: Deadline, avoid: HostRecord | None = None
    ) -> tuple[ChannelSocket, HostRecord]:
        """Connect to the live host, electing one if needed; ``avoid`` is a host known to be gone."""
        self._start()
        known = self._record
        if known is not None and known != avoid:  # the warm path: a live host is known
            sock = self._connect_to(known)
            if sock is not None:
                return sock, known
        # A lost lock race means another process is starting to host: its publication (watched every
        # 0.5 ms) wakes us, so the timer only matters if it died too; no need to retry the lock soon.
        backoff = Backoff(deadline, self._stopping.wait, first=Backoff.FIRST if avoid is None else 0.005)
        while True:
            marker = self._published_marker(avoid)
            record = self._record
            if record is None or record == avoid:
                record = self._elect(avoid, verify=False)
            if record is not None and record != avoid:
                sock = self._connect_to(record)
                if sock is not None:
                    self._adopt(record)
                    return sock, record
                if read_record(self._paths.record) != record or not record.serving():
                    avoid = record
                    self._forget_host(record)
                    continue  # straight to the lock: the host is gone, or handed over and lives on
            if not backoff.sleep(changed=functools.partial(self._published_since, marker, avoid)):
                if self._stopping.is_set():
                    raise ChannelClosed(self._name)
                raise self._timeout_error(deadline)

    def _published_since(self, marker: tuple[int, int, bool], dead: HostRecord | None) -> bool:
        return self._published_marker(dead) != marker

    def _published_marker(self, dead: HostRecord | None) -> tuple[int, int, bool]:
        """Return what changes when the election can move on.

        The inodes of the record and socket files change when a new host publishes
        itself; a dead host's lock is free once it is a zombie or gone (its sockets
        close a little before its lock does).
        """
        inodes = []
        for path in (self._paths.record, self._paths.sock):
            try:
                inodes.append(os.stat(path).st_ino)
            except OSError:
                inodes.append(0)
        return inodes[0], inodes[1], dead is None or _platform.process_gone(dead.pid)

    def _connect_to(self, record: HostRecord) -> ChannelSocket | None:
        """Connect to the channel's socket; None if nobody listens there (yet) or it is another host."""
        if record.auth != (self._authkey is not None):
            raise AuthenticationError(
                self._name,
                "the host requires an authkey and this channel has none"
                if record.auth
                else "this channel has an authkey but the host does not ask for one",
            )
        sock = ChannelSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self._paths.sock))
            peer_pid, _uid = _platform.peer_credentials(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise ChannelError(
                f"channel {self._name!r}: cannot connect to {self._paths.sock}: {exc}"
            ) from exc
        if peer_pid is not None and peer_pid != record.pid:
            sock.close()  # a newer host than the record we read; read it again
            return None
        if self._authkey is not None:
            try:
                client_handshake(sock, self._authkey, self._name)
            except AuthenticationError:
                sock.close()
                raise
            except OSError:
                sock.close()
                return None  # the host went away mid-handshake: look again
        return sock

    def _elect(self, avoid: HostRecord | None, *, verify: bool) -> HostRecord | None:
        """One election step: the recorded host if it may be alive, else try to become host.

        ``verify`` checks the recorded pid with psutil (the monitor); without
        it, connecting is the check (``connect()``: cheaper).
        """
        with self._elect_lock:
            if self._stopping.is_set():
                raise ChannelClosed(self._name)
            if self._server is not None:
                return self._record
            record = read_record(self._paths.record)
            if record is not None:
                self._last_host_pid = record.pid
                if record != avoid and (not verify or record.serving()):
                    return record
            if not self.may_host or not self._lock.try_acquire():
                return None
            elected = self._become_host(record)
        self._run_callbacks(self._elected_callbacks, elected.generation, "on_elected")
        return elected

    def _become_host(self, previous: HostRecord | None) -> HostRecord:
        """We hold the lock: listen, write the record, publish the socket. Undo everything on failure."""
        paths = self._paths
        self._resigning = False
        generation = max(previous.generation if previous else 0, self._last_generation) + 1
        server: HostedServer | None = None
        record: HostRecord | None = None
        try:
            ensure_runtime_dir(paths.directory)
            for stale in paths.stale_temporaries():
                stale.unlink(missing_ok=True)
            server = HostedServer(self._name, paths.bind_path(os.getpid()), self._handler, self._authkey)
            server.start()
            pid = os.getpid()
            record = HostRecord(
                pid, own_create_time(pid), str(paths.sock), generation, time.time(), self._authkey is not None
            )
            write_record(paths.record, record)
            server.publish(paths.sock)
        except BaseException as exc:
            if server is not None:
                server.stop_listening()
            if record is not None:
                remove_record(paths.record, record)
            self._lock.release()
            if isinstance(exc, OSError) and not isinstance(exc, ChannelError):
                raise ChannelError(
                    f"channel {self._name!r}: cannot host in {paths.directory}: {exc}"
                ) from exc
            raise
        with self._state_lock:
            self._server, self._record = server, record
            self._state = "connected"
        self._last_generation = generation
        self._last_host_pid = record.pid
        _LOGGER.info(
            "channel %r: pid %d elected host (generation %d, previous host pid %s)",
            self._name,
            record.pid,
            generation,
            previous.pid if previous else None,
        )
        return record

    def _adopt(self, record: HostRecord) -> None:
        with self._state_lock:
            if self._state == "closed":
                return
            changed = record != self._record
            self._record = record
            self._state = "connected"
            self._stuck_since, self._stuck_reported = None, False
        if changed:
            self._last_generation = max(self._last_generation, record.generation)
            self._last_host_pid = record.pid
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

    def _still_serving(self, record: HostRecord) -> bool:
        """Tell a socket that saw EOF whether the host it talked to is still serving."""
        if self._server is not None and self._record == record:
            return True
        if read_record(self._paths.record) == record and record.serving():
            return True
        self._forget_host(record)
        return False

    def _timeout_error(self, deadline: Deadline) -> ChannelTimeout:
        detail = ""
        record = read_record(self._paths.record)
        if record is None or record.liveness() == "dead":
            holders = _platform.lock_holders(str(self._paths.lock))
            if holders:
                detail = (
                    f"the lock {self._paths.lock} is held by pid(s) {holders} but no live host is recorded; "
                    "a process that inherited the lock across fork() without exec() blocks the election"
                )
        return ChannelTimeout(
            self._name, str(self._paths.directory), deadline.elapsed(), self._last_host_pid, detail
        )

    # -- monitor -----------------------------------------------------------------

    def _warm_up(self) -> None:
        """Compute early, on the monitor thread, what becoming host needs (off the failover path)."""
        own_create_time(os.getpid())

    def _monitor_tick(self) -> None:
        """Restart a dead server, or notice a dead host and elect (runs on the monitor thread)."""
        server, record = self._server, self._record
        if server is not None and record is not None:
            server.restart_if_dead()
            self._check_own_files(server, record)
            return
        if record is not None:
            current = read_record(self._paths.record)
            if current == record and record.serving():
                return
            # handed over (its record is gone or replaced), dead, or exiting: its lock is free or about to be
            if current != record or record.liveness() != "unknown":
                self._forget_host(record)
        # No live host known (or a zombie one): one election step, as connect() would.
        try:
            found = self._elect(record, verify=True)
        except ChannelClosed:
            return  # close() began during this tick
        if found is not None:
            self._adopt(found)
        elif self.may_host:  # (a process kept out of elections never tries the lock)
            self._report_stuck_lock()

    def _check_own_files(self, server: HostedServer, record: HostRecord) -> None:
        """As host: repair a damaged record; step down if the lock or socket file was taken away.

        Someone deleted the runtime directory, removed our socket, or wrote over
        our record. A missing or unreadable record is rewritten. Without our lock
        file, another process could lock a new one and host too; without our
        socket file nobody can connect: in both cases we stop hosting, and the
        next election (any process, us included) starts from clean files.
        """
        problem = ""
        if not self._lock.still_on_its_file():
            problem = f"its lock file {self._paths.lock} was removed or replaced"
        elif not server.still_published():
            problem = f"its socket file {self._paths.sock} was removed or replaced"
        else:
            current = read_record(self._paths.record)
            if current == record:
                return
            if current is not None:
                problem = f"another record (pid {current.pid}) replaced its own"
            else:
                try:
                    write_record(self._paths.record, record)
                except OSError as exc:
                    problem = f"its record was damaged and cannot be rewritten: {exc}"
                else:
                    _LOGGER.warning(
                        "channel %r: the host record was missing or unreadable; rewrote it", self._name
                    )
                    return
        _LOGGER.warning("channel %r: host pid %d steps down: %s", self._name, record.pid, problem)
        with self._elect_lock:
            if self._server is not server:
                return  # close() got there first
            with self._state_lock:
                self._server = self._record = None
                if self._state == "connected":
                    self._state = "connecting"
            with contextlib.suppress(OSError):
                self._resign(server, record)

    def _report_stuck_lock(self) -> None:
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
            return
        if self._stuck_reported or now - self._stuck_since < _STUCK_WARNING_AFTER:
            return
        self._stuck_reported = True
        holders = _platform.lock_holders(str(self._paths.lock))
        _LOGGER.warning(
            "channel %r: no live host for %.1f s but the lock %s is held (holders: %s); "
            "a process that inherited it across fork() without exec() blocks the election",
            self._name,
            now - self._stuck_since,
            self._paths.lock,
            "unknown" if holders is None else holders,
        )

    # -- graceful handover and fork ------------------------------------------------

    @property
    def _handing_over(self) -> bool:
        """True once this process began to give hosting up (``close()`` or stepping down).

        A handler still running then must answer nothing: its caller sees the connection
        end after the record is gone, and sends the request again to the next host.
        """
        return self._resigning or self._state == "closed"

    def _resign(self, server: HostedServer, record: HostRecord) -> None:
        """Stop hosting so another process takes over at once (called with ``_elect_lock`` held)."""
        self._resigning = True
        if _hooks.pause is not None:
            _hooks.pause("channel.resigning", self._name)
        self._run_callbacks(self._demoted_callbacks, record.generation, "on_demoted")
        # The record goes first: a client whose connection breaks from here on (closing the
        # listener resets the ones still waiting to be accepted) must not take it for a handler
        # that closed its connection while the host lives on.
        remove_record(self._paths.record, record)
        server.stop_listening()
        self._lock.release()
        server.close_connections()
        _LOGGER.info(
            "channel %r: pid %d stopped hosting (generation %d)", self._name, record.pid, record.generation
        )

    def _reset_after_fork(self) -> None:
        """In a forked child (single-threaded, no locks taken): forget everything owned by the parent."""
        if self._server is not None:
            self._server.abandon_after_fork()
        self._lock.forget_after_fork()
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
