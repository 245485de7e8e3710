"""RequestChannel: request/reply and publish/subscribe that survive the death of the host.

Built on ``Channel``. Every message is one frame (``_framing``) whose payload
starts with ``!BQ``: a kind byte and a 64-bit id, then the codec's bytes::

    client -> host   REQUEST(id, message)  PUBLISH(id, msgid + message)  SUBSCRIBE(id, resume flag)
    host -> client   REPLY(id, reply)  ERROR(id, json)  ACK(id)  MESSAGE(0, msgid + message)

``msgid`` is ``!QQ``: the publishing process's random id and its message number.

Requests: each caller thread borrows a connection of its own (kept for reuse),
so at most one request is in flight per connection and the host answers it in
that connection's handler thread: no thread hand-off on either side. If the
connection moves to a new host before the answer came, the frame is sent
again: at-least-once.

Failover, subscriptions: the subscriber socket re-subscribes with the resume
flag; the new host replays what was published to it so far in its term (up to
``_REPLAY_LIMIT`` messages), so nothing published in the failover window is lost.
A publish whose host died before acknowledging is sent again; subscribers drop
the copies by ``msgid``, so each message is delivered once.

Threads: ``on_request`` runs in the host, in the handler thread of the
caller's connection (``ipchannel-handler:NAME``); subscriber callbacks in
``ipchannel-subscriber:NAME``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import select
import struct
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _fork, _hooks, _platform
from ._channel import Channel
from ._client import ChannelSocket, reconnect_within
from ._codecs import Codec, resolve_codec
from ._errors import ChannelClosed, ChannelError, ChannelTimeout, HostChanged, ProtocolError, RemoteError
from ._framing import DEFAULT_MAX_SIZE, FrameReader
from ._timing import Deadline, validate_timeout

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

__all__ = ["RequestChannel"]

_LOGGER = logging.getLogger("ipchannel")

_ENVELOPE = struct.Struct("!BQ")
_FRAME_HEAD = struct.Struct("!IBQ")  # _framing's HEADER, then the envelope: a whole frame's head
_MAX_FRAME = 0xFFFFFFFF
REQUEST, PUBLISH, SUBSCRIBE = 1, 2, 3
REPLY, ERROR, ACK, MESSAGE = 11, 12, 13, 14
_REPLAY_LIMIT = 1024
_PUBLISH_ID = struct.Struct("!QQ")  # publisher, number: at the head of every PUBLISH and MESSAGE payload
_DEDUP_WINDOW = 2 * _REPLAY_LIMIT  # ids a subscriber remembers; a resent copy comes within one failover
_JOIN_TIMEOUT = 2.0


def _frame(kind: int, ident: int, payload: bytes = b"") -> bytes:
    """Return a whole frame, length header included, ready for one ``sendall``."""
    size = _ENVELOPE.size + len(payload)
    if size > _MAX_FRAME:
        raise ValueError(f"a message of {len(payload)} bytes does not fit in one frame (4 GiB)")
    return _FRAME_HEAD.pack(size, kind, ident) + payload


def _parse(frame: bytes) -> tuple[int, int, bytes]:
    if len(frame) < _ENVELOPE.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {_ENVELOPE.size}-byte envelope")
    kind, ident = _ENVELOPE.unpack_from(frame)
    return kind, ident, frame[_ENVELOPE.size :]


# -- the host side --------------------------------------------------------------------------


class _Peer:
    """One connection as the host sees it; writes are whole frames under a lock."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, frame: bytes) -> bool:
        try:
            with self.lock:
                self.conn.sendall(frame)
        except OSError:
            return False  # the client went away; its process will resend to whoever hosts
        return True


