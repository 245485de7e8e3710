"""The socket ``connect()`` returns, and what its reads and writes do when the host changes.

A ``ChannelSocket`` is a real ``socket.socket`` (``makefile()``, ``settimeout()``, selectors all work).
When its connection is lost (EOF, reset, broken pipe) it asks its owner (``SocketOwner``) to recover:

- still serving: the handler closed the connection; plain socket behaviour;
- not serving, and ``auto_reconnect``: the channel finds the new host and the new connection is
  ``dup2``-ed onto the same file descriptor, so the object and its ``fileno()`` stay the same (a
  session, TLS or authenticated records, moves with it). ``send``/``sendall`` then deliver to the
  new host; ``recv``/``recv_into`` raise ``HostChanged`` (what the old host had not answered is lost).

Only ``recv``, ``recv_into``, ``send`` and ``sendall`` (and ``makefile()``, built
on them) take part; ``sendfile``, ``recvmsg`` and friends behave as on a plain socket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

from .._errors import ChannelClosed, ChannelError, HostChanged
from .reconnect import wait_for_new_host

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from .._seams.base import Connection, Session, SocketMaker
    from .._seams.record import HostRecord

__all__ = [
    "ChannelSocket",
    "Event",
    "SessionChannelSocket",
    "SocketOwner",
    "socket_maker",
]

_LOGGER = logging.getLogger("ipchannel")
_LOST = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_CHUNK = 65536  # bytes read from the wire at a time, for a session to decode

#: What the channel tells its sockets: the host they talk to lost its claim ("kick"), the channel
#: closed ("close"), or this is a forked child ("fork").
Event = Literal["kick", "close", "fork"]


class SocketOwner(Protocol):
    """What a ChannelSocket asks of the channel it belongs to (the connector, ``connect.Connector``)."""

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def auto_reconnect(self) -> bool: ...

    def recover(self, old: HostRecord | None, timeout: float | None) -> tuple[Connection, HostRecord] | None:
        """After a connection to ``old`` ended: one to the next host, or None if ``old`` still serves."""

    def reopen(self, timeout: float | None) -> tuple[Connection, HostRecord]:
        """Return a new connection to the live host: a forked child's (the parent's stays), a kicked one's."""


