"""The client side of a RequestChannel: request connections, and this process's subscription.

Requests: each caller thread borrows a connection of its own (kept for reuse),
so at most one request is in flight per connection and the host answers it in
that connection's handler thread: no thread hand-off on either side. If the
connection moves to a new host before the answer came, the frame is sent
again: at-least-once.

Subscriptions: the subscriber socket re-subscribes with the resume flag after a
host change; the new host replays what was published to it in its term, and
copies of a message (resent, or replayed) are dropped by their ``msgid``.
Callbacks run on ``ipchannel-subscriber:NAME``.
"""

from __future__ import annotations

import itertools
import logging
import math
import select
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._core.socket import ChannelSocket, reconnect_within
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, HostChanged, ProtocolError
from .._framing import FrameReader
from .._timing import Deadline
from .wire import ACK, DEDUP_WINDOW, ENVELOPE, MESSAGE, PUBLISH_ID, SUBSCRIBE, build_frame, parse_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._codecs import Codec
    from .._core.channel import Channel

__all__ = ["Requester", "Subscriber"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 2.0
_RESUME_TRY = 1.0  # seconds per attempt of a forked child's background re-subscription


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
        """Start afresh (also in a forked child, where the parent's lock may be held)."""
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # one new connection at a time, see _open
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
        if not self._opening.acquire(timeout=-1 if math.isinf(remaining) else remaining):
            raise self._timeout_error(deadline, "no request connection could be opened")
        try:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
            return _Connection(self._channel.connect(timeout=deadline.remaining()), self._max_size)
        finally:
            self._opening.release()

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
                name = self._channel.name
                raise ChannelError(f"the host of channel {name!r} closed the request connection") from None


class Subscriber:
    """The subscriber connection of this process and the thread that runs the callbacks.

    Every published message carries its publisher's id and number (``PUBLISH_ID``);
    the last ``DEDUP_WINDOW`` ids seen are remembered, so a message resent after
    a failover (the old host fanned it out, then died before acknowledging) or
    replayed to a resuming subscriber is delivered once.
    """

    def __init__(
        self,
        channel: Channel,
        codec: Codec,
        max_size: int,
        timeout_error: Callable[[Deadline, str], ChannelTimeout],
    ) -> None:
        self._channel, self._codec, self._max_size = channel, codec, max_size
        self._timeout_error = timeout_error
        self._callbacks: list[Callable[[Any], object]] = []
        self.reset()

    def reset(self) -> None:
        """Start afresh; callbacks are kept (a forked child subscribes again, see ``resume_after_fork``)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.generation: int | None = None  # of the host our subscription is attached to
        self._seen: set[bytes] = set()
        self._seen_order: deque[bytes] = deque()

    @property
    def active(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Callable[[Any], object], deadline: Deadline) -> None:
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                try:
                    self._start(deadline)
                except BaseException:
                    self._callbacks.remove(callback)  # not subscribed: leave no trace
                    raise

    def ensure_running(self, deadline: Deadline) -> None:
        """Subscribe again if this process has callbacks but no live subscriber thread (fork, lost link).

        Waits for another thread doing the same no longer than ``deadline``.
        """
        remaining = deadline.remaining()
        if not self._lock.acquire(timeout=-1 if math.isinf(remaining) else remaining):
            raise self._timeout(deadline, "another thread is still subscribing")
        try:
            if self._callbacks and (self._thread is None or not self._thread.is_alive()):
                self._start(deadline, resume=self._thread is not None)
        finally:
            self._lock.release()

    def _timeout(self, deadline: Deadline, detail: str) -> ChannelTimeout:
        return self._timeout_error(deadline, detail)

    def resume_after_fork(self) -> None:
        """In a forked child with callbacks: subscribe again in the background, now, not at first use.

        A gunicorn ``--preload`` worker that only listens must get messages too.
        """
        if self._callbacks:
            threading.Thread(
                target=self._resume, name=f"ipchannel-subscriber:{self._channel.name}", daemon=True
            ).start()

    def _resume(self) -> None:
        _platform.leave_signals_to_the_application()
        while True:  # as long as it takes for a host, in short tries: a caller may need the lock meanwhile
            try:
                self.ensure_running(Deadline(_RESUME_TRY))
            except ChannelTimeout:
                continue
            except ChannelClosed:
                return
            except Exception:
                _LOGGER.exception("channel %r: cannot subscribe again after fork", self._channel.name)
            return

    def _start(self, deadline: Deadline, *, resume: bool = False) -> None:
        sock = self._channel.connect(timeout=deadline.remaining())
        reader = FrameReader(sock, self._max_size)
        try:
            self._subscribe_within(sock, reader, deadline, resume=resume)
        except BaseException:
            sock.close()
            raise
        self._thread = threading.Thread(
            target=self._run,
            args=(sock, reader),
            name=f"ipchannel-subscriber:{self._channel.name}",
            daemon=True,
        )
        self._thread.start()

    def _subscribe_within(
        self, sock: ChannelSocket, reader: FrameReader, deadline: Deadline, *, resume: bool
    ) -> None:
        """Subscribe before the deadline, through the next host if this one dies before acknowledging."""
        try:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise TimeoutError  # noqa: TRY301 - turned into ChannelTimeout below, with the others
                sock.settimeout(None if math.isinf(remaining) else remaining)
                try:
                    with reconnect_within(None if math.isinf(remaining) else remaining):
                        self._subscribe(sock, reader, resume=resume)
                    break
                except HostChanged:
                    _LOGGER.debug(
                        "channel %r: the host changed before acknowledging; subscribing again",
                        self._channel.name,
                    )
        except ChannelError:
            raise
        except TimeoutError:
            raise self._timeout(deadline, "the host did not acknowledge the subscription") from None
        except EOFError as exc:
            name = self._channel.name
            raise ChannelError(f"channel {name!r}: the host closed the subscription connection") from exc
        sock.settimeout(None)

    def _subscribe(self, sock: ChannelSocket, reader: FrameReader, *, resume: bool) -> None:
        """Send SUBSCRIBE and wait for its ACK; messages arriving before it are delivered."""
        reader.clear()  # after a host change: a partial frame from the old host is worthless
        sock.sendall(build_frame(SUBSCRIBE, 1, b"\x01" if resume else b"\x00"))
        _LOGGER.debug(
            "channel %r: subscription sent to host pid %s; waiting for its acknowledgement",
            self._channel.name,
            self._channel.host_pid,
        )
        while True:
            kind, _ident, payload = parse_frame(reader.read())
            if kind == ACK:
                self.generation = sock.host_generation
                return
            self._deliver(payload)

    def _run(self, sock: ChannelSocket, reader: FrameReader) -> None:
        _platform.leave_signals_to_the_application()
        with reconnect_within(None):  # wait as long as it takes for a new host; close() interrupts
            while True:
                try:
                    kind, _ident, payload = parse_frame(reader.read())
                    if kind == MESSAGE:
                        self._deliver(payload)
                    continue
                except HostChanged:
                    pass
                except ChannelClosed:
                    return
                except (EOFError, OSError, ProtocolError) as exc:
                    self._lost(exc)
                    return
                try:
                    self._resubscribe(sock, reader)
                except ChannelClosed:
                    return
                except (EOFError, OSError, ProtocolError) as exc:
                    self._lost(exc)
                    return

    def _lost(self, exc: BaseException) -> None:
        if not self._channel.closed:
            _LOGGER.warning(
                "channel %r: subscription lost (%s: %s); it resumes at this process's next request or "
                "publish",
                self._channel.name,
                type(exc).__name__,
                exc,
            )

    def _resubscribe(self, sock: ChannelSocket, reader: FrameReader) -> None:
        while True:
            try:
                self._subscribe(sock, reader, resume=True)
            except HostChanged:
                continue
            _LOGGER.info("channel %r: re-subscribed after a host change", self._channel.name)
            return

    def _deliver(self, payload: bytes) -> None:
        if len(payload) < PUBLISH_ID.size:
            _LOGGER.warning("channel %r: dropping a published message without an id", self._channel.name)
            return
        ident = payload[: PUBLISH_ID.size]
        if self._already_seen(ident):
            return
        try:
            message = self._codec.loads(payload[PUBLISH_ID.size :])
        except Exception:
            _LOGGER.exception("channel %r: cannot decode a published message", self._channel.name)
            return
        for callback in list(self._callbacks):
            try:
                callback(message)
            except Exception:
                _LOGGER.exception("channel %r: subscriber callback %r raised", self._channel.name, callback)

    def _already_seen(self, ident: bytes) -> bool:
        """Remember ``ident``; True if it is among the last ``DEDUP_WINDOW`` (one thread at a time)."""
        seen = self._seen
        if ident in seen:
            return True
        seen.add(ident)
        order = self._seen_order
        order.append(ident)
        if len(order) > DEDUP_WINDOW:
            seen.discard(order.popleft())
        return False

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
