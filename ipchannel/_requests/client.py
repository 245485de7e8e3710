"""The client side of a RequestChannel's requests: this process's request connections.

Each caller thread borrows a connection of its own (kept for reuse),
so at most one request is in flight per connection and the host answers it in
that connection's handler thread: no thread hand-off on either side. If the
connection moves to a new host before the answer came, the frame is sent
again: at-least-once. A connection the host ends before it answers (a host that is going
away ends its connections before another may host) is dropped, and the frame is sent
again on a new one, a few times, within the caller's deadline.

The subscription is ``subscriber``'s.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import select
import threading
from typing import TYPE_CHECKING

from .._core.reconnect import reconnect_within
from .._errors import ChannelError, ChannelTimeout, HostChanged
from .._framing import FrameReader
from .._locks import release_if_held
from .resend import Ended, with_resends
from .wire import ENVELOPE, build_frame, parse_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.channel import Channel
    from .._core.socket import ChannelSocket
    from .._timing import Deadline

__all__ = ["Requester"]

_LOGGER = logging.getLogger("ipchannel")


class _Connection:
    """One request connection, its reader, and a poll object to wait on it with a deadline."""

    __slots__ = ("poller", "reader", "sock")

    def __init__(self, sock: ChannelSocket, max_size: int) -> None:
        self.sock = sock
        self.reader = FrameReader(sock, max_size)
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)  # dup2 on reconnect keeps the fd number


class Requester:
    """The request connections of this process: one per concurrent caller, reused.

    A call takes an idle connection (or opens one), sends its frame and reads
    its own answer in its own thread: no hand-off between threads on either
    side, since the host answers each connection in that connection's handler
    thread. Concurrent callers use different connections, so the host serves
    them at once.
    """

    def __init__(
        self, channel: Channel, max_size: int, timeout_error: Callable[[Deadline, str], ChannelTimeout]
    ) -> None:
        self._channel, self._max_size, self._timeout_error = channel, max_size, timeout_error
        self.reset()

    def reset(self) -> None:
        """Start afresh (also in a forked child, where the parent's lock may be held).

        A child closes its copies of the parent's idle connections (the channel has already put
        a placeholder in their place): dropped unclosed, each was a ResourceWarning.
        """
        for conn in getattr(self, "_idle", ()):
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._lock = threading.Lock()
        self._opening = threading.RLock()  # one new connection at a time, see _open (released if held)
        self._idle: list[_Connection] = []
        self._ids = itertools.count(1)

    def call(self, kind: int, payload: bytes, deadline: Deadline) -> tuple[int, bytes] | None:
        """Send one frame and return the answer's (kind, payload), or None at the deadline."""
        size = ENVELOPE.size + len(payload)
        if size > self._max_size:
            raise ValueError(
                f"the encoded message is {len(payload)} bytes, over this channel's max_message_size"
                f" ({self._max_size - ENVELOPE.size} bytes for a message)"
            )
        ident = next(self._ids)
        frame = build_frame(kind, ident, payload)
        return with_resends(
            lambda: self._call_once(ident, frame, deadline),
            deadline,
            self._channel.name,
            "request connection",
        )

    def _call_once(self, ident: int, frame: bytes, deadline: Deadline) -> tuple[int, bytes] | None:
        """Send ``frame`` on a connection and return the answer; ``Ended`` if the host ended it first."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open(deadline)
        answer = None
        try:
            with reconnect_within(deadline.remaining()):
                answer = self._exchange(conn, ident, frame, deadline)
        except OSError as exc:
            if isinstance(exc, ChannelError):  # ChannelTimeout, RuntimeDirError...: already clear
                raise
            if isinstance(exc, ConnectionError):  # reset, broken pipe: by a host that is going away
                raise Ended(str(exc)) from exc
            name = self._channel.name
            raise ChannelError(f"channel {name!r}: the request connection failed: {exc}") from exc
        finally:
            if answer is None:  # timed out or failed: a late answer could still arrive; never reuse
                conn.sock.close()
            else:
                with self._lock:
                    self._idle.append(conn)
        return answer

    def _open(self, deadline: Deadline) -> _Connection:
        """Open a request connection, one thread at a time, or take one another call freed meanwhile.

        A burst of callers opening connections together is a herd of threads each running
        Python for a while: it holds the GIL for milliseconds and makes an event loop in
        this process late (``ipchannel.aio``). One at a time, the others sleep meanwhile.
        """
        remaining = deadline.remaining()
        try:  # taken inside, see _locks
            if not self._opening.acquire(timeout=-1 if math.isinf(remaining) else remaining):
                raise self._timeout_error(deadline, "no request connection could be opened")
            with self._lock:
                if self._idle:
                    return self._idle.pop()
            return _Connection(self._channel.connect(timeout=deadline.remaining()), self._max_size)
        finally:
            release_if_held(self._opening)

    def _exchange(
        self, conn: _Connection, ident: int, frame: bytes, deadline: Deadline
    ) -> tuple[int, bytes] | None:
        sock, reader = conn.sock, conn.reader
        epoch = sock.reconnects
        sock.sendall(frame)  # if the host died, this reconnects and delivers to the new host
        while True:
            if sock.reconnects != epoch:  # a partial frame from the old host is worthless
                reader.clear()
                epoch = sock.reconnects
            while (answer := reader.next_frame()) is not None:
                kind, answer_ident, payload = parse_frame(answer)
                if answer_ident == ident:
                    return kind, payload
                # else a late duplicate of an earlier, resent frame (at-least-once)
            remaining = deadline.remaining()
            if remaining <= 0:
                return None
            if not sock.pending() and not conn.poller.poll(
                None if math.isinf(remaining) else math.ceil(remaining * 1000)
            ):
                continue
            try:
                reader.fill()
            except HostChanged:
                _LOGGER.debug("channel %r: resending an unanswered frame", self._channel.name)
                reader.clear()
                epoch = sock.reconnects
                sock.sendall(frame)
            except EOFError:  # the host itself closed our connection
                raise Ended("it closed the connection before answering") from None
