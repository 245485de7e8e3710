"""The record layer that authenticates every byte after the authkey handshake, on TCP without TLS.

The handshake proves who is at each end, but what follows it would be open to anyone on
the path (a relay that knows no key could change a frame, and with ``codec="pickle"`` run
code on the host). So every byte after it travels in records, as TLS carries it::

    record = length (!I, 1 .. MAX_RECORD) + payload + HMAC-SHA256(key, seq (!Q) + length + payload)

The key is per connection and per direction: ``HMAC(authkey, LABEL + nonce_h + nonce_c)``
(the handshake's transcript, ``_auth``), then one key for each direction; ``seq`` counts
the records of a direction from 0 and is never sent. So a record altered, dropped,
replayed, reordered, reflected back, or taken from another connection (two sessions
spliced) fails its tag: the receiver logs a WARNING, shuts the connection and raises
``RefusedRecord`` (a ``ConnectionAbortedError``); it never hands out a byte of an
unverified record. What it does not give is secrecy: the payload is plaintext, and only
TLS hides it (with TLS, TLS authenticates every record itself and this layer is not used).
The client's side is a ``Session`` (its channel socket feeds it); the host's handler gets a
``RecordSocket``, a socket whose ``recv``/``send`` family goes through one.
"""

from __future__ import annotations

import hmac
import logging
import socket
import struct
import threading
from typing import TYPE_CHECKING, NoReturn

from .._errors import ChannelError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["MAX_RECORD", "RecordSession", "RecordSocket", "RefusedRecord"]

_LOGGER = logging.getLogger("ipchannel")
MAX_RECORD = 1 << 18  # payload bytes in one record: what a receiver holds before it can check the tag
_LABEL = b"ipchannel record keys v1"
_HEADER = struct.Struct("!I")
_SEQ = struct.Struct("!Q")
_SEQ_HEADER = struct.Struct("!QI")  # what a tag covers before the payload
_TAG = 32
_CHUNK = 65536  # bytes read from the wire at a time
_BATCH = 16  # records sealed into one write
_DONTWAIT = int(socket.MSG_DONTWAIT)
_SEND_FLAGS = _DONTWAIT | int(socket.MSG_NOSIGNAL)


class RefusedRecord(ConnectionAbortedError):
    """A record failed its authentication (altered, replayed, reordered or from another connection)."""


