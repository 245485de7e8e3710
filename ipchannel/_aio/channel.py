"""AsyncRequestChannel: RequestChannel for asyncio code, never blocking the event loop.

Each ``await request()`` / ``await publish()`` runs the blocking, failover-tested
``RequestChannel`` call in a worker of this channel (``runner``): one call per
worker at a time, so ``workers`` bounds the requests in flight from this process;
more wait their turn (within their timeout, counted from the ``await``).
Published messages reach ``async for message in channel.messages()`` through one
subscription per process: its callback (``ipchannel-subscriber:NAME``) hands each
message to every open stream's loop with ``call_soon_threadsafe`` (``streams``).

Threads: ``on_request`` runs in the host, in a handler thread
(``ipchannel-handler:NAME``), as for RequestChannel; blocking calls in
``ipchannel-aio:NAME``; closing in ``ipchannel-aio-close:NAME``; the code after
each ``await`` and the body of ``async for`` on your event loop.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any

from .. import _fork
from .._core.port import port_of
from .._framing import DEFAULT_MAX_SIZE
from .._requests.channel import RequestChannel, ensure_subscribed
from .._timing import Deadline, validate_timeout
from .runner import DEFAULT_WORKERS, Runner, validate_workers
from .streams import MessageStream, Streams

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import Callable
    from types import TracebackType

    from .._codecs import Codec
    from .._core.channel import Channel

__all__ = ["AsyncRequestChannel", "busy_error", "check_plain_function", "time_left"]

_LOGGER = logging.getLogger("ipchannel")
_BUSY = "every ipchannel-aio worker thread was busy"


def check_plain_function(name: str, func: object) -> None:
    """Refuse a coroutine function where ipchannel calls ``func`` in one of its threads."""
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)):  # noqa: B004
        raise TypeError(
            f"{name} runs in a thread of ipchannel, not on your event loop: pass a plain function, "
            f"not a coroutine function ({func!r})"
        )


def busy_error(channel: Channel, deadline: Deadline) -> BaseException:
    """Return the ChannelTimeout of a call that waited for a worker until its deadline."""
    return port_of(channel).timeout_error(deadline, _BUSY)


def time_left(channel: Channel, deadline: Deadline) -> float | None:
    """Return the timeout left for a blocking call that waited for a worker; ChannelTimeout if none is."""
    if deadline.timeout is None:
        return None
    remaining = deadline.remaining()
    if remaining <= 0:
        raise busy_error(channel, deadline)
    return remaining


class AsyncRequestChannel(_fork.ProcessBound):
    """Request/reply and publish/subscribe for asyncio code; the loop never blocks on the channel.

    ::

        channel = AsyncRequestChannel("echo", on_request)   # on_request: a plain function, run in the host
        async with channel:
            print(await channel.request("hi"))              # from whichever process hosts
            async with channel.messages() as stream:
                await channel.publish("hello")
                async for message in stream:
                    print(message)                          # hello
                    break

    :param workers: threads running this channel's blocking calls (1-256, default 8): at most
        that many requests of this process are in flight at once; more wait for a free one.
    :param on_request: as for ``RequestChannel``: it runs in a handler thread of the host, so it
        must not be a coroutine function.

    The other parameters (``name``, ``codec``, ``runtime_dir``, ``max_message_size``,
    ``authkey``, ``may_host``, ``coordinator``, ``listen``, ``advertise``, ``ttl``,
    ``ssl_context``, ``server_hostname``, ``ssl_verify``) are as for ``RequestChannel``.
    """

    _kind = "AsyncRequestChannel"

    def __init__(  # noqa: PLR0913 - keyword-only options, as RequestChannel has
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        *,
        workers: int = DEFAULT_WORKERS,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
        authkey: bytes | None = None,
        may_host: bool = True,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        server_hostname: str | None = None,
        ssl_verify: bool = True,
    ) -> None:
        check_plain_function("on_request", on_request)
        workers = validate_workers(workers)
        self._sync = RequestChannel(
            name,
            on_request,
            codec=codec,
            runtime_dir=runtime_dir,
            max_message_size=max_message_size,
            authkey=authkey,
            may_host=may_host,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            ssl_verify=ssl_verify,
            _kind=self._kind,  # errors name the class the user holds
        )
        self._runner = Runner(self._sync.channel.name, self._kind, workers)
        self._subscribed = False  # kept after fork: RequestChannel resubscribes our callback there
        self._streams = Streams(self._runner, self._subscribe, self._unsubscribe)
        self._subscribe_lock = threading.Lock()
        _fork.register(self)

    @property
    def channel(self) -> Channel:
        """The underlying ``Channel`` (its properties are plain reads; ``join()`` and ``close()`` block)."""
        return self._sync.channel

    @property
    def sync(self) -> RequestChannel:
        """The blocking ``RequestChannel`` this wraps, for threads of your own (never on the loop)."""
        return self._sync

    async def request(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send ``message`` to the host's ``on_request`` and return its reply.

        As ``RequestChannel.request``: resent to a new host within the timeout if the
        host dies (at-least-once). The timeout counts from this call, waiting for a
        free worker included. Cancelled: a request not yet sent is never sent; one
        already sent runs to its end in its worker and its reply is dropped, so the
        host may act on it (as on any request whose caller gave up).

        :raises RemoteError: ``on_request`` raised in the host.
        :raises ChannelTimeout: no reply within ``timeout`` seconds.
        :raises ChannelClosed: the channel was closed.
        """
        deadline = Deadline(validate_timeout(timeout))
        return await self._runner.call(
            self._request, message, deadline, deadline=deadline, late=self._late(deadline)
        )

    def _late(self, deadline: Deadline) -> Callable[[], BaseException]:
        return lambda: busy_error(self._sync.channel, deadline)

    def _request(self, message: Any, deadline: Deadline) -> Any:
        return self._sync.request(message, timeout=time_left(self._sync.channel, deadline))

    async def publish(self, message: Any, timeout: float | None = 5.0) -> None:
        """Deliver ``message`` to every subscriber (once); return once the host sent it out.

        :raises ChannelTimeout: no host took it within ``timeout`` seconds.
        """
        deadline = Deadline(validate_timeout(timeout))
        await self._runner.call(
            self._publish, message, deadline, deadline=deadline, late=self._late(deadline)
        )

    def _publish(self, message: Any, deadline: Deadline) -> None:
        self._sync.publish(message, timeout=time_left(self._sync.channel, deadline))

    def messages(self, timeout: float | None = 5.0, max_pending: int = 1024) -> MessageStream:
        """Return a stream of the messages published once it has started, by any process.

        ``async for message in channel.messages()`` starts it at the first step;
        ``async with channel.messages() as stream`` before the body runs (publish
        after that, and the stream gets it). Messages survive failover, once each,
        as for ``subscribe``.

        :param timeout: how long starting may wait for the host to acknowledge.
        :param max_pending: messages kept for a slow reader; past that the oldest are
            dropped (logged, counted in ``stream.dropped``).
        """
        validate_timeout(timeout)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int):
            raise TypeError(f"max_pending must be an int (messages), not {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1 message, not {max_pending!r}")
        return MessageStream(self, timeout, max_pending, _streams=self._streams)

    def _subscribe(self, deadline: Deadline) -> None:
        """Subscribe this process once (in a worker); a forked child's subscription resumes by itself."""
        remaining = time_left(self._sync.channel, deadline)
        if not self._subscribe_lock.acquire(timeout=-1 if remaining is None else remaining):
            raise port_of(self._sync.channel).timeout_error(deadline, "another task is still subscribing")
        try:
            if not self._subscribed:  # one subscription per process, for every stream
                self._sync.subscribe(self._streams.dispatch, timeout=time_left(self._sync.channel, deadline))
                self._subscribed = True
            else:  # in a forked child it may still be resuming: from now on means from now on
                ensure_subscribed(self._sync, deadline)
        finally:
            self._subscribe_lock.release()

    def _unsubscribe(self) -> None:
        """End this process's subscription: the last stream closed (a new stream subscribes again)."""
        self._subscribed = False
        self._sync.unsubscribe(self._streams.dispatch)

    async def aclose(self) -> None:
        """Close the channel (handing hosting over), end every stream, stop and join the workers.

        The blocking part runs in ``ipchannel-aio-close:NAME``; a request still in a
        worker ends with ``ChannelClosed``. Idempotent.
        """
        self._streams.end()
        await self._runner.aclose(self._sync.close)

    def close(self) -> None:
        """As ``aclose()``, blocking: for code outside the event loop (from a coroutine, use ``aclose``)."""
        self._streams.end()
        try:
            self._sync.close()
        finally:
            self._runner.shutdown()

    async def __aenter__(self) -> AsyncRequestChannel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncRequestChannel {self._sync.channel.name!r} {self._sync.channel!r}>"

    def _reset_after_fork(self) -> None:
        """In a forked child: no workers, no streams (they belong to the parent's loop), fresh locks.

        The subscription itself (if any) is RequestChannel's, which resumes in the child.
        """
        self._runner.reset_after_fork()
        self._streams.reset()
        self._subscribe_lock = threading.Lock()
