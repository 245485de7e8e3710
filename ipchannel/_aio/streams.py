"""Message streams: ``async for message in channel.messages()``, fed by the process's one subscription.

The subscription's callback runs on ``ipchannel-subscriber:NAME`` and hands each message
to every open stream (``Streams.dispatch``), which passes it to its own event loop with
``call_soon_threadsafe``; the body of ``async for`` runs on that loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from .._timing import Deadline

if TYPE_CHECKING:
    from collections.abc import Callable

    from .channel import AsyncRequestChannel
    from .runner import Runner

__all__ = ["MessageStream", "Sink", "Streams"]

_LOGGER = logging.getLogger("ipchannel")


class Sink(NamedTuple):
    """What the subscriber thread calls on a stream: a message for it, or the end."""

    post: Callable[[Any], None]
    end: Callable[[], None]


class Streams:
    """The open message streams of one AsyncRequestChannel, fed by its one subscription."""

    def __init__(
        self, runner: Runner, subscribe: Callable[[Deadline], None], unsubscribe: Callable[[], None]
    ) -> None:
        self._runner, self._subscribe, self._unsubscribe = runner, subscribe, unsubscribe
        self.reset()

    def reset(self) -> None:
        """None open, a fresh lock (a forked child: the streams belong to the parent's loop)."""
        self._lock = threading.Lock()
        self._sinks: list[Sink] = []

    async def start(self, sink: Sink, timeout: float | None) -> None:
        """Feed ``sink`` from now on: subscribe (once per process) in a worker."""
        with self._lock:
            self._sinks.append(sink)
        try:
            await self._runner.call(self._subscribe, Deadline(timeout))
        except BaseException:
            self.drop(sink)
            raise

    def drop(self, sink: Sink) -> None:
        """Feed ``sink`` no more; the last stream closed ends the process's subscription (without waiting)."""
        with self._lock:
            if sink not in self._sinks:
                return
            self._sinks.remove(sink)
            last = not self._sinks
        if last:
            self._unsubscribe()

    def dispatch(self, message: Any) -> None:
        """Hand ``message`` to every stream (runs on ``ipchannel-subscriber:NAME``)."""
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.post(message)

    def end(self) -> None:
        """End every stream (the channel closes)."""
        with self._lock:
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.end()


class MessageStream:
    """Messages published on a channel, as an async iterator; see ``AsyncRequestChannel.messages``.

    Ends (``StopAsyncIteration``) after ``aclose()`` or the channel's close, or once its
    event loop is closed.
    """

    def __init__(
        self,
        channel: AsyncRequestChannel,
        timeout: float | None,
        max_pending: int,
        *,
        _streams: Streams | None = None,
    ) -> None:
        self._name, self._timeout, self._max_pending = channel.channel.name, timeout, max_pending
        # made by channel.messages(), which says where streams register; else asked of the channel
        self._streams = _streams or channel._streams  # noqa: SLF001 - the stream's own channel
        self._sink = Sink(self._post, self._post_end)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.dropped = 0  #: messages dropped because ``max_pending`` were waiting to be read

    async def start(self) -> None:
        """Subscribe (once per process) and receive from now on; idempotent."""
        if self._loop is not None or self._ended:
            return
        self._loop = asyncio.get_running_loop()
        try:
            await self._streams.start(self._sink, self._timeout)
        except BaseException:
            self._loop = None
            raise

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Any:
        await self.start()
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop receiving; what was not read yet is dropped."""
        self._streams.drop(self._sink)
        self._pending.clear()
        self._end()

    async def __aenter__(self) -> MessageStream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- called on the subscriber thread ---------------------------------------------

    def _post(self, message: Any) -> None:
        self._call_soon(self._push, message)

    def _post_end(self) -> None:
        self._call_soon(self._end)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # its loop is closed: nobody reads this stream any more
            self._streams.drop(self._sink)

    # -- on the stream's loop -------------------------------------------------------------

    def _push(self, message: Any) -> None:
        if self._ended:
            return
        self._pending.append(message)
        if len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _LOGGER.warning(
                    "channel %r: a message stream fell %d messages behind; %d dropped so far",
                    self._name,
                    self._max_pending,
                    self.dropped,
                )
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
