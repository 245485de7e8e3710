"""TLS for the TCP transport: the ``ssl_context=`` option, and a client socket that keeps following the host.

``ssl_context`` is one ``ssl.SSLContext`` used on both sides (it must hold a
certificate to host, and verify the host's to connect), or a pair
``(host_side, client_side)``. The host wraps each accepted connection as usual
(``SSLContext.wrap_socket``). The client side runs TLS over memory BIOs
(``SSLContext.wrap_bio``), so its state is not tied to the descriptor: after a
host change the new connection is ``dup2``-ed onto the same descriptor and its
TLS state moved over, as for a plain socket. A consequence to know: data can
wait decrypted inside the socket while the descriptor reads as idle, so code
that ``select()``-s on a raw TLS ``Channel.connect()`` socket must first check
``sock.pending()``; ``sendfile``, ``recvmsg``, ``sendmsg`` and ``dup`` raise.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import TYPE_CHECKING, NoReturn, cast

from .._auth import HANDSHAKE_TIMEOUT
from .._core.socket import ChannelSocket
from .._errors import ChannelError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["TlsChannelSocket", "TlsConfig", "validate_ssl_context"]

_CHUNK = 65536


class TlsConfig:
    """The two contexts: ``host`` wraps accepted connections, ``client`` the ones we dial."""

    def __init__(self, host: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.host, self.client = host, client


def validate_ssl_context(value: object) -> TlsConfig | None:
    """Return the TLS configuration for ``ssl_context=`` (None: plain TCP), or raise TypeError."""
    if value is None:
        return None
    if isinstance(value, ssl.SSLContext):
        return TlsConfig(value, value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(item, ssl.SSLContext) for item in value)
    ):
        return TlsConfig(value[0], value[1])
    raise TypeError(
        "ssl_context must be an ssl.SSLContext, a pair (host_side, client_side) of them, or None; "
        f"not {type(value).__name__}"
    )


class TlsChannelSocket(ChannelSocket):
    """A ``ChannelSocket`` whose four I/O calls run through TLS (an ``ssl.SSLObject`` on memory BIOs)."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls_lock = threading.Lock()  # the SSLObject and its BIOs; never held across socket I/O
        self._send_lock = threading.Lock()  # keeps TLS records in order on the wire

    def start_tls(
        self, context: ssl.SSLContext, server_hostname: str, channel: str, timeout: float = HANDSHAKE_TIMEOUT
    ) -> None:
        """Run the TLS handshake as the client; raise ChannelError naming the host if it fails."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        previous = self.gettimeout()
        self.settimeout(timeout)
        try:
            while True:
                try:
                    with self._tls_lock:
                        self._tls.do_handshake()
                    self._flush()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._fill():
                        raise ConnectionResetError(
                            "the host closed the connection during the TLS handshake"
                        ) from None
        except ssl.SSLError as exc:
            raise ChannelError(
                f"channel {channel!r}: TLS with the host at {server_hostname} failed: {exc}; "
                "check that ssl_context trusts the host's certificate and that it names this address"
            ) from exc
        finally:
            self.settimeout(previous)

    def pending(self) -> int:
        tls = self._tls
        return 0 if tls is None else tls.pending()

    # -- the raw primitives the ChannelSocket I/O calls use -----------------------

    def _raw_recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        _no_flags(flags)
        size = nbytes or memoryview(buffer).nbytes
        while True:
            try:
                with self._tls_lock:
                    tls = self._tls
                    if tls is None:
                        return 0
                    return cast("int", tls.read(size, buffer))  # with a buffer: a count
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:
                return 0

    def _raw_recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        count = self._raw_recv_into(buffer, bufsize, flags)
        return bytes(buffer[:count])

    def _raw_send(self, data: ReadableBuffer, flags: int = 0) -> int:  # noqa: ARG002
        view = memoryview(data).cast("B")
        self._raw_sendall(view)
        return view.nbytes

    def _raw_sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        _no_flags(flags)
        with self._send_lock:
            with self._tls_lock:
                tls = self._tls
                if tls is None:
                    raise BrokenPipeError("no TLS connection")
                tls.write(data)
                out = self._outgoing.read()
            socket.socket.sendall(self, out)

    def _flush(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                out = self._outgoing.read()
            if out:
                socket.socket.sendall(self, out)

    def _fill(self) -> bool:
        data = socket.socket.recv(self, _CHUNK)
        if not data:
            return False
        with self._tls_lock:
            self._incoming.write(data)
        return True

    def _take_over(self, fresh: ChannelSocket) -> None:
        assert isinstance(fresh, TlsChannelSocket)
        with self._tls_lock:
            self._tls, self._incoming, self._outgoing = fresh._tls, fresh._incoming, fresh._outgoing  # noqa: SLF001
            fresh._tls = None  # noqa: SLF001 - another socket of this class

    def _forget_connection(self) -> None:
        self._tls = None
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()

    # -- what cannot work through TLS ----------------------------------------------

    def _not_over_tls(self, *args: object, **kwargs: object) -> NoReturn:  # noqa: ARG002
        raise ChannelError("this call bypasses TLS on a channel socket; use recv/send/sendall or makefile()")

    sendfile = recvmsg = recvmsg_into = sendmsg = recvfrom = recvfrom_into = sendto = dup = _not_over_tls


def _no_flags(flags: int) -> None:
    if flags:
        raise ChannelError("flags (MSG_PEEK and the like) cannot pass through TLS on a channel socket")