class _Host:
    """What the host process does for a RequestChannel: answer, fan out, replay. One term per instance."""

    def __init__(
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        codec: Codec,
        max_size: int,
        handing_over: Callable[[], bool],
    ) -> None:
        self._name, self._on_request, self._codec, self._max_size = name, on_request, codec, max_size
        self._handing_over = handing_over
        self.reset()

    def reset(self) -> None:
        """Forget every connection and the replay buffer (a forked child starts with none)."""
        self._lock = threading.Lock()
        self._subscribers: set[_Peer] = set()
        self._replay: deque[bytes] = deque(maxlen=_REPLAY_LIMIT)

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection (runs in a handler thread of the host)."""
        peer, reader = _Peer(conn), FrameReader(conn, self._max_size)
        try:
            while True:
                try:
                    kind, ident, payload = _parse(reader.read())
                except EOFError:
                    return
                except ProtocolError as exc:
                    _LOGGER.warning("channel %r: closing a connection that sent garbage: %s", self._name, exc)
                    return
                if kind == REQUEST:
                    self._answer(peer, ident, payload)
                elif kind == PUBLISH and len(payload) >= _PUBLISH_ID.size:
                    self._publish(peer, ident, payload)
                elif kind == SUBSCRIBE:
                    self._subscribe(peer, ident, resume=payload == b"\x01")
                else:
                    _LOGGER.warning(
                        "channel %r: closing a connection that sent frame kind %d of %d bytes",
                        self._name,
                        kind,
                        len(payload),
                    )
                    return
        finally:
            with self._lock:
                self._subscribers.discard(peer)

    def _answer(self, peer: _Peer, ident: int, payload: bytes) -> None:
        # A host giving hosting up answers nothing, not even the error its closing caused: the
        # caller sees the connection end once the record is gone, and asks the next host.
        if not self._handing_over():
            frame = self._reply(ident, payload)
            if not self._handing_over():
                peer.send(frame)
        if _hooks.pause is not None:
            _hooks.pause("requests.answered", payload)

    def _reply(self, ident: int, payload: bytes) -> bytes:
        try:
            if self._on_request is None:
                raise LookupError("this RequestChannel was created without on_request")  # noqa: TRY301
            reply = self._on_request(self._codec.loads(payload))
            return _frame(REPLY, ident, self._codec.dumps(reply))
        except Exception as exc:  # noqa: BLE001 - every failure travels back as RemoteError
            return _frame(ERROR, ident, RemoteError.encode(exc))

    def _publish(self, peer: _Peer, ident: int, payload: bytes) -> None:
        self.fan_out(payload)
        if _hooks.pause is not None:
            _hooks.pause("requests.fanned_out", payload)
        if not self._handing_over():  # else resent to the next host, and subscribers drop the copy
            peer.send(_frame(ACK, ident))

    def fan_out(self, payload: bytes) -> None:
        """Send a published message to every subscriber (and keep it for resuming ones)."""
        frame = _frame(MESSAGE, 0, payload)
        with self._lock:
            self._replay.append(frame)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            if not subscriber.send(frame):
                with self._lock:
                    self._subscribers.discard(subscriber)

    def _subscribe(self, peer: _Peer, ident: int, *, resume: bool) -> None:
        with self._lock:
            self._subscribers.add(peer)
            backlog = list(self._replay) if resume else []
            peer.lock.acquire()  # taken under our lock: no publish can reach the peer before the backlog
        try:
            for frame in [_frame(ACK, ident), *backlog]:
                peer.conn.sendall(frame)
        except OSError:
            pass
        finally:
            peer.lock.release()
        if resume and len(backlog) == _REPLAY_LIMIT:
            _LOGGER.warning(
                "channel %r: a resuming subscriber may have missed messages (replay limit %d)",
                self._name,
                _REPLAY_LIMIT,
            )


# -- the client side ---------------------------------------------------------------------------


class _Connection:
    """One request connection, its reader, and a poll object to wait on it with a deadline."""

    __slots__ = ("poller", "reader", "sock")

    def __init__(self, sock: ChannelSocket, max_size: int) -> None:
        self.sock = sock
        self.reader = FrameReader(sock, max_size)
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)  # dup2 on reconnect keeps the fd number


class _Requester:
    """The request connections of this process: one per concurrent caller, reused.

    A call takes an idle connection (or opens one), sends its frame and reads
    its own answer in its own thread: no hand-off between threads on either
    side, since the host answers each connection in that connection's handler
    thread. Concurrent callers use different connections, so the host serves
    them at once.
    """

    def __init__(self, channel: Channel, max_size: int) -> None:
        self._channel, self._max_size = channel, max_size
        self.reset()

    def reset(self) -> None:
        """Start afresh (also in a forked child, where the parent's lock may be held)."""
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._ids = itertools.count(1)

    def call(self, kind: int, payload: bytes, deadline: Deadline) -> tuple[int, bytes] | None:
        """Send one frame and return the answer's (kind, payload), or None at the deadline."""
        size = _ENVELOPE.size + len(payload)
        if size > self._max_size:
            raise ValueError(
                f"the encoded message is {len(payload)} bytes, over this channel's max_message_size"
                f" ({self._max_size - _ENVELOPE.size} bytes for a message)"
            )
        ident = next(self._ids)
        frame = _frame(kind, ident, payload)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _Connection(self._channel.connect(timeout=deadline.remaining()), self._max_size)
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
                kind, answer_ident, payload = _parse(answer)
                if answer_ident == ident:
                    return kind, payload
                # else a late duplicate of an earlier, resent frame (at-least-once)
            remaining = deadline.remaining()
            if remaining <= 0:
                return None
            if not conn.poller.poll(None if math.isinf(remaining) else math.ceil(remaining * 1000)):
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


class _Subscriber:
    """The subscriber connection of this process and the thread that runs the callbacks.

    Every published message carries its publisher's id and number (``_PUBLISH_ID``);
    the last ``_DEDUP_WINDOW`` ids seen are remembered, so a message resent after
    a failover (the old host fanned it out, then died before acknowledging) or
    replayed to a resuming subscriber is delivered once.
    """

    def __init__(self, channel: Channel, codec: Codec, max_size: int) -> None:
        self._channel, self._codec, self._max_size = channel, codec, max_size
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
        """Subscribe again if this process has callbacks but no live subscriber thread (fork, lost link)."""
        with self._lock:
            if self._callbacks and (self._thread is None or not self._thread.is_alive()):
                self._start(deadline, resume=self._thread is not None)

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
        try:
            self.ensure_running(Deadline(None))  # as long as it takes for a host; close() interrupts
        except ChannelClosed:
            pass
        except Exception:
            _LOGGER.exception("channel %r: cannot subscribe again after fork", self._channel.name)

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
        except TimeoutError as exc:
            if isinstance(exc, ChannelError):
                raise
            raise ChannelTimeout(
                self._channel.name,
                str(self._channel.runtime_dir),
                deadline.elapsed(),
                self._channel.host_pid,
                "the host did not acknowledge the subscription",
            ) from None
        sock.settimeout(None)

    def _subscribe(self, sock: ChannelSocket, reader: FrameReader, *, resume: bool) -> None:
        """Send SUBSCRIBE and wait for its ACK; messages arriving before it are delivered."""
        reader.clear()  # after a host change: a partial frame from the old host is worthless
        sock.sendall(_frame(SUBSCRIBE, 1, b"\x01" if resume else b"\x00"))
        _LOGGER.debug(
            "channel %r: subscription sent to host pid %s; waiting for its acknowledgement",
            self._channel.name,
            self._channel.host_pid,
        )
        while True:
            kind, _ident, payload = _parse(reader.read())
            if kind == ACK:
                self.generation = sock.host_generation
                return
            self._deliver(payload)

    def _run(self, sock: ChannelSocket, reader: FrameReader) -> None:
        _platform.leave_signals_to_the_application()
        with reconnect_within(None):  # wait as long as it takes for a new host; close() interrupts
            while True:
                try:
                    kind, _ident, payload = _parse(reader.read())
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
        if len(payload) < _PUBLISH_ID.size:
            _LOGGER.warning("channel %r: dropping a published message without an id", self._channel.name)
            return
        ident = payload[: _PUBLISH_ID.size]
        if self._already_seen(ident):
            return
        try:
            message = self._codec.loads(payload[_PUBLISH_ID.size :])
        except Exception:
            _LOGGER.exception("channel %r: cannot decode a published message", self._channel.name)
            return
        for callback in list(self._callbacks):
            try:
                callback(message)
            except Exception:
                _LOGGER.exception("channel %r: subscriber callback %r raised", self._channel.name, callback)

    def _already_seen(self, ident: bytes) -> bool:
        """Remember ``ident``; True if it is among the last ``_DEDUP_WINDOW`` (one thread at a time)."""
        seen = self._seen
        if ident in seen:
            return True
        seen.add(ident)
        order = self._seen_order
        order.append(ident)
        if len(order) > _DEDUP_WINDOW:
            seen.discard(order.popleft())
        return False

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)


