"""The socket ``connect()`` returns, and what its reads and writes do when the host changes.

A ``ChannelSocket`` is a real ``socket.socket`` (``makefile()``, ``settimeout()``,
selectors all work). When its connection is lost (EOF, reset, broken pipe) it
asks the channel whether the host it talked to is still serving:

- still serving: the handler closed the connection; plain socket behaviour;
- not serving, and ``auto_reconnect``: the channel finds the new host and the
  new connection is ``dup2``-ed onto the same file descriptor, so the object
  and its ``fileno()`` stay the same. ``send``/``sendall`` then deliver to the
  new host; ``recv``/``recv_into`` raise ``HostChanged`` (what the old host had
  not answered is lost).

Only ``recv``, ``recv_into``, ``send`` and ``sendall`` (and ``makefile()``, built
on them) take part; ``sendfile``, ``recvmsg`` and friends behave as on a plain socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

from .._errors import ChannelClosed, HostChanged
from .._timing import Deadline

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from .._seams.record import HostRecord

__all__ = ["ChannelSocket", "reconnect_within"]

_LOGGER = logging.getLogger("ipchannel")
_LOST = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_NO_OVERRIDE = object()
_override = threading.local()


class reconnect_within:  # noqa: N801 - used like a function: ``with reconnect_within(seconds):``
    """In this thread, bound a socket's wait for a new host by ``seconds`` instead of its connect timeout.

    Lets a layer with its own deadlines (the request layer) share one socket between threads.
    A class rather than ``@contextmanager``: it is on every request's path.
    """

    __slots__ = ("_previous", "_seconds")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._previous: object = _NO_OVERRIDE

    def __enter__(self) -> None:
        self._previous = getattr(_override, "seconds", _NO_OVERRIDE)
        _override.seconds = self._seconds

    def __exit__(self, *exc_info: object) -> None:
        _override.seconds = self._previous


_GATE_WAIT = 0.25  # longest a socket waits for another to find the next host before looking itself


class _Owner(Protocol):
    """What a ChannelSocket needs from its Channel."""

    auto_reconnect: bool

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def _still_serving(self, record: HostRecord) -> bool: ...

    def _moved_on_from(self, record: HostRecord) -> bool: ...

    #: held by the one socket at a time that looks for the next host after its connection ended
    _recovery_lock: threading.Lock

    def _open_connection(
        self, deadline: Deadline, avoid: HostRecord | None = None
    ) -> tuple[ChannelSocket, HostRecord]: ...


class ChannelSocket(socket.socket):
    """A connected AF_UNIX socket that follows its channel's host across failover.

    Returned by ``Channel.connect()``; not meant to be created directly. A socket
    made by ``dup()`` is a plain copy that does not follow the host.
    """

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        self._owner: _Owner | None = None
        self._record: HostRecord | None = None
        self._timeout: float | None = None
        self._epoch = 0
        self._stale = False  # set in a forked child: reconnect before first use
        self._peer_closed = False  # the host's handler closed this connection deliberately
        self._channel_closed = False
        self._unusual = False  # _stale or _channel_closed: the one flag the I/O calls test
        self._recover_lock = threading.Lock()

    def _attach(self, owner: _Owner, record: HostRecord, timeout: float | None) -> None:
        self._owner, self._record, self._timeout = owner, record, timeout

    @property
    def host_generation(self) -> int | None:
        """Generation of the host this socket is connected to."""
        return None if self._record is None else self._record.generation

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
        """Bytes already received and decrypted, waiting in the socket (TLS); 0 for a plain socket.

        Check it before ``select()``/``poll()``: such bytes do not make the descriptor readable.
        """
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
        """After a lost connection: reconnect to the new host and return True, or False for a plain EOF.

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
            old = self._record
            if forked:  # the parent's host is as good as ever; only our copy of its connection is gone
                self._reconnect(owner, old, avoid=None)
                return True
            # A host's death ends every connection to it at once. One socket of the channel at a time
            # finds the next host; the others then connect to it straight away, instead of all asking
            # the coordinator together: a herd of threads doing that holds the GIL for milliseconds.
            gate = owner._recovery_lock  # noqa: SLF001
            gated = gate.acquire(timeout=_GATE_WAIT)
            try:
                return self._recover_from(owner, old)
            finally:
                if gated:
                    gate.release()

    def _recover_from(self, owner: _Owner, old: HostRecord | None) -> bool:
        moved_on = old is not None and owner._moved_on_from(old)  # noqa: SLF001 - another socket found the next
        if not moved_on and old is not None and owner._still_serving(old):  # noqa: SLF001
            self._peer_closed = True
            return False
        # avoid=old: a dying host's listener can outlive its connections for a moment; never go back to it
        self._reconnect(owner, old, avoid=old)
        return True

    def _reconnect(self, owner: _Owner, old: HostRecord | None, avoid: HostRecord | None) -> None:
        override = getattr(_override, "seconds", _NO_OVERRIDE)
        timeout = self._timeout if override is _NO_OVERRIDE else cast("float | None", override)
        fresh, record = owner._open_connection(Deadline(timeout), avoid=avoid)  # noqa: SLF001
        try:
            os.dup2(fresh.fileno(), self.fileno())
            self._take_over(fresh)
        finally:
            fresh.close()
        self.settimeout(self.gettimeout())  # the new description starts blocking; reapply our mode
        self._record = record
        self._stale = False
        self._unusual = self._channel_closed
        self._epoch += 1
        _LOGGER.info(
            "channel %r: socket reconnected to host pid %d (generation %s -> %d)",
            owner.name,
            record.pid,
            None if old is None else old.generation,
            record.generation,
        )

    def _take_over(self, fresh: ChannelSocket) -> None:
        """Take the per-connection state of ``fresh``, whose descriptor was just dup2-ed onto ours (TLS)."""

    def _forget_connection(self) -> None:
        """Drop the per-connection state (a forked child's copy; TLS)."""

    # -- called by the channel -------------------------------------------------

    def _kick(self, record: HostRecord) -> None:
        """End our connection to ``record``'s host, which lost its claim: a blocked read wakes and recovers.

        Skipped if another thread is moving the socket right now (it is leaving that host anyway).
        """
        if not self._recover_lock.acquire(blocking=False):
            return
        try:
            if self._record == record and self.fileno() >= 0:
                with contextlib.suppress(OSError):
                    self.shutdown(socket.SHUT_RDWR)
        finally:
            self._recover_lock.release()

    def _close_for_channel(self) -> None:
        """Wake any blocked call (it raises ChannelClosed) and close: the channel was closed."""
        self._channel_closed = self._unusual = True
        if self.fileno() >= 0:
            with contextlib.suppress(OSError):
                self.shutdown(socket.SHUT_RDWR)
            self.close()

    def _detach_after_fork(self) -> None:
        """In a forked child: drop our copy of the parent's connection; reconnect on first use."""
        if self.fileno() < 0:
            return
        placeholder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.dup2(placeholder.fileno(), self.fileno())
        finally:
            placeholder.close()
        self._recover_lock = threading.Lock()
        self._forget_connection()
        self._stale = self._unusual = True

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ChannelSocket cannot be pickled; call channel.connect() in the other process")
