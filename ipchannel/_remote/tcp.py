"""The transport across machines: the host listens on ``listen``, others dial the ``advertise`` address.

There is no SO_PEERCRED across machines, so the authkey is required, and after the
handshake (and TLS, with ``ssl_context``) the host says who it is: an 8-byte hello
with its generation, sent only while it may serve (the ``gate``). A client keeps a
connection only if that is the generation of the record it dialed: a host that lost
its claim, or another that took its port, is refused. ``reachable`` is the probe the
remote coordinator uses to tell a crashed host from a handler that closed its connection.
Every connection has TCP keepalive on (``KEEPALIVE``), so a peer that vanished without a
word (its machine died, a NAT dropped the connection) ends it within a bounded time.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import select
import socket
import struct
from typing import TYPE_CHECKING

from .. import _auth, _platform
from .._auth import Stream, check_auth_matches, client_handshake, host_admits
from .._errors import AuthenticationError, ChannelError
from .._seams.base import Connection, plain_socket
from .._timing import Deadline
from .admission import Admission
from .records import RecordSession, RecordSocket
from .tls import SessionStream, TlsSession

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from .._options import TlsConfig
    from .._seams.base import Session, SocketMaker
    from .._seams.record import HostRecord

__all__ = ["TcpListener", "TcpTransport", "format_address", "split_address"]

_LOGGER = logging.getLogger("ipchannel")
CONNECT_TIMEOUT = 1.0  # seconds to wait for a TCP connection to a recorded host
_HELLO = struct.Struct("!Q")
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - addresses to replace, not to bind
_BACKLOG = 128
_WARNED: set[tuple[str, str]] = set()  # (channel, host) published on loopback to a remote engine, warned
#: TCP keepalive (idle, interval, count) on every connection, both ends: a peer whose machine died or
#: whose NAT forgot the connection is noticed within about 11 s (``_platform.keep_alive``)
KEEPALIVE = (5.0, 2.0, 3)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """Split what ``format_address`` made; ValueError if ``address`` is not one."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class TcpTransport:
    """TCP with the authkey handshake, a hello naming the host's generation, and optional TLS."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by the backend chooser
        self,
        name: str,
        listen: tuple[str, int],
        advertise: tuple[str, int] | None,
        authkey: bytes,
        tls: TlsConfig | None,
        default_host: Callable[[], str | None],
    ) -> None:
        self._name, self._listen, self._advertise, self._authkey = name, listen, advertise, authkey
        self._tls, self._default_host = tls, default_host

    def listen(self, gate: Callable[[], bool]) -> TcpListener:
        return TcpListener(
            self._name,
            self._listen,
            self._advertise,
            self._authkey,
            None if self._tls is None else self._tls.host,
            gate,
            self._default_host,
        )

    def connect(self, record: HostRecord, make: SocketMaker = plain_socket) -> Connection | None:
        check_auth_matches(self._name, record.auth, self._authkey)
        try:
            host, port = split_address(record.sock)
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError):
            return None  # refused, unreachable or slow: asked again once the record says more
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _platform.keep_alive(raw, *KEEPALIVE)
        tls = None if self._tls is None else TlsSession(self._tls.client, self._tls.server_name(host), host)
        try:
            generation, session = self._greet(raw, tls)
        except ChannelError:  # TLS or the authkey refused us: clear, and not a host change
            raw.close()
            raise
        except (OSError, ValueError):
            generation = session = None
        if generation != record.generation:
            raw.close()
            return None  # nobody answered, or not the host the record names (a newer one took its port)
        raw.settimeout(None)
        return make(raw.family, raw.type, raw.proto, raw.detach(), session), session

    def _greet(self, raw: socket.socket, tls: TlsSession | None) -> tuple[int | None, Session | None]:
        """TLS, the authkey handshake and the host's hello: its generation (None if it said nothing).

        Returns the connection's session too: TLS's, or without TLS the authenticated records.
        """
        stream: Stream = raw
        if tls is not None:
            tls.handshake(raw, self._name, timeout=CONNECT_TIMEOUT)
            stream = SessionStream(raw, tls)
        elif not select.select([raw], [], [], CONNECT_TIMEOUT)[0]:
            return None, None  # it accepts but says nothing: frozen (its kernel accepts for it)
        elif not raw.recv(1, socket.MSG_PEEK):
            return None, None  # closed before a word (a proxy or balancer whose host is gone): not a refusal
        try:
            transcript = client_handshake(stream, self._authkey, self._name, records=tls is None)
        except AuthenticationError:
            raise
        except OSError:
            return None, None  # the host went away mid-handshake: look again
        if tls is not None:
            return _read_hello(stream), tls  # TLS authenticates every record already
        records = RecordSession(self._authkey, transcript, host=False, channel=self._name)
        return _read_hello(SessionStream(raw, records)), records

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
                name = self._tls.server_name(host)
                with self._tls.client.wrap_socket(raw, server_hostname=name) as probe:  # speaks after ours
                    return bool(probe.recv(1))
        except (OSError, ValueError):
            return False


class TcpListener:
    """A host's TCP endpoint: it says its generation to each client once ``publish()`` made it host."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by TcpTransport.listen
        self,
        name: str,
        bind: tuple[str, int],
        advertise: tuple[str, int] | None,
        authkey: bytes,
        tls: ssl.SSLContext | None,
        gate: Callable[[], bool],
        default_host: Callable[[], str | None],
    ) -> None:
        self._name, self._authkey, self._tls, self._gate = name, authkey, tls, gate
        self.generation = 0  # set by publish(): until then we are not host, and say nothing
        self._admission = Admission(name)
        self._sock = _bound(name, bind)
        host, port = str(self._sock.getsockname()[0]), int(self._sock.getsockname()[1])
        if advertise is not None:
            host = advertise[0]
            port = advertise[1] or port
        elif host in _WILDCARDS:
            host = default_host() or socket.getfqdn()
        self._address = format_address(host, port)
        _warn_if_only_this_machine_can_dial(name, host, default_host)

    @property
    def address(self) -> str:
        return self._address

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def verify(self, conn: socket.socket) -> bool:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _platform.keep_alive(conn, *KEEPALIVE)
        self._admission.enter(conn)  # a place among the unauthenticated; the oldest may make room
        return True  # who it is, the authkey handshake tells (in its handler thread)

    def admit(self, conn: socket.socket, track: Callable[[socket.socket], None]) -> socket.socket | None:
        """TLS, the authkey handshake and the hello, all within one deadline (``HANDSHAKE_TIMEOUT``)."""
        fileno, deadline = conn.fileno(), Deadline(_auth.HANDSHAKE_TIMEOUT)
        try:
            sock = conn if self._tls is None else self._start_tls(conn, track, deadline)
            if sock is None:
                return None
            warn, records = self._admission.warn, self._tls is None
            transcript = host_admits(sock, self._authkey, self._name, deadline, warn, records=records)
            if transcript is None:
                return None
            if self._tls is None:  # TLS authenticates every record already; else our records do
                sock = self._in_records(sock, transcript, track)
            if not self.generation or not self._gate():
                return None  # not (or no longer) host: say nothing, and the client looks elsewhere
            try:
                sock.settimeout(max(deadline.remaining(), 0.001))
                sock.sendall(_HELLO.pack(self.generation))
                sock.settimeout(None)
            except OSError:
                return None
            return sock
        finally:
            self._admission.leave(fileno)

    def _in_records(
        self, conn: socket.socket, transcript: bytes, track: Callable[[socket.socket], None]
    ) -> socket.socket:
        """Return ``conn`` as a socket whose every byte travels in authenticated records."""
        where = ""
        with contextlib.suppress(OSError, IndexError):
            where = " from " + format_address(*conn.getpeername()[:2])
        session = RecordSession(self._authkey, transcript, host=True, channel=self._name, where=where)
        sock = RecordSocket(conn, session)
        self._admission.replace(conn, sock)
        track(sock)
        return sock

    def _start_tls(
        self, raw: socket.socket, track: Callable[[socket.socket], None], deadline: Deadline
    ) -> socket.socket | None:
        """Wrap ``raw`` and run the TLS handshake (host side) by ``deadline``; None if it failed."""
        assert self._tls is not None
        raw.settimeout(max(deadline.remaining(), 0.001))  # do_handshake() keeps one deadline for it
        try:
            sock = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self._admission.warn("channel %r: refused a connection: TLS failed: %s", self._name, exc)
            return None
        self._admission.replace(raw, sock)
        track(sock)  # from here on, ending hosting shuts the TLS socket
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:
            self._admission.warn(
                "channel %r: refused a connection: TLS handshake failed: %s", self._name, exc
            )
            return None
        sock.settimeout(None)
        return sock

    def publish(self, record: HostRecord) -> None:
        self.generation = record.generation

    def still_published(self) -> bool:
        return True  # nothing outside this process can take a listening port away

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()

    def abandon_after_fork(self) -> None:
        self._sock.close()


