"""The TCP transport: the host listens on ``listen``, others dial the ``advertise`` address in its record.

There is no SO_PEERCRED across machines, so the authkey is required, and
after the handshake (and TLS, with ``ssl_context``) the host says who it is: an
8-byte hello with its generation, sent only while its claim is valid (the
``gate``). A client keeps a connection only if that is the generation of the
record it dialed and no lower than any it has seen: a host that lost its claim,
or an old one woken from a freeze, is refused.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import socketserver
import struct
from typing import TYPE_CHECKING

from .._auth import HANDSHAKE_TIMEOUT
from .._core.server import HostedServer, Tracking
from .._core.socket import ChannelSocket
from .._errors import ChannelError
from .._local.unix import authenticated, check_auth_matches
from .tls import TlsChannelSocket

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from .._local.standby import StandbyListener
    from .._seams.record import HostRecord
    from .._timing import Deadline
    from .tls import TlsConfig

__all__ = ["TcpTransport", "format_address", "split_address"]

_LOGGER = logging.getLogger("ipchannel")
CONNECT_TIMEOUT = 1.0  # seconds to wait for a TCP connection to a recorded host
_HELLO = struct.Struct("!Q")
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - addresses to replace, not to bind


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """Split what ``format_address`` made; ValueError if ``address`` is not one."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _TcpServer(Tracking, socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(  # noqa: PLR0913, PLR0917 - socketserver's two, then ours
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        name: str,
        authkey: bytes,
        tls: ssl.SSLContext | None,
        gate: Callable[[], bool],
    ) -> None:
        self.channel_name = name
        self._authkey = authkey
        self._tls = tls
        self._gate = gate
        self.generation = 0  # set by publish(): until then we are not host, and say nothing
        self._init_tracking()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def prepare(self, request: socket.socket) -> socket.socket | None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = request if self._tls is None else self._start_tls(request)
        if sock is None:
            return None
        if self._welcome(sock):
            return sock
        if sock is not request:
            self.shutdown_request(sock)  # the TLS socket (tracked): the caller shuts only the raw one
        return None

    def _start_tls(self, raw: socket.socket) -> socket.socket | None:
        """Wrap ``raw`` and run the TLS handshake (host side); None if it failed (then it is shut)."""
        assert self._tls is not None
        raw.settimeout(HANDSHAKE_TIMEOUT)
        try:
            sock = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self._log_refused(f"TLS failed: {exc}")
            return None
        self.track_as(raw, sock)  # from here on, ending hosting shuts the TLS socket
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:
            self._log_refused(f"TLS handshake failed: {exc}")
            self.shutdown_request(sock)
            return None
        sock.settimeout(None)
        return sock

    def _welcome(self, sock: socket.socket) -> bool:
        """Run the authkey handshake, then send our hello, only while we may serve; False to refuse."""
        if super().prepare(sock) is None or not self.generation or not self._gate():
            return False
        try:
            sock.sendall(_HELLO.pack(self.generation))
        except OSError:
            return False
        return True

    def _log_refused(self, why: str) -> None:
        _LOGGER.warning("channel %r: refused a connection: %s", self.channel_name, why)


class TcpListener(HostedServer):
    """A host's TCP server; ``publish(record)`` opens it to clients (it then sends them its generation)."""

    def __init__(  # noqa: PLR0913, PLR0917 - built in one place, by TcpTransport.listen
        self,
        name: str,
        bind: tuple[str, int],
        advertise: tuple[str, int] | None,
        handler: type[socketserver.BaseRequestHandler],
        authkey: bytes,
        tls: ssl.SSLContext | None,
        gate: Callable[[], bool],
        default_host: Callable[[], str | None],
    ) -> None:
        try:
            server = _TcpServer(bind, handler, name, authkey, tls, gate)
        except OSError as exc:
            hint = "pick a free port, or 0 for any" if exc.errno == errno.EADDRINUSE else "check listen="
            raise ChannelError(
                f"channel {name!r}: cannot listen on {format_address(*bind)}: {exc}; {hint}"
            ) from exc
        host, port = str(server.server_address[0]), int(server.server_address[1])
        if advertise is not None:
            host = advertise[0]
            port = advertise[1] or port
        elif host in _WILDCARDS:
            host = default_host() or socket.getfqdn()
        super().__init__(name, None, format_address(host, port), handler, authkey, server=server)

    def publish(self, record: HostRecord) -> None:
        self._server.generation = record.generation

    def still_published(self) -> bool:
        return True

    def _unlink_if_ours(self) -> None:
        """Nothing to unlink for a TCP port."""