def _keys(authkey: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """Return this connection's keys: (client to host, host to client)."""
    master = hmac.digest(authkey, _LABEL + transcript, "sha256")
    return hmac.digest(master, b"client to host", "sha256"), hmac.digest(master, b"host to client", "sha256")


class RecordSession:
    """One connection's records, both directions; a ``Session`` (the core feeds it what it reads).

    Tags are ``hmac.digest`` (one call into OpenSSL): on every message's path, few Python calls count.
    """

    def __init__(
        self, authkey: bytes, transcript: bytes, *, host: bool, channel: str, where: str = ""
    ) -> None:
        to_host, to_client = _keys(authkey, transcript)
        self._send_key, self._recv_key = (to_client, to_host) if host else (to_host, to_client)
        self._channel, self._where = channel, where
        self._send_seq = self._recv_seq = 0
        self._inbox = bytearray()  # read from the wire, not yet a whole record
        self._plain = bytearray()  # verified, not yet read
        self._refused = False
        self._recv_lock = threading.Lock()
        self._send_lock = threading.Lock()  # keeps records in sequence order on the wire
        self._tail = b""  # of records a non-blocking send left half-written (``send_nowait``)
        self._owed = b""  # what those records carry: the caller sends it again (``sendall``)

    # -- receiving ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        with self._recv_lock:
            self._inbox += data

    def pending(self) -> int:
        return len(self._plain)

    def read_into(self, buffer: WriteableBuffer, nbytes: int, flags: int) -> int | None:
        """Copy verified bytes into ``buffer``: a count, or None until a whole record came.

        :raises RefusedRecord: a record failed its tag (logged; every later read raises it too).
        """
        _no_flags(flags)
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if not (nbytes or memoryview(buffer).nbytes):
            return 0  # nothing asked: nothing to wait for, as on a plain socket
        with self._recv_lock:
            plain = self._plain
            if not plain:
                if len(self._inbox) < _HEADER.size + _TAG:
                    return None
                self._open_records()
                if not plain:
                    return None
            with memoryview(buffer) as whole, whole.cast("B") as view:
                count = min(nbytes or view.nbytes, view.nbytes, len(plain))
                view[:count] = plain[:count]
            if count == len(plain):
                plain.clear()
            else:
                del plain[:count]
            return count

    def _open_records(self) -> None:
        """Move every whole record in the inbox to the verified bytes (call with the receive lock)."""
        if self._refused:
            raise RefusedRecord("a record failed its authentication earlier on this connection")
        inbox, start, total = self._inbox, 0, len(self._inbox)
        while total - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(inbox, start)
            if not 0 < size <= MAX_RECORD:
                self._refuse(f"a record announces {size} bytes (1 to {MAX_RECORD} allowed)")
            end = start + _HEADER.size + size
            if total < end + _TAG:
                break
            tag = hmac.digest(self._recv_key, _SEQ.pack(self._recv_seq) + inbox[start:end], "sha256")
            if not hmac.compare_digest(tag, inbox[end : end + _TAG]):
                self._refuse(f"record {self._recv_seq} failed its authentication")
            self._plain += inbox[start + _HEADER.size : end]
            self._recv_seq += 1
            start = end + _TAG
        if start == total:
            inbox.clear()
        else:
            del inbox[:start]

    def _refuse(self, why: str) -> NoReturn:
        self._refused = True
        _LOGGER.warning(
            "channel %r: closed a connection%s: %s (altered, replayed, reordered or spliced on the way?)",
            self._channel,
            self._where,
            why,
        )
        raise RefusedRecord(f"{why}; the connection is closed")

    def recv_into(self, sock: socket.socket, buffer: WriteableBuffer, nbytes: int) -> int:
        """Receive into ``buffer`` through ``sock``'s descriptor (0: it closed); refuse a bad record."""
        while (count := self.read_into(buffer, nbytes, 0)) is None:
            data = socket.socket.recv(sock, _CHUNK)  # the descriptor itself, not an override
            if not data:
                return 0
            self.feed(data)
        return count

    # -- sending --------------------------------------------------------------------

    def sendall(self, sock: socket.socket, data: ReadableBuffer, flags: int) -> None:
        """Seal ``data`` into records and send them through ``sock``'s descriptor, in order.

        On a non-blocking socket, or one whose timeout ran out, the records may be cut halfway:
        the rest waits here, ``BlockingIOError``/``TimeoutError`` is raised, and sending the same
        ``data`` again finishes them (what code on a plain socket does after either).
        """
        _no_flags(flags)
        with memoryview(data) as view, view.cast("B") as whole, self._send_lock:
            payload = self._settle(sock, whole, blocking=True)
            assert payload is not None  # blocking: what was left went, or it raised
            step = MAX_RECORD * _BATCH
            for offset in range(0, payload.nbytes, step):
                try:
                    self._write(sock, self._seal(payload[offset : offset + step]))
                except (BlockingIOError, TimeoutError):  # the records are numbered: the rest must follow
                    self._tail += self._seal(payload[offset + step :])
                    self._owed = bytes(whole)  # all of it, as the caller gave it, is sent again
                    raise

    def send_nowait(self, sock: socket.socket, data: ReadableBuffer) -> int:
        """Send ``data`` without blocking: how much of it went (all, or its first batch of records), or 0.

        Records cannot be cut: if the socket takes only part of them, 0 is returned and the rest
        waits here; it goes out first on the next send, and a send of the same ``data`` again is
        then complete (the request layer's outbox does just that). So, unlike a plain socket's,
        a 0 here does not mean "nothing of it will arrive".

        :raises BlockingIOError: the socket takes nothing now (nothing was sent).
        """
        with memoryview(data) as view, view.cast("B") as whole, self._send_lock:
            payload = self._settle(sock, whole, blocking=False)
            if payload is None:
                return 0
            if payload.nbytes < whole.nbytes:
                return whole.nbytes - payload.nbytes  # what the finished records carried
            part = payload[: MAX_RECORD * _BATCH]  # a batch at a time: the caller sends the rest again
            seq = self._send_seq
            out = self._seal(part)
            try:
                sent = socket.socket.send(sock, out, _DONTWAIT)
            except BlockingIOError:
                self._send_seq = seq  # nothing left: those records were never sent
                raise
            if sent == len(out):
                return part.nbytes
            self._tail, self._owed = out[sent:], bytes(part)
            return 0

    def _settle(self, sock: socket.socket, payload: memoryview, *, blocking: bool) -> memoryview | None:
        """Send what a cut send left (call with the send lock); return what of ``payload`` is still to send.

        If ``payload`` begins with the data those records carry (it is sent again), that much is
        done. None: the socket would not take all of the rest now (``blocking`` False).
        """
        if not self._tail:
            return payload
        if blocking:
            self._write(sock, self._tail)  # on a would-block, ``_owed`` stays: the rest is still owed
        else:
            self._tail = self._tail[socket.socket.send(sock, self._tail, _DONTWAIT) :]
            if self._tail:
                return None
        owed, self._tail, self._owed = self._owed, b"", b""
        return payload[len(owed) :] if payload[: len(owed)] == owed else payload

    def _write(self, sock: socket.socket, out: bytes) -> None:
        """Send ``out`` whole; if the socket stops taking it, keep the rest in ``_tail`` and raise."""
        sent = 0
        try:
            with memoryview(out) as view:
                while sent < view.nbytes:
                    sent += socket.socket.send(sock, view[sent:])  # the descriptor itself, not an override
        except (BlockingIOError, TimeoutError):
            self._tail = out[sent:]
            raise
        self._tail = b""

    def _seal(self, payload: memoryview) -> bytes:
        """Return ``payload`` as records (call with the send lock)."""
        out: list[ReadableBuffer] = []
        for offset in range(0, payload.nbytes, MAX_RECORD):
            part = payload[offset : offset + MAX_RECORD]
            head = _SEQ_HEADER.pack(self._send_seq, part.nbytes)  # the sequence number is not sent
            out += (head[_SEQ.size :], part, hmac.digest(self._send_key, head + part, "sha256"))
            self._send_seq += 1
        return b"".join(out)

    def flush(self, sock: socket.socket) -> None:
        """Nothing to send on its own (unlike TLS)."""


class RecordSocket(socket.socket):
    """The host's side of a connection in records: a socket for what handlers do with one.

    ``recv``, ``recv_into``, ``send``, ``sendall`` and ``makefile()`` (built on them) go
    through the records; ``settimeout``, ``fileno``, ``shutdown`` and ``close`` are the
    socket's own. As on a TLS socket, verified bytes may wait inside it while the descriptor
    reads as idle: code that ``select()``-s on it checks ``pending()`` first.
    """

    def __init__(self, conn: socket.socket, session: RecordSession) -> None:
        super().__init__(conn.family, conn.type, conn.proto, conn.detach())
        self._session = session
        self._recv_lock = threading.Lock()  # one reader at a time: chunks are fed in the order read

    def pending(self) -> int:
        """Return how many verified bytes wait to be read."""
        return self._session.pending()

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if flags:
            raise ValueError("non-zero flags are not allowed on a connection in authenticated records")
        with self._recv_lock:
            try:
                return self._session.recv_into(self, buffer, nbytes)
            except RefusedRecord:
                self._shut()
                raise

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        return bytes(buffer[: self.recv_into(buffer, bufsize, flags)])

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if flags:  # as an SSLSocket: the outbox then sends from its own thread
            raise ValueError("non-zero flags are not allowed on a connection in authenticated records")
        self._session.sendall(self, data, 0)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        """Send all of ``data``; with ``MSG_DONTWAIT``, all of it or 0 (records cannot be cut)."""
        if flags == _DONTWAIT:  # the outbox's, on every reply: compared as an int, not as a flag
            return self._session.send_nowait(self, data)
        if flags & ~_SEND_FLAGS:
            raise ValueError("only MSG_DONTWAIT may be given on a connection in authenticated records")
        if flags & _DONTWAIT:
            return self._session.send_nowait(self, data)
        with memoryview(data) as view:
            self.sendall(view)
            return view.nbytes

    def _shut(self) -> None:
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            return

    def _not_through_records(self, *args: object, **kwargs: object) -> NoReturn:  # noqa: ARG002
        raise ChannelError("this call bypasses the authenticated records; use recv/send/sendall or makefile")

    sendfile = recvmsg = recvmsg_into = sendmsg = _not_through_records
    recvfrom = recvfrom_into = sendto = dup = _not_through_records


def _no_flags(flags: int) -> None:
    if flags:
        raise ChannelError("flags (MSG_PEEK and the like) cannot pass through authenticated records")
