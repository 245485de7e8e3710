"""The transport seam: how to reach the host. ``UnixTransport`` is the one-machine implementation.

A transport listens (in the host) and connects (everywhere): ``listen()``
starts a server on a private address and returns a ``Listener``; the host
writes ``listener.address`` into its record, then calls ``listener.publish()``
to take the address others dial. ``connect(record)`` dials a recorded host,
checks it is that host (for Unix sockets: the peer's pid by SO_PEERCRED; the
peer's uid is checked by the server) and runs the authkey handshake if the
channel has a key. It returns a ``ChannelSocket``, which follows the host
across failover on any stream socket (``dup2`` onto the same descriptor).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Protocol

from .. import _platform
from .._auth import client_handshake
from .._core.server import HostedServer
from .._core.socket import ChannelSocket
from .._errors import AuthenticationError, ChannelError
from .standby import WAIT_SLICE, StandbyListener, await_hello

if TYPE_CHECKING:
    import socketserver
    from collections.abc import Callable

    from .._seams.record import HostRecord
    from .._timing import Deadline
    from .paths import ChannelPaths

__all__ = ["Listener", "Transport", "UnixTransport", "authenticated", "check_auth_matches"]


class Listener(Protocol):
    """A host's server: running on its private address until ``publish()``."""

    @property
    def address(self) -> str:
        """What clients dial, written in the host record."""

    def publish(self, record: HostRecord) -> None:
        """Open to clients as ``record``'s host (Unix: take the published path, replacing a dead host's)."""

    def still_published(self) -> bool:
        """Tell whether our listener still answers at the published address (someone may remove it)."""

    def restart_if_dead(self) -> bool:
        """Restart the server thread if it died; True if it had to."""

    def stop_listening(self) -> None:
        """Stop accepting; connections waiting to be accepted are reset."""

    def close_connections(self) -> None:
        """End every live connection (clients see EOF at once) and join the handler threads."""

    def abandon_after_fork(self) -> None:
        """In a forked child: drop our copies of the parent's sockets, touching nothing shared."""


class Transport(Protocol):
    """How a channel's processes reach its host."""

    def listen(
        self, handler: type[socketserver.BaseRequestHandler], authkey: bytes | None, gate: Callable[[], bool]
    ) -> Listener:
        """Start a server that runs ``handler`` per connection, on a private address until ``publish()``.

        ``gate()`` says whether this process may serve right now (asked per connection where it matters).
        """

    def connect(self, record: HostRecord, authkey: bytes | None) -> ChannelSocket | None:
        """Connect to the host ``record`` names; None if nobody (or another host) answers there."""

    def reachable(self, record: HostRecord) -> bool:
        """After an EOF from a host the coordinator still lists, tell whether it still accepts connections."""

    def stand_by(
        self, handler: type[socketserver.BaseRequestHandler], authkey: bytes | None, gate: Callable[[], bool]
    ) -> StandbyListener | None:
        """Get ready to host next: the server, listening privately, and a side socket; None if unsupported."""

    def connect_standby(
        self, standby: HostRecord, authkey: bytes | None, deadline: Deadline, give_up: Callable[[], bool]
    ) -> tuple[ChannelSocket, HostRecord] | None:
        """Wait at the standby's side socket until it hosts: the socket and its host record, or None."""

    def tidy(self) -> None:
        """Remove what processes that died left at this transport's addresses (at close)."""


class UnixTransport:
    """AF_UNIX sockets in the runtime directory, with the peer checked by SO_PEERCRED."""

    def __init__(self, name: str, paths: ChannelPaths) -> None:
        self._name = name
        self._paths = paths

    def listen(
        self,
        handler: type[socketserver.BaseRequestHandler],
        authkey: bytes | None,
        gate: Callable[[], bool],  # noqa: ARG002 - the lock and the socket path already decide
    ) -> HostedServer:
        self.tidy()
        return self._start_server(handler, authkey)

    def tidy(self) -> None:
        """Remove the private socket files of processes that died.

        Done before listening or standing by, and at close: a process killed while another
        was starting to stand by may not yet have counted as gone then.
        """
        for stale in self._paths.stale_socket_temporaries():
            stale.unlink(missing_ok=True)

    def _start_server(
        self, handler: type[socketserver.BaseRequestHandler], authkey: bytes | None
    ) -> HostedServer:
        server = HostedServer(
            self._name, self._paths.bind_path(os.getpid()), str(self._paths.sock), handler, authkey
        )
        server.start()
        return server

    def connect(self, record: HostRecord, authkey: bytes | None) -> ChannelSocket | None:
        check_auth_matches(self._name, record, authkey)
        sock = ChannelSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(record.sock)
            peer_pid, _uid = _platform.peer_credentials(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise ChannelError(f"channel {self._name!r}: cannot connect to {record.sock}: {exc}") from exc
        if peer_pid is not None and peer_pid != record.pid:
            sock.close()  # a newer host than the record we read; read it again
            return None
        return authenticated(sock, self._name, authkey)

    def reachable(self, record: HostRecord) -> bool:  # noqa: ARG002 - the pid check already told
        return True

    def stand_by(
        self,
        handler: type[socketserver.BaseRequestHandler],
        authkey: bytes | None,
        gate: Callable[[], bool],  # noqa: ARG002 - as listen()
    ) -> StandbyListener:
        self.tidy()  # ours from an earlier term too: before the side socket exists
        return StandbyListener(
            self._paths.standby_path(os.getpid()), lambda: self._start_server(handler, authkey)
        )

    def connect_standby(
        self, standby: HostRecord, authkey: bytes | None, deadline: Deadline, give_up: Callable[[], bool]
    ) -> tuple[ChannelSocket, HostRecord] | None:
        check_auth_matches(self._name, standby, authkey)
        sock = ChannelSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, min(deadline.remaining(), WAIT_SLICE)))  # a full backlog blocks
            sock.connect(standby.sock)
            sock.settimeout(None)
            peer_pid, _uid = _platform.peer_credentials(sock)
        except OSError:
            sock.close()
            return None  # gone, stopped standing by, or not accepting: the usual way then
        record = None if peer_pid != standby.pid else await_hello(sock, deadline, give_up)
        if record is None or record.pid != standby.pid:
            sock.close()
            return None
        ready = authenticated(sock, self._name, authkey)
        return None if ready is None else (ready, record)


def check_auth_matches(name: str, record: HostRecord, authkey: bytes | None) -> None:
    """Refuse before connecting when the record says the host's use of a key differs from ours."""
    if record.auth != (authkey is not None):
        raise AuthenticationError(
            name,
            "the host requires an authkey and this channel has none"
            if record.auth
            else "this channel has an authkey but the host does not ask for one",
        )


def authenticated(sock: ChannelSocket, name: str, authkey: bytes | None) -> ChannelSocket | None:
    """Run the authkey handshake (any transport); None if the host went away during it."""
    if authkey is None:
        return sock
    try:
        client_handshake(sock, authkey, name)
    except AuthenticationError:
        sock.close()
        raise
    except OSError:
        sock.close()
        return None  # the host went away mid-handshake: look again
    return sock