class RequestChannel:
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
    :param authkey: as for ``Channel``: every process must pass the same key.
    :param may_host: as for ``Channel`` (settable later on ``.channel.may_host``).
    """

    #: What errors call this object (a SharedDict names itself there).
    _kind = "RequestChannel"

    def __init__(  # noqa: PLR0913 - keyword-only options, as Channel has
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        *,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
        authkey: bytes | None = None,
        may_host: bool = True,
    ) -> None:
        if on_request is not None and not callable(on_request):
            raise TypeError(f"on_request must be a callable taking the message, or None; not {on_request!r}")
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError(f"max_message_size must be an int (bytes), not {type(max_message_size).__name__}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be a positive number of bytes, not {max_message_size!r}")
        self._codec = resolve_codec(codec)
        self._host = _Host(
            name,
            on_request,
            self._codec,
            max_message_size,
            lambda: self._channel._handing_over,  # noqa: SLF001 - the host side of this channel
        )
        self._channel = Channel(
            name, self._host.handle, runtime_dir=runtime_dir, authkey=authkey, may_host=may_host
        )
        self._requester = _Requester(self._channel, max_message_size)
        self._subscriber = _Subscriber(self._channel, self._codec, max_message_size)
        self._publisher = _new_publisher_id()
        self._publish_numbers = itertools.count(1)
        _fork.register(self)

    @property
    def name(self) -> str:
        """The channel name."""
        return self._channel.name

    @property
    def channel(self) -> Channel:
        """The underlying ``Channel`` (state, host, generation)."""
        return self._channel

    @property
    def runtime_dir(self) -> Path:
        """The runtime directory."""
        return self._channel.runtime_dir

    @property
    def is_host(self) -> bool:
        """True while this process hosts the channel."""
        return self._channel.is_host

    def join(self, timeout: float | None = 5.0) -> bool:
        """Take part in the election without sending anything; True if this process hosts (see Channel)."""
        return self._channel.join(timeout)

    def on_elected(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` when this process becomes host (see ``Channel.on_elected``)."""
        return self._channel.on_elected(callback)

    def on_demoted(self, callback: Callable[[int], object]) -> Callable[[int], object]:
        """Call ``callback(generation)`` when this process stops hosting (see ``Channel.on_demoted``)."""
        return self._channel.on_demoted(callback)

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
            raise RemoteError.from_json(self.name, payload)
        return self._codec.loads(payload)

    def publish(self, message: Any, timeout: float | None = 5.0) -> None:
        """Deliver ``message`` to every subscriber (this process's too); return once the host sent it out.

        Delivered once, also when the host dies while it is sent: a message resent to
        the new host carries the same id, and subscribers drop the copy.

        :raises ChannelTimeout: no host took it within ``timeout`` seconds.
        :raises TypeError: the codec cannot encode ``message``.
        """
        deadline = Deadline(validate_timeout(timeout))
        payload = _PUBLISH_ID.pack(self._publisher, next(self._publish_numbers)) + self._encode(message)
        if self._channel.is_host:  # the host fans out itself: no round trip through its own socket
            self._check_open()
            self._host.fan_out(payload)
            if self._channel.is_host:
                return
            # stopped hosting meanwhile: the message may not have reached everyone; send it to the new host
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
            raise ChannelClosed(self.name, self._kind) from None

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
        return f"<RequestChannel {self.name!r} codec={codec!r} {self._channel!r}>"

    def _check_open(self) -> None:
        if self._channel.closed:
            raise ChannelClosed(self.name, self._kind)

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
            raise TypeError(
                f"{self._kind} {self.name!r}: the {codec!r} codec cannot encode a {type(message).__name__}"
                f" message ({exc}); {hint}"
            ) from exc

    def _call(self, kind: int, payload: bytes, deadline: Deadline) -> tuple[int, bytes]:
        self._check_open()
        try:
            if self._subscriber.active:
                self._subscriber.ensure_running(deadline)  # after fork: subscribe again in this process
            answer = self._requester.call(kind, payload, deadline)
        except ChannelTimeout as exc:
            raise self._timeout(deadline, exc.last_host_pid) from None
        except ChannelClosed:
            raise ChannelClosed(self.name, self._kind) from None
        if answer is None:
            raise self._timeout(deadline, self._channel.host_pid)
        return answer

    def _timeout(self, deadline: Deadline, last_host_pid: int | None) -> ChannelTimeout:
        return ChannelTimeout(
            self.name, str(self.runtime_dir), deadline.elapsed(), last_host_pid, "no answer to the request"
        )

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh publisher id and connections; subscriptions resume in the background."""
        self._publisher = _new_publisher_id()
        self._publish_numbers = itertools.count(1)
        self._host.reset()
        self._requester.reset()
        self._subscriber.reset()
        if not self._channel.closed:
            self._subscriber.resume_after_fork()


def _new_publisher_id() -> int:
    """Return a random 64-bit id for this process's published messages (fresh in every forked child)."""
    return int.from_bytes(os.urandom(8), "big")