class TcpTransport:
    """TCP with the authkey handshake, a hello naming the host's generation, and optional TLS."""

    def __init__(
        self,
        name: str,
        listen: tuple[str, int],
        advertise: tuple[str, int] | None,
        tls: TlsConfig | None,
        default_host: Callable[[], str | None],
    ) -> None:
        self._name, self._listen, self._advertise, self._tls = name, listen, advertise, tls
        self._default_host = default_host
        self.highest_generation = 0  # the highest generation a host has shown us: never go back below it
        self._refused: set[int] = set()

    def listen(
        self, handler: type[socketserver.BaseRequestHandler], authkey: bytes | None, gate: Callable[[], bool]
    ) -> TcpListener:
        assert authkey is not None  # required with a coordinator (checked when the channel is made)
        listener = TcpListener(
            self._name,
            self._listen,
            self._advertise,
            handler,
            authkey,
            None if self._tls is None else self._tls.host,
            gate,
            self._default_host,
        )
        listener.start()
        return listener

    def connect(self, record: HostRecord, authkey: bytes | None) -> ChannelSocket | None:
        check_auth_matches(self._name, record, authkey)
        if record.generation < self.highest_generation:
            self._refuse_older(record)
            return None  # an older host than one we have talked to: its claim is gone
        try:
            host, port = split_address(record.sock)
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError):
            return None  # refused, unreachable or slow: asked again once the record says more
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind: type[ChannelSocket] = ChannelSocket if self._tls is None else TlsChannelSocket
        sock = kind(raw.family, raw.type, raw.proto, raw.detach())
        try:
            generation = self._greet(sock, host, authkey)
        except ChannelError:  # TLS or the authkey refused us: clear, and not a host change
            sock.close()
            raise
        except (OSError, ValueError):
            generation = None
        if generation != record.generation:
            sock.close()
            return None  # nobody answered, or not the host the record names (a newer one took its port)
        self.highest_generation = max(self.highest_generation, generation)
        sock.settimeout(None)
        return sock

    def _greet(self, sock: ChannelSocket, host: str, authkey: bytes | None) -> int | None:
        """TLS, the authkey handshake and the host's hello: its generation, or None if it said nothing."""
        if isinstance(sock, TlsChannelSocket):
            assert self._tls is not None
            sock.start_tls(self._tls.client, host, self._name, timeout=CONNECT_TIMEOUT)
        elif not select.select([sock], [], [], CONNECT_TIMEOUT)[0]:
            return None  # it accepts but says nothing: frozen (its kernel accepts for it)
        if authenticated(sock, self._name, authkey) is None:
            return None
        return _read_hello(sock)

    def _refuse_older(self, record: HostRecord) -> None:
        if record.generation in self._refused:
            return
        self._refused.add(record.generation)
        _LOGGER.warning(
            "channel %r: refusing the host at %s: its generation %d is below %d, seen before; "
            "if the coordinator's data was reset (a new cluster, a restore), restart this process",
            self._name,
            record.sock,
            record.generation,
            self.highest_generation,
        )

    def reachable(self, record: HostRecord) -> bool:
        """Tell a crashed host from a handler that closed its connection: a live host greets a new one.

        Its first bytes are the authkey challenge; a dying process may still accept for a moment,
        but it sends nothing.
        """
        try:
            host, port = split_address(record.sock)
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw:
                if self._tls is None:
                    return bool(raw.recv(1))
                with self._tls.client.wrap_socket(raw, server_hostname=host) as probe:  # speaks after ours
                    return bool(probe.recv(1))
        except (OSError, ValueError):
            return False

    def stand_by(
        self,
        handler: type[socketserver.BaseRequestHandler],  # noqa: ARG002 - same signature as the Unix one
        authkey: bytes | None,  # noqa: ARG002
        gate: Callable[[], bool],  # noqa: ARG002
    ) -> StandbyListener | None:
        """Return None: across machines the next host is whoever the engine elects."""
        return None

    def connect_standby(
        self,
        standby: HostRecord,  # noqa: ARG002 - same signature as the Unix one
        authkey: bytes | None,  # noqa: ARG002
        deadline: Deadline,  # noqa: ARG002
        give_up: Callable[[], bool],  # noqa: ARG002
    ) -> tuple[ChannelSocket, HostRecord] | None:
        """Return None: there is no standby across machines."""
        return None

    def tidy(self) -> None:
        """Nothing to do: a TCP listener leaves no file behind."""


def _read_hello(sock: ChannelSocket) -> int | None:
    sock.settimeout(HANDSHAKE_TIMEOUT)
    data = b""
    while len(data) < _HELLO.size:
        chunk = sock.recv(_HELLO.size - len(data))
        if not chunk:
            return None
        data += chunk
    return int(_HELLO.unpack(data)[0])
