"""TLS for the TCP transport: a client session that is not tied to a descriptor, and the host's side.

The host wraps each accepted connection as usual (``SSLContext.wrap_socket``). The
client runs TLS over memory BIOs (``SSLContext.wrap_bio``): a ``TlsSession`` reads and
writes through whichever socket it is handed, so after a host change the new
connection's descriptor is ``dup2``-ed onto the channel socket's and the new session
replaces the old one (the core's ``Session`` seam). A consequence to know: data can wait
decrypted inside the session while the descriptor reads as idle, so code that
``select()``-s on a raw TLS ``Channel.connect()`` socket must first check ``sock.pending()``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import TYPE_CHECKING, Protocol, cast

from .._auth import HANDSHAKE_TIMEOUT
from .._errors import ChannelError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["CHUNK", "SessionStream", "TlsSession"]

CHUNK = 65536  # bytes read from the wire at a time


class TlsSession:
    """The client side of one TLS connection, on memory BIOs (an ``ssl.SSLObject``)."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str, address: str | None = None) -> None:
        """Begin a session with the host at ``address`` whose certificate must name ``server_hostname``."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._server_hostname, self._address = server_hostname, address or server_hostname
        self._tls_lock = threading.Lock()  # the SSLObject and its BIOs; never held across socket I/O
        self._ahead = b""  # decrypted by ``pending()``, not yet read
        self._ahead_end: ssl.SSLError | None = None  # what ``pending()`` met instead of a record (EOF...)
        self._send_lock = threading.Lock()  # keeps TLS records in order on the wire

    def handshake(self, sock: socket.socket, channel: str, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Run the TLS handshake as the client; raise ChannelError naming the host if it fails."""
        previous = sock.gettimeout()
        sock.settimeout(timeout)
        try:
            while True:
                try:
                    with self._tls_lock:
                        self._tls.do_handshake()
                    self.flush(sock)
                    break
                except ssl.SSLWantReadError:
                    self.flush(sock)
                    if not self._fill(sock):
                        raise ConnectionResetError(
                            "the host closed the connection during the TLS handshake"
                        ) from None
        except ssl.SSLError as exc:
            pinned = self._server_hostname != self._address
            raise ChannelError(
                f"channel {channel!r}: TLS with the host at {self._address} failed: {exc}; check that "
                f"ssl_context trusts the host's certificate and that it names {self._server_hostname!r} "
                + ("(server_hostname=)" if pinned else "(its address; server_hostname= pins a name instead)")
            ) from exc
        finally:
            sock.settimeout(previous)

    def pending(self) -> int:
        """Return the bytes readable without the descriptor, counting whole records not yet decrypted.

        A read returns one TLS record (16 KiB at most), and ``SSLObject.pending()`` counts only
        the rest of that one: records already fed wait undecrypted while the descriptor is idle,
        so the next one is decrypted here (or its EOF noticed), and counted.
        """
        with self._tls_lock:
            if (
                not self._ahead
                and self._ahead_end is None
                and not self._tls.pending()
                and self._incoming.pending
            ):
                try:
                    self._ahead = self._tls.read(CHUNK)
                except ssl.SSLWantReadError:
                    pass  # part of a record: the descriptor says when the rest comes
                except ssl.SSLError as exc:  # EOF or a broken record: what the next read returns or raises
                    self._ahead_end = exc
            return len(self._ahead) + self._tls.pending() + (self._ahead_end is not None)

    def read_into(self, buffer: WriteableBuffer, nbytes: int, flags: int) -> int | None:
        _no_flags(flags)
        try:
            with self._tls_lock:
                if self._ahead:  # what ``pending()`` decrypted comes first
                    with memoryview(buffer) as whole, whole.cast("B") as view:
                        count = min(nbytes or view.nbytes, view.nbytes, len(self._ahead))
                        view[:count], self._ahead = self._ahead[:count], self._ahead[count:]
                    return count
                if self._ahead_end is not None:
                    raise self._ahead_end
                return cast("int", self._tls.read(nbytes or memoryview(buffer).nbytes, buffer))  # a count
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return 0

    def feed(self, data: bytes) -> None:
        with self._tls_lock:
            self._incoming.write(data)

    def sendall(self, sock: socket.socket, data: ReadableBuffer, flags: int) -> None:
        _no_flags(flags)
        with self._send_lock:
            with self._tls_lock:
                self._tls.write(data)
                out = self._outgoing.read()
            socket.socket.sendall(sock, out)  # the descriptor itself, not a channel socket's override

    def flush(self, sock: socket.socket) -> None:
        with self._send_lock:
            with self._tls_lock:
                out = self._outgoing.read()
            if out:
                socket.socket.sendall(sock, out)

    def recv_into(self, sock: socket.socket, buffer: WriteableBuffer, nbytes: int) -> int:
        """Receive into ``buffer`` through ``sock`` (the handshakes on a connection not yet moved)."""
        while (count := self.read_into(buffer, nbytes, 0)) is None:
            self.flush(sock)
            if not self._fill(sock):
                return 0
        return count

    def _fill(self, sock: socket.socket) -> bool:
        data = socket.socket.recv(sock, CHUNK)
        if not data:
            return False
        self.feed(data)
        return True


class _Stepping(Protocol):
    """A session that can step through a socket not yet given to a channel socket (TLS, the records)."""

    def recv_into(self, sock: socket.socket, buffer: WriteableBuffer, nbytes: int) -> int: ...

    def sendall(self, sock: socket.socket, data: ReadableBuffer, flags: int) -> None: ...


class SessionStream:
    """A socket and its session seen as one stream (``recv``/``sendall``), for the handshakes on it."""

    def __init__(self, sock: socket.socket, session: _Stepping) -> None:
        self._sock, self._session = sock, session

    def recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: self._session.recv_into(self._sock, buffer, size)])

    def sendall(self, data: ReadableBuffer) -> None:
        self._session.sendall(self._sock, data, 0)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)


def _no_flags(flags: int) -> None:
    if flags:
        raise ChannelError("flags (MSG_PEEK and the like) cannot pass through TLS on a channel socket")