class ChannelSocket(socket.socket):
    """A connected socket (``Channel.connect()``) that follows its host across failover (a ``dup()``: not)."""

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        _owner: SocketOwner | None = None,
        _record: HostRecord | None = None,
        _timeout: float | None = None,
        _session: Session | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        self._owner, self._record, self._timeout, self._session = _owner, _record, _timeout, _session
        self._epoch, self._channel_closed = 0, False
        self._stale = False  # set in a forked child: reconnect before first use
        self._peer_closed = self._kicked = False  # its host's handler ended the connection / the channel did
        self._unusual = False  # _stale or _channel_closed: the one flag the I/O calls test
        self._recover_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._fd_lock = threading.RLock()  # our descriptor's: closed, or a connection dup2-ed onto it

    @property
    def host_generation(self) -> int | None:
        """Generation of the host this socket is connected to."""
        return None if self._record is None else self._record.generation

    @property
    def host_epoch(self) -> str | None:
        """The engine's epoch of that generation (its data reset, numbering starts again in a new one)."""
        return None if self._record is None else self._record.epoch

    @property
    def reconnects(self) -> int:
        """How many times this socket was moved to a new connection (host change or fork)."""
        return self._epoch

    # -- the four I/O calls -------------------------------------------------

    # What they do on the wire; a TLS socket (``_tls``) replaces these four.
    _raw_recv = socket.socket.recv
    _raw_recv_into = socket.socket.recv_into
    _raw_send = socket.socket.send
    _raw_sendall = socket.socket.sendall

    def pending(self) -> int:
        """Bytes received and decoded but unread (a session's; 0 if plain): check before ``select()``."""
        return 0

    # These four are on every message's path, so the common case is kept to attribute reads.

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Like ``socket.recv``; raises ``HostChanged`` if the host died while waiting."""
        if self._unusual:
            self._before_io(reading=True)
        epoch, record = self._epoch, self._record
        try:
            data = self._raw_recv(bufsize, flags)
        except _LOST as exc:
            self._raise_if_host_changed(epoch, record, exc)
            raise
        if not data and bufsize > 0:
            self._raise_if_host_changed(epoch, record, None)
        return data

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Like ``socket.recv_into``; raises ``HostChanged`` if the host died while waiting."""
        if self._unusual:
            self._before_io(reading=True)
        epoch, record = self._epoch, self._record
        try:
            count = self._raw_recv_into(buffer, nbytes, flags)
        except _LOST as exc:
            self._raise_if_host_changed(epoch, record, exc)
            raise
        if count == 0 and (nbytes or memoryview(buffer).nbytes) > 0:
            self._raise_if_host_changed(epoch, record, None)
        return count

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        """Like ``socket.send``; if the host died, sends to the new host instead."""
        while True:
            if self._unusual:
                self._before_io(reading=False)
            epoch = self._epoch
            try:
                return self._raw_send(data, flags)
            except _LOST:
                if not self._recover(epoch):
                    raise

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        """Like ``socket.sendall``; if the host died, sends everything again to the new host."""
        while True:
            if self._unusual:
                self._before_io(reading=False)
            epoch = self._epoch
            try:
                self._raw_sendall(data, flags)
            except _LOST:
                if not self._recover(epoch):
                    raise
            else:
                return

    # -- recovery ------------------------------------------------------------

    def _before_io(self, *, reading: bool) -> None:
        """Raise if the channel was closed; reconnect first if this is a forked child's copy."""
        if self._channel_closed:
            raise ChannelClosed(self._owner.name if self._owner else "?")
        if self._stale:
            record = self._record
            if self._recover(self._epoch, forked=True) and reading:
                raise self._host_changed(record)

    def _raise_if_host_changed(
        self, epoch: int, record: HostRecord | None, exc: BaseException | None
    ) -> None:
        if self._recover(epoch):
            raise self._host_changed(record) from exc

    def _host_changed(self, old: HostRecord | None) -> HostChanged:
        owner = self._owner
        return HostChanged(
            owner.name if owner else "?", None if old is None else old.generation, self.host_generation
        )

    def _recover(self, epoch: int, *, forked: bool = False) -> bool:
        """After a lost connection: move to the new host's and return True, or False for a plain EOF.

        Raises ``ChannelClosed`` if the channel was closed, ``ChannelTimeout`` if
        no host appeared within the timeout the socket was connected with.
        """
        owner = self._owner
        if owner is None:
            return False
        with self._recover_lock:
            if self._channel_closed or owner.closed:
                raise ChannelClosed(owner.name)
            if self._epoch != epoch:
                return True  # another thread already moved this socket to the new host
            if self._peer_closed or not owner.auto_reconnect:
                return False
            timeout = wait_for_new_host(self._timeout)
            old = self._record
            # forked: the parent's host is as good as ever; only our copy of its connection is gone
            found = owner.reopen(timeout) if forked else owner.recover(old, timeout)
            if found is None and self._kicked:  # we ended it, not its handler: its host serves again
                found = owner.reopen(timeout)
            if found is None:
                self._peer_closed = True  # the host serves on: its handler closed the connection
                return False
            self._move_to(*found, owner.name)
            _LOGGER.info(
                "channel %r: socket reconnected to host pid %d (generation %s -> %d)",
                owner.name,
                found[1].pid,
                None if old is None else old.generation,
                found[1].generation,
            )
            return True

    def _move_to(self, connection: Connection, record: HostRecord, name: str) -> None:
        """Take ``connection`` over: its descriptor ``dup2``-ed onto ours, its session ours.

        Not once the channel closed us (ChannelClosed), and never while we close (``_fd_lock``):
        a closed descriptor's number is free, and whatever opened it since would get the connection.
        """
        fresh, session = connection
        try:
            with self._fd_lock:
                if self._channel_closed:
                    raise ChannelClosed(name)
                os.dup2(fresh.fileno(), self.fileno())
                self.settimeout(self.gettimeout())  # the new description starts blocking; reapply our mode
        finally:
            fresh.close()
        self._session, self._record = session, record
        self._stale = self._kicked = False
        self._unusual = self._channel_closed
        self._epoch += 1

    # -- what the channel tells its sockets ----------------------------------------

    def _on_channel(self, event: Event, record: HostRecord | None = None) -> None:
        """Act on what the channel tells every socket it made (``Event``)."""
        if event == "kick":
            self._kick(record)
        elif event == "close":
            self._close_for_channel()
        else:
            self._detach_after_fork()

    def _kick(self, record: HostRecord | None) -> None:
        """End our connection to ``record``'s host, which lost its claim: a blocked read wakes and recovers.

        Skipped if another thread is moving the socket right now (it is leaving that host anyway).
        """
        if not self._recover_lock.acquire(blocking=False):
            return
        try:
            if self._record == record and self.fileno() >= 0:
                self._kicked = True
                with contextlib.suppress(OSError):
                    self.shutdown(socket.SHUT_RDWR)
        finally:
            self._recover_lock.release()

    def _close_for_channel(self) -> None:
        """Wake any blocked call (it raises ChannelClosed) and close: the channel was closed."""
        self._channel_closed = self._unusual = True
        with self._fd_lock:
            if self.fileno() >= 0:
                with contextlib.suppress(OSError):
                    self.shutdown(socket.SHUT_RDWR)
                self.close()

    def close(self) -> None:
        """Close the socket; a move to the next host's connection on another thread finishes first."""
        with self._fd_lock:
            super().close()

    def _detach_after_fork(self) -> None:
        """In a forked child: drop our copy of the parent's connection; reconnect on first use."""
        if self.fileno() < 0:
            return
        placeholder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.dup2(placeholder.fileno(), self.fileno())
        finally:
            placeholder.close()
        self._recover_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._fd_lock = threading.RLock()
        self._session = None
        self._stale = self._unusual = True

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ChannelSocket cannot be pickled; call channel.connect() in the other process")


