"""What the host has yet to send one connection: a bounded queue that never blocks the sender.

Every frame the host sends goes through its connection's outbox: a publisher (``fan_out``:
a publishing handler thread, a SharedDict's committer), a reply, a deferred answer
settled by another thread (a SharedDict's committer answering a stopped writer) only
queue. While the queue is empty the frame is written at once, without blocking
(``MSG_DONTWAIT``), which is what almost every send is; what the socket does not take
waits here and is written by the outbox's own thread (``ipchannel-outbox:NAME``), in
order. A connection (a subscriber, mostly) that falls further behind than ``Limits`` (bytes queued behind the
frame being written, or that frame's age: Redis's ``client-output-buffer-limit pubsub`` and Kafka's
``replica.lag.time.max.ms``) is cut off: its connection is shut down, the queue
dropped, a WARNING names its pid. It subscribes again once it runs, and learns what it
missed (``wire.SUBSCRIBED``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _platform

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_LIMITS", "Limits", "Outbox"]

_LOGGER = logging.getLogger("ipchannel")
_DONTWAIT: int | None = getattr(socket, "MSG_DONTWAIT", None)
_JOIN_TIMEOUT = 2.0
_IDLE = 10.0  # seconds the drain thread waits for more to write before it ends (put starts another)


@dataclass(frozen=True)
class Limits:
    """How far one subscriber may fall behind before the host cuts it off."""

    #: bytes queued for it and not yet written to its socket
    max_backlog: int
    #: seconds the oldest queued frame has waited
    max_lag: float


DEFAULT_LIMITS = Limits(max_backlog=32 * 1024 * 1024, max_lag=2.0)


class Outbox:
    """One connection's queue of frames, and the thread that drains it (started when needed).

    ``who`` names the connection in the warning that cuts it off (``subscribed`` changes it).
    """

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by RequestHost
        self,
        name: str,
        conn: socket.socket,
        send_lock: threading.Lock,
        who: str,
        limits: Limits,
        on_cut: Callable[[], None],
    ) -> None:
        self._name, self._conn, self._who, self._limits, self._on_cut = name, conn, who, limits, on_cut
        self._again = "connects"  # what it does once cut off: see ``subscribed``
        self._cond = threading.Condition(send_lock)  # also what the connection's replies are sent under
        self._frames: deque[tuple[memoryview, float, int]] = deque()  # (rest, since, number); head: writing
        self._bytes = 0
        self._closed = False
        self._dontwait = _DONTWAIT is not None and conn.gettimeout() is None
        self._thread: threading.Thread | None = None

    def subscribed(self, who: str) -> None:
        """Say that the connection is a subscription, of ``who`` (named when it is cut off)."""
        with self._cond:
            self._who, self._again = who, "subscribes"

    def put(self, frame: bytes, number: int = 0) -> bool:
        """Send or queue ``frame`` (message ``number``, 0 for other frames) without blocking.

        False if the connection is (now) cut off or gone.
        """
        with self._cond:
            if self._closed:
                return False
            now = time.monotonic()
            if self._frames:
                head, since, _ = self._frames[0]
                behind = self._bytes - len(head) + len(frame)  # the frame being written is not counted
                if behind > self._limits.max_backlog or now - since > self._limits.max_lag:
                    self._cut(f"{behind} bytes queued, the oldest for {now - since:.1f} s")
                    return False
                self._frames.append((memoryview(frame), now, number))
                self._bytes += len(frame)
                return True
            sent = self._send_now(frame)
            if sent is None:
                return False
            if sent < len(frame):  # the rest is written by the thread, whatever its size
                self._frames.append((memoryview(frame)[sent:], now, number))
                self._bytes += len(frame) - sent
                self._start()
                self._cond.notify_all()
            return True

    def _send_now(self, frame: bytes) -> int | None:
        """Write what the socket takes now; None if the connection failed (call with the lock)."""
        if not self._dontwait:
            return 0
        try:
            return self._conn.send(frame, _DONTWAIT)  # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return 0
        except ValueError:  # a socket that takes no flags (TLS): always through the queue
            self._dontwait = False
            return 0
        except OSError:
            self._closed = True
            return None

    def _start(self) -> None:
        if self._thread is None:
            thread = threading.Thread(target=self._drain, name=f"ipchannel-outbox:{self._name}", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                if threading.main_thread().is_alive():
                    raise
                self._drain_here()  # Python 3.12 starts no thread once the main thread ended
                return
            self._thread = thread

    def _drain_here(self) -> None:
        """Write what is queued in this thread, blocking (call with the lock): an exiting process."""
        while self._frames and not self._closed:
            head = self._frames[0][0]
            try:
                self._conn.sendall(head)
            except OSError:
                self._failed()
                return
            self._written(head)

    def _drain(self) -> None:
        _platform.leave_signals_to_the_application()
        while True:
            with self._cond:
                while not self._frames and not self._closed:
                    if not self._cond.wait(_IDLE) and not self._frames and not self._closed:
                        self._thread = None  # idle: a later backlog starts another
                        return
                if self._closed:
                    return
                head = self._frames[0][0]
            try:
                self._conn.sendall(head)  # blocks only this thread
            except OSError:
                with self._cond:
                    self._failed()
                return
            with self._cond:
                self._written(head)

    def _written(self, head: memoryview) -> None:
        """Drop the head frame, written (call with the lock); wake ``flush`` and ``wait_written``."""
        if self._frames:  # else cut off meanwhile: the queue was dropped
            self._frames.popleft()
            self._bytes -= len(head)
        self._cond.notify_all()

    def _failed(self) -> None:
        """Close after a failed write (call with the lock): nothing more goes out."""
        self._closed = True
        self._frames.clear()
        self._cond.notify_all()

    def wait_written(self, number: int) -> None:
        """Return once no frame up to message ``number`` waits here: written to the socket, or cut off.

        A connection whose oldest frame has waited ``max_lag`` seconds is cut off here: the
        host acknowledges a message only once every subscriber's socket has it (on one machine,
        a finished write leaves it with the reader, which reads it even if the host dies).
        """
        with self._cond:
            while not self._closed and self._frames and self._frames[0][2] <= number:
                waited = time.monotonic() - self._frames[0][1]
                if waited >= self._limits.max_lag:
                    self._cut(f"message {number} has waited {waited:.1f} s")
                    return
                self._cond.wait(self._limits.max_lag - waited)

    def flush(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for what is queued to be written (the peer stopped sending)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or not self._frames, timeout)

    def _cut(self, why: str) -> None:
        """Cut a subscriber off (call with the lock): its connection ends, its queue is dropped."""
        _LOGGER.warning(
            "channel %r: %s fell behind (%s): cut off; it %s again once it runs",
            self._name,
            self._who,
            why,
            self._again,
        )
        self._closed = True
        self._frames.clear()
        self._bytes = 0
        self._cond.notify_all()
        self._on_cut()

    def close(self) -> None:
        """Stop the thread (the connection ends); what is queued is dropped."""
        with self._cond:
            self._closed = True
            self._frames.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
