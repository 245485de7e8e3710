"""The public ``Channel``: a facade over the connector, the hosting term and the monitor.

``Channel`` checks its arguments, asks ``_backends`` for the backend its options name,
and wires the core's parts together: ``Connector`` (``connect``: find, elect, follow,
recover), ``Hosting`` (``term``: become host, serve, resign, step down, stand by) and
``Monitor`` (``monitor``: the thread that watches the host). It owns the channel's
lifecycle: start on first use, close, and the reset in a forked child.

The layers built on a channel (requests, shared dict, jobs, aio) reach what they need
of its insides through ``port_of(channel)``: may this process serve, how a timeout on
this channel is worded, what is known of the recorded host.
"""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING, Literal, overload

from .. import _fork
from .._backends import open_backend
from .._errors import ChannelClosed
from .._options import Options, validate_name
from .._timing import Deadline, validate_timeout
from .._wakeup import Wakeup
from .connect import Connector
from .monitor import Monitor
from .port import Port
from .server import handler_class
from .term import Hosting

if TYPE_CHECKING:
    import os
    import socket
    import socketserver
    import ssl
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from .._seams.base import Backend
    from .connect import Phase
    from .socket import ChannelSocket

__all__ = ["Channel", "open_channel"]


class Channel(_fork.ProcessBound):
    """One shared service among peer processes: one of them hosts it, all connect to it.

    Every process runs the same code::

        def handler(conn):                  # runs in a server thread of the host process
            conn.sendall(conn.recv(1024))

        with Channel("echo", handler) as channel:
            sock = channel.connect(timeout=5)
            sock.sendall(b"hi"); print(sock.recv(1024))

    :param name: 1-64 characters of letters, digits, ``.``, ``_`` and ``-``, not starting with ``.``.
    :param handler: a callable ``handler(conn: socket.socket)``, called in a server thread of the host
        for each connection (closed when it returns), or a ``socketserver.BaseRequestHandler`` subclass.
    :param runtime_dir: where the lock, host record and socket live; default ``IPCHANNEL_DIR``,
        else ``$XDG_RUNTIME_DIR/ipchannel``, else ``<tempdir>/ipchannel-<uid>``.
    :param auto_reconnect: follow the host across failover (see ``connect()``).
    :param may_host: False keeps this process out of elections: it only connects to a host another
        process runs, waiting (within its timeouts) while there is none. Settable (``may_host``).
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
    :param ssl_context: TLS for the TCP transport: a pair ``(host_side, client_side)`` of
        ``ssl.SSLContext``; None is plain TCP (the authkey still authenticates every byte).
    :param server_hostname: the name hosts' certificates carry (default: the recorded address;
        None reads ``IPCHANNEL_SERVER_HOSTNAME``). ``ssl_verify=False`` lets a client side that
        does not verify it pass (refused by default: anyone on the path could pose as the host).
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
        server_hostname: str | None = None,
        ssl_verify: bool = True,
        _options: Options | None = None,
        _backend: Backend | None = None,
    ) -> None:
        self._name = validate_name(name)
        handler_cls = handler_class(handler)
        options = _options or Options.build(
            runtime_dir=runtime_dir,
            authkey=authkey,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            ssl_verify=ssl_verify,
        )
        for option, value in (("auto_reconnect", auto_reconnect), ("may_host", may_host)):
            if not isinstance(value, bool):
                raise TypeError(f"{option} must be a bool, not {type(value).__name__}")
        self._backend = backend = _backend or open_backend(self._name, options)
        self._wakeup = Wakeup()
        self._connector = Connector(
            self._name, backend, self._wakeup, self._start, auto_reconnect=auto_reconnect, may_host=may_host
        )
        self._hosting = Hosting(
            self._name, backend, handler_cls, self._connector, self._wakeup, auth=options.authkey is not None
        )
        self._connector.hosting = self._hosting
        self._monitor: Monitor | None = None
        self._port = Port(
            self._hosting.may_serve,
            self._hosting.serving,
            self._hosting.claim_problem,
            self._connector.timeout_error,
            self._recorded_host,
            backend.membership,
            self._set_campaign_gate,
        )
        _fork.register(self)
        # at exit in creation order, after what is built on it (registered later), also in a child
        atexit.register(self.close)

    # -- public properties -------------------------------------------------------

    @property
    def name(self) -> str:
        """The channel name."""
        return self._name

    @property
    def channel(self) -> Channel:
        """Return this channel: every ipchannel object's ``.channel`` is the ``Channel`` electing its host."""
        return self

    @property
    def runtime_dir(self) -> Path:
        """The directory holding this channel's local files (lock, host record and socket, locally)."""
        return self._backend.coordinator.runtime_dir

    @property
    def state(self) -> Phase:
        """``"initiated"``, ``"connecting"`` (looking for a host), ``"connected"`` or ``"closed"``."""
        return self._connector.phase

    @property
    def connected(self) -> bool:
        """True while a live host is known (this process or another)."""
        return self._connector.phase == "connected"

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._connector.phase == "closed"

    @property
    def is_host(self) -> bool:
        """True while this process hosts the server."""
        return self._hosting.is_host

    @property
    def host_pid(self) -> int | None:
        """Pid of the current host, or None while none is known."""
        record = self._connector.record
        return None if record is None else record.pid

    @property
    def generation(self) -> int | None:
        """Generation of the current host (1 for the first, +1 per new host), or None."""
        record = self._connector.record
        return None if record is None else record.generation

    @property
    def auto_reconnect(self) -> bool:
        """Whether sockets follow the host across failover (see ``connect()``)."""
        return self._connector.auto_reconnect

    @auto_reconnect.setter
    def auto_reconnect(self, value: bool) -> None:
        self._connector.auto_reconnect = value

    @property
    def may_host(self) -> bool:
        """False keeps this process out of elections (see the constructor)."""
        return self._connector.may_host

    @may_host.setter
    def may_host(self, value: bool) -> None:
        self._connector.may_host = value

    # -- connect, join and the host hooks ------------------------------------------

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
        return self._connector.connect(validate_timeout(timeout))

    def join(self, timeout: float | None = 5.0) -> bool:
        """Take part in the election without opening a connection; return True if this process hosts.

        For processes that should be able to host from start-up (a scheduler, a
        replica) but have nothing to send yet. Like ``connect()``, it starts the
        monitor thread, which keeps this process in every later election.

        :raises ChannelTimeout: no live host could be found or become one within ``timeout``.
        """
        self._connector.join(Deadline(validate_timeout(timeout)))
        return self.is_host

    def on_elected(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` each time this process becomes host (once per term).

        It runs in the thread that won the election (a ``connect()`` or ``join()``
        caller, a thread whose socket was reconnecting, or ``ipchannel-monitor:NAME``),
        after the host is published. It must not block: start a thread for long work.
        An exception it raises is logged. Returns ``callback``, so it works as a decorator.
        """
        self._hosting.elected_callbacks.append(_check_callback(callback))
        return callback

    def on_demoted(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` when this process stops hosting: ``close()``, exit, stepping down.

        It runs in the thread that closes the channel (or ``ipchannel-monitor:NAME``
        when the host steps down), *before* the lock is released and the server
        stops, so work it stops cannot overlap the next host's. It must not block
        for long nor call into this channel. A process killed outright runs nothing.
        """
        self._hosting.demoted_callbacks.append(_check_callback(callback))
        return callback

    # -- lifecycle ----------------------------------------------------------------

    def _start(self) -> None:
        """On first use (and first use in a forked child): start the monitor thread."""
        connector = self._connector
        with connector.state_lock:
            if connector.phase == "closed":
                raise ChannelClosed(self._name)
            if self._monitor is not None:
                return
            if connector.phase == "initiated":
                connector.phase = "connecting"
            self._monitor = Monitor(
                self._name,
                self._hosting,
                connector,
                self._backend,
                self._wakeup,
                self.monitor_interval,
                connector.stopping,
            )
            self._monitor.start()

    def close(self) -> None:
        """Close the channel: stop the monitor, hand hosting over, close this process's sockets.

        In the host, the server stops, the record and socket file are removed
        and the lock released, so another process takes over at once. Idempotent.
        """
        connector = self._connector
        with connector.state_lock:
            if connector.phase == "closed":
                return
            connector.phase = "closed"
            monitor, self._monitor = self._monitor, None
        connector.stopping.set()
        if monitor is not None:
            monitor.join()
        self._hosting.close()
        self._backend.coordinator.close()
        connector.close()
        atexit.unregister(self.close)

    def __enter__(self) -> Channel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        record = self._connector.record
        host = "" if record is None else f" host_pid={record.pid} gen={record.generation}"
        role = " (host)" if self.is_host else ""
        return f"<Channel {self._name!r} {self.state}{role}{host}>"

    def _recorded_host(self) -> Literal["none", "dead", "maybe alive"]:
        """Say what the coordinator knows of the recorded host, without connecting (SharedDict's grace)."""
        coordinator = self._backend.coordinator
        record = coordinator.read()
        if record is None:
            return "none"
        return "dead" if coordinator.assess(record).dead else "maybe alive"

    def _set_campaign_gate(self, gate: Callable[[], bool] | None) -> None:
        self._connector.campaign_gate = gate

    def _reset_after_fork(self) -> None:
        """In a forked child (single-threaded, no locks taken): forget everything owned by the parent."""
        self._hosting.abandon_after_fork()
        if self._monitor is not None:
            self._monitor.abandon_after_fork()
            self._monitor = None
        self._backend.coordinator.after_fork()
        self._connector.after_fork()


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