class SessionChannelSocket(ChannelSocket):
    """A ChannelSocket whose bytes pass through a session (TLS, records): its four I/O calls go through it."""

    def pending(self) -> int:
        session = self._session
        return 0 if session is None else session.pending()

    def _raw_recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        with self._read_lock:  # one reader at a time: two would feed the session chunks out of order
            while True:
                session = self._session
                if session is None:
                    return 0
                try:
                    count = session.read_into(buffer, nbytes, flags)
                except ConnectionAbortedError:  # the session refused what came (a record failed its tag)
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(self, socket.SHUT_RDWR)
                    raise
                if count is not None:
                    return count
                session.flush(self)
                data = socket.socket.recv(self, _CHUNK)  # the descriptor itself, not our override
                if not data:
                    return 0
                # Another thread may have moved us meanwhile: these are the new connection's bytes.
                if (current := self._session) is None:
                    return 0
                current.feed(data)

    def _raw_recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        return bytes(buffer[: self._raw_recv_into(buffer, bufsize, flags)])

    def _raw_send(self, data: ReadableBuffer, flags: int = 0) -> int:  # noqa: ARG002 - as TLS sockets do
        self._raw_sendall(view := memoryview(data).cast("B"))
        return view.nbytes

    def _raw_sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if (session := self._session) is None:
            raise BrokenPipeError("no connection")
        session.sendall(self, data, flags)

    def _not_through_session(self, *args: object, **kwargs: object) -> NoReturn:  # noqa: ARG002
        raise ChannelError(
            "this call bypasses the session (TLS, records); use recv/send/sendall or makefile()"
        )

    sendfile = recvmsg = recvmsg_into = sendmsg = _not_through_session
    recvfrom = recvfrom_into = sendto = dup = _not_through_session


def socket_maker(owner: SocketOwner, record: HostRecord, timeout: float | None) -> SocketMaker:
    """Return what builds a new connection's socket as a ChannelSocket following ``owner``'s host."""
    return functools.partial(_new_socket, owner, record, timeout)


def _new_socket(  # noqa: PLR0913, PLR0917 - the owner's three (bound by socket_maker), then a SocketMaker's
    owner: SocketOwner,
    record: HostRecord,
    timeout: float | None,
    family: int,
    type: int,
    proto: int = -1,
    fileno: int | None = None,
    session: Session | None = None,
) -> ChannelSocket:
    kind = ChannelSocket if session is None else SessionChannelSocket
    return kind(family, type, proto, fileno, _owner=owner, _record=record, _timeout=timeout, _session=session)