def _warn_if_only_this_machine_can_dial(name: str, host: str, default_host: Callable[[], str | None]) -> None:
    """Log a WARNING, once per channel and address, for a loopback address published to a remote engine.

    The engine is remote when this machine reaches it from an address that is not loopback;
    a loopback engine with loopback addresses is one machine playing several (a test).
    """
    if (name, host) in _WARNED or not _is_loopback(host):
        return
    facing = default_host()
    if facing is None or _is_loopback(facing):
        return
    _WARNED.add((name, host))
    _LOGGER.warning(
        "channel %r: publishing %s, a loopback address, to a coordinator this machine reaches from %s: "
        "processes on other machines cannot dial it; set advertise= (IPCHANNEL_ADVERTISE) to this "
        "machine's address on the network they share, or listen on it",
        name,
        host,
        facing,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to (not asked here)


def _bound(name: str, bind: tuple[str, int]) -> socket.socket:
    """Return a TCP socket listening on ``bind``, or raise ChannelError saying what to change."""
    sock = socket.socket(socket.AF_INET6 if ":" in bind[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bind)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        hint = "pick a free port, or 0 for any" if exc.errno == errno.EADDRINUSE else "check listen="
        where = format_address(*bind)
        raise ChannelError(f"channel {name!r}: cannot listen on {where}: {exc}; {hint}") from exc
    return sock


def _read_hello(stream: Stream) -> int | None:
    stream.settimeout(_auth.HANDSHAKE_TIMEOUT)
    data = b""
    while len(data) < _HELLO.size:
        chunk = stream.recv(_HELLO.size - len(data))
        if not chunk:
            return None
        data += chunk
    return int(_HELLO.unpack(data)[0])
