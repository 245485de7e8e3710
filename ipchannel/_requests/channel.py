"""RequestChannel: request/reply and publish/subscribe that survive the death of the host.

Built on ``Channel``, in three parts: the wire protocol (``_wire``), the host's
side (``host``: answer, fan out, replay) and this process's side
(``client``: request connections, the subscription). Requests are
at-least-once (resent to a new host within their timeout); published messages
are delivered once (resent, and deduplicated by every subscriber).

Threads: ``on_request`` runs in the host, in the handler thread of the
caller's connection (``ipchannel-handler:NAME``); subscriber callbacks in
``ipchannel-subscriber:NAME``.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from .. import _fork
from .._codecs import Codec, resolve_codec
from .._core.channel import Channel
from .._core.port import port_of
from .._errors import ChannelClosed, ChannelTimeout, RemoteError
from .._framing import DEFAULT_MAX_SIZE
from .._options import Options
from .._timing import Deadline, validate_timeout
from .client import Requester
from .host import RequestHost
from .outbox import DEFAULT_LIMITS, Limits
from .subscriber import Subscriber
from .wire import ENVELOPE, ERROR, PUBLISH, PUBLISH_ID, REQUEST, SLACK

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from types import TracebackType

    from .confirm import Confirmations

__all__ = ["RequestChannel", "ensure_subscribed", "publish_changes"]


class RequestChannel(_fork.ProcessBound):
    """Request/reply and publish/subscribe among peer processes, surviving the death of the host.

    ::

        def on_request(message):            # runs in the host process, in a handler thread
            return {"echo": message}

        with RequestChannel("echo", on_request) as channel:
            print(channel.request("hi"))     # {'echo': 'hi'}, from whichever process hosts

    :param name: the channel name (same rule as ``Channel``).
    :param on_request: called with each request's message in the host; its return value is the
        reply. An exception reaches the caller as ``RemoteError``. None: requests fail that way.
    :param codec: ``"json"`` (default), ``"pickle"`` (trusts every process that can connect), or an
        object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``.
    :param runtime_dir: as for ``Channel``.
    :param max_message_size: largest encoded message accepted, in bytes (default 64 MiB).
    :param max_backlog: bytes the host may hold for one subscriber that does not read (stopped,
        swapped out, cut off by the network) before it cuts it off (default 32 MiB).
    :param max_lag: seconds a message may wait in that backlog before the same (default 2); a
        publish (a SharedDict write) waits at most that long for a subscriber that does not read.
        A subscriber cut off subscribes again by itself once it runs; what it missed is
        replayed if the host still has it, else reported to ``on_missed`` callbacks.
    :param authkey: as for ``Channel``: every process must pass the same key.
    :param may_host: as for ``Channel`` (settable later on ``.channel.may_host``).
    :param coordinator: as for ``Channel``: across machines; so are ``listen``, ``advertise``,
        ``ttl``, ``ssl_context``, ``server_hostname`` and ``ssl_verify``.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, as Channel has
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        *,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
        max_backlog: int = DEFAULT_LIMITS.max_backlog,
        max_lag: float = DEFAULT_LIMITS.max_lag,
        authkey: bytes | None = None,
        may_host: bool = True,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        server_hostname: str | None = None,
        ssl_verify: bool = True,
        _options: Options | None = None,
        _kind: str = "RequestChannel",
        _confirmations: Confirmations | None = None,
    ) -> None:
        if on_request is not None and not callable(on_request):
            raise TypeError(f"on_request must be a callable taking the message, or None; not {on_request!r}")
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError(f"max_message_size must be an int (bytes), not {type(max_message_size).__name__}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be a positive number of bytes, not {max_message_size!r}")
        self._codec = resolve_codec(codec)
        self._kind = _kind  # what errors call this object: the class the user holds (a SharedDict, say)
        options = _options or Options.build(
            runtime_dir=runtime_dir,
            authkey=authkey,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            ssl_verify=ssl_verify,
        )
        self._host = RequestHost(
            name,
            on_request,
            self._codec,
            max_message_size,
            self._handing_over,
            lambda: self._channel.generation,
            _limits(max_backlog, max_lag),
            _confirmations,
        )
        self._channel = Channel(name, self._host.handle, may_host=may_host, _options=options)
        self._port = port_of(self._channel)
        self._max_size = max_message_size
        self._requester = Requester(self._channel, max_message_size, self._port.timeout_error)
        self._subscriber = Subscriber(
            self._channel, self._codec, max_message_size, self._port.timeout_error, _confirmations
        )
        self._publisher = _new_publisher_id()
        self._publish_numbers = itertools.count(1)
        _fork.register(self)

    @property
    def channel(self) -> Channel:
        """The underlying ``Channel``: name, state, host, generation, ``join()`` and the host hooks."""
        return self._channel

    def request(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send ``message`` to the host's ``on_request`` and return its reply. Thread-safe.

        If the host dies first, the request is sent again to the new host within
        the same timeout: at-least-once, never ``HostChanged``.

        :raises RemoteError: ``on_request`` raised in the host.
        :raises ChannelTimeout: no reply within ``timeout`` seconds.
        :raises ChannelClosed: the channel was closed.
        :raises TypeError: the codec cannot encode ``message``.
        """
        deadline = Deadline(validate_timeout(timeout))
        kind, payload = self._call(REQUEST, self._encode(message), deadline)
        if kind == ERROR:
            raise RemoteError.from_json(self._channel.name, payload)
        return self._codec.loads(payload)

    def publish(self, message: Any, timeout: float | None = 5.0) -> None:
        """Deliver ``message`` to every subscriber (this process's too); return once each has it.

        "Has it": the host wrote it to every subscriber's socket (on one machine the
        subscriber reads it even if the host dies then). It waits at most ``max_lag`` seconds
        for a subscriber that does not read, which is then cut off. Delivered once, also when
        the host dies while it is sent: a message resent to the new host carries the same id,
        and subscribers drop the copy (each remembers the ids of the last 2048 messages it
        delivered). A host whose claim lapsed (fencing, across machines) does not deliver it
        itself: it sends it to the host that serves, as any other process does.

        :raises ChannelTimeout: no host took it within ``timeout`` seconds.
        :raises TypeError: the codec cannot encode ``message``.
        :raises ValueError: the encoded message is over ``max_message_size``.
        """
        self._publish(message, Deadline(validate_timeout(timeout)), self._max_size)

    def _publish(
        self, message: Any, deadline: Deadline, limit: int, taken_here: Callable[[], bool] | None = None
    ) -> None:
        payload = PUBLISH_ID.pack(self._publisher, next(self._publish_numbers)) + self._encode(message)
        if ENVELOPE.size + len(payload) > limit:
            raise ValueError(
                f"the encoded message is {len(payload) - PUBLISH_ID.size} bytes, over this channel's"
                f" max_message_size ({limit - ENVELOPE.size - PUBLISH_ID.size} bytes for a message)"
            )
        # The host fans out itself (no round trip through its own socket), but only while it may
        # serve: a host whose claim lapsed (cut off, frozen) may have a successor already, and its
        # subscribers must not get what the real host never sent. It sends it as anyone would.
        if self._port.may_serve():
            self._check_open()
            self._host.wait_taken(self._host.fan_out(payload, taken_here))
            if self._port.may_serve():
                return
            # stopped serving meanwhile: the message may not have reached everyone; send it to the new host
        self._call(PUBLISH, payload, deadline)

    @property
    def subscribed_generation(self) -> int | None:
        """Generation of the host this process's subscription is attached to (None: not subscribed).

        After a failover it moves to the new host's generation once the subscription
        has re-attached, that is, once everything the old host sent was delivered.
        """
        return self._subscriber.generation

    def subscribe(self, callback: Callable[[Any], object], timeout: float | None = 5.0) -> None:
        """Call ``callback(message)`` for every message published from now on, by any process.

        The callback runs in a background thread of this process (``ipchannel-subscriber:NAME``)
        and must not block: messages wait behind it. An exception it raises is logged.
        Subscriptions survive failover.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        deadline = Deadline(validate_timeout(timeout))
        self._check_open()
        try:
            self._subscriber.add(callback, deadline)
        except ChannelClosed:
            raise ChannelClosed(self._channel.name, self._kind) from None

    def unsubscribe(self, callback: Callable[[Any], object]) -> bool:
        """Stop calling ``callback``; return False if it was not subscribed.

        When no callback is left, this process's subscription ends: the host stops sending
        to it, and a later ``subscribe`` starts a new one (messages from then on).
        """
        return self._subscriber.remove(callback)

    def on_missed(self, callback: Callable[[int | None], object]) -> Callable[[int | None], object]:
        """Call ``callback(count)`` when this process's subscription lost messages for good.

        That happens when the host cut this process off (it fell more than ``max_backlog``
        bytes or ``max_lag`` seconds behind: stopped in a debugger, swapped out, cut off by
        the network) and no longer had everything it missed (it replays the last 1024
        messages of its term), or when the host changed meanwhile (``count`` is then None:
        unknown). It runs on ``ipchannel-subscriber:NAME``, before the messages replayed
        after the gap. Returns ``callback``, so it works as a decorator.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._subscriber.inbox.missed_callbacks.append(callback)
        return callback

    def close(self) -> None:
        """Close the channel (handing hosting over) and stop this process's threads. Idempotent."""
        self._channel.close()
        self._subscriber.join()

    def __enter__(self) -> RequestChannel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        codec = getattr(self._codec, "name", self._codec)
        return f"<RequestChannel {self._channel.name!r} codec={codec!r} {self._channel!r}>"

    def _check_open(self) -> None:
        if self._channel.closed:
            raise ChannelClosed(self._channel.name, self._kind)

    def _encode(self, message: Any) -> bytes:
        """Encode with the codec; a message it cannot carry is a TypeError that says what to do."""
        try:
            return self._codec.dumps(message)
        except (TypeError, ValueError) as exc:
            codec = getattr(self._codec, "name", type(self._codec).__name__)
            hint = (
                "send only JSON types (dict with str keys, list, str, int, float, bool, None), convert "
                f"the value first, or create the {self._kind} with codec='pickle'"
                if codec == "json"
                else "convert the value to something the codec accepts"
            )
            what = type(message).__name__
            raise TypeError(
                f"{self._kind} {self._channel.name!r}: the {codec!r} codec cannot encode a {what}"
                f" message ({exc}); {hint}"
            ) from exc

    def _call(self, kind: int, payload: bytes, deadline: Deadline) -> tuple[int, bytes]:
        self._check_open()
        try:
            if self._subscriber.active:
                self._subscriber.ensure_running(deadline)  # after fork: subscribe again in this process
            answer = self._requester.call(kind, payload, deadline)
        except ChannelTimeout:
            raise self._timeout(deadline) from None
        except ChannelClosed:
            raise ChannelClosed(self._channel.name, self._kind) from None
        if answer is None:
            raise self._timeout(deadline)
        return answer

    def _timeout(self, deadline: Deadline) -> ChannelTimeout:
        return self._port.timeout_error(deadline, "no answer to the request")

    def _handing_over(self) -> bool:
        """Tell the host side to answer nothing: this process may not serve (any more)."""
        return not self._port.may_serve()

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh publisher id and connections; subscriptions resume in the background."""
        self._publisher = _new_publisher_id()
        self._publish_numbers = itertools.count(1)
        self._host.reset()
        self._requester.reset()
        self._subscriber.reset()

    def _resume_after_fork(self) -> None:
        """In a forked child, once everything is reset: subscriptions come back in the background."""
        if not self._channel.closed:
            self._subscriber.resume_after_fork()


def _new_publisher_id() -> int:
    """Return a random 64-bit id for this process's published messages (fresh in every forked child)."""
    return int.from_bytes(os.urandom(8), "big")


def publish_changes(
    channel: RequestChannel, message: Any, timeout: float | None, taken_here: Callable[[], bool]
) -> None:
    """Publish what the host made of requests (a SharedDict's changes): ``SLACK`` bytes over the limit.

    ``taken_here``: as for ``RequestHost.fan_out`` (the host's own replica applies it itself).
    """
    channel._publish(message, Deadline(timeout), channel._max_size + SLACK, taken_here)  # noqa: SLF001 - the host's own


def ensure_subscribed(channel: RequestChannel, deadline: Deadline) -> None:
    """Subscribe again now if this process's subscription is not running (a forked child's resumes)."""
    channel._subscriber.ensure_running(deadline)  # noqa: SLF001 - the aio layer's one way in


def _limits(max_backlog: int, max_lag: float) -> Limits:
    """Check the subscriber limits: a TypeError or ValueError naming the parameter."""
    if isinstance(max_backlog, bool) or not isinstance(max_backlog, int):
        raise TypeError(f"max_backlog must be an int (bytes), not {type(max_backlog).__name__}")
    if max_backlog < 1:
        raise ValueError(f"max_backlog must be a positive number of bytes, not {max_backlog!r}")
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, float)):
        raise TypeError(f"max_lag must be a number of seconds, not {type(max_lag).__name__}")
    if not max_lag > 0:
        raise ValueError(f"max_lag must be a positive number of seconds, not {max_lag!r}")
    return Limits(max_backlog=max_backlog, max_lag=float(max_lag))
