"""RequestChannel: request/reply and publish/subscribe that survive the death of the host.

Built on ``Channel``. Every message is one frame (``_framing``) whose payload
starts with ``!BQ``: a kind byte and a 64-bit id, then the codec's bytes::

    client -> host   REQUEST(id, message)  PUBLISH(id, message)  SUBSCRIBE(id, resume flag)
    host -> client   REPLY(id, reply)  ERROR(id, json)  ACK(id)  MESSAGE(0, message)

Failover, requests: a request keeps its frame until answered. Whenever the
request socket moves to a new connection (``ChannelSocket.reconnects``
changes), every unanswered frame is sent again: at-least-once.

Failover, subscriptions: the subscriber socket re-subscribes with the resume
flag; the new host replays what was published to it so far in its term (up to
``_REPLAY_LIMIT`` messages), so nothing published in the failover window is lost.

Threads: ``on_request`` runs in a worker thread of the host
(``ipchannel-worker:NAME``); subscriber callbacks in ``ipchannel-subscriber:NAME``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import select
import struct
import threading
import traceback
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _platform
from ._channel import Channel
from ._client import ChannelSocket, reconnect_within
from ._codecs import Codec, resolve_codec
from ._election import Deadline, validate_timeout
from ._errors import ChannelClosed, ChannelError, ChannelTimeout, HostChanged, ProtocolError, RemoteError
from ._framing import DEFAULT_MAX_SIZE, HEADER, frame_size, recv_message, send_message

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

__all__ = ["RequestChannel"]

_LOGGER = logging.getLogger("ipchannel")

_ENVELOPE = struct.Struct("!BQ")
REQUEST, PUBLISH, SUBSCRIBE = 1, 2, 3
REPLY, ERROR, ACK, MESSAGE = 11, 12, 13, 14
_REPLAY_LIMIT = 1024
_MAX_WORKERS = 64
_POLL_SLICE = 0.05  # a waiting caller re-checks every this often whether it should read for everyone
_JOIN_TIMEOUT = 2.0


def _envelope(kind: int, ident: int, payload: bytes = b"") -> bytes:
    return _ENVELOPE.pack(kind, ident) + payload


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
                send_message(self.conn, frame)
        except OSError:
            return False  # the client went away; its process will resend to whoever hosts
        return True


class _WorkerPool:
    """Daemon worker threads, grown on demand so every queued task has a thread (up to a cap)."""

    def __init__(self, name: str, max_workers: int) -> None:
        self._name, self._max = name, max_workers
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = self._queued = 0

    def submit(self, func: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"ipchannel-worker:{self._name}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._tasks.put((func, args))

    def _work(self) -> None:
        _platform.leave_signals_to_the_application()
        while (task := self._tasks.get()) is not None:
            with self._lock:
                self._queued -= 1
                self._idle -= 1
            func, args = task
            try:
                func(*args)
            except Exception:
                _LOGGER.exception("channel %r: worker task failed", self._name)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)
                if thread.is_alive():
                    _LOGGER.warning(
                        "channel %r: a request handler did not return within %.1f s of close",
                        self._name,
                        _JOIN_TIMEOUT,
                    )


class _Host:
    """What the host process does for a RequestChannel: answer, fan out, replay. One term per instance."""

    def __init__(
        self, name: str, on_request: Callable[[Any], Any] | None, codec: Codec, max_size: int
    ) -> None:
        self._name, self._on_request, self._codec, self._max_size = name, on_request, codec, max_size
        self.reset()

    def reset(self) -> None:
        """Forget every connection and the replay buffer (a forked child starts with none)."""
        self._lock = threading.Lock()
        self._subscribers: set[_Peer] = set()
        self._replay: deque[bytes] = deque(maxlen=_REPLAY_LIMIT)
        self._pool: _WorkerPool | None = None

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection (runs in a handler thread of the host)."""
        peer = _Peer(conn)
        try:
            while True:
                try:
                    kind, ident, payload = _parse(recv_message(conn, self._max_size))
                except EOFError:
                    return
                except ProtocolError as exc:
                    _LOGGER.warning("channel %r: closing a connection that sent garbage: %s", self._name, exc)
                    return
                if kind == REQUEST:
                    self._workers().submit(self._answer, peer, ident, payload)
                elif kind == PUBLISH:
                    self._workers().submit(self._publish, peer, ident, payload)
                elif kind == SUBSCRIBE:
                    self._subscribe(peer, ident, resume=payload == b"\x01")
                else:
                    _LOGGER.warning(
                        "channel %r: closing a connection that sent frame kind %d", self._name, kind
                    )
                    return
        finally:
            with self._lock:
                self._subscribers.discard(peer)

    def _workers(self) -> _WorkerPool:
        with self._lock:
            if self._pool is None:
                self._pool = _WorkerPool(self._name, _MAX_WORKERS)
            return self._pool

    def _answer(self, peer: _Peer, ident: int, payload: bytes) -> None:
        try:
            if self._on_request is None:
                raise LookupError("this RequestChannel was created without on_request")  # noqa: TRY301
            reply = self._on_request(self._codec.loads(payload))
            frame = _envelope(REPLY, ident, self._codec.dumps(reply))
        except Exception as exc:  # noqa: BLE001 - every failure travels back as RemoteError
            kind = type(exc)
            name = (
                kind.__qualname__
                if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__qualname__}"
            )
            info = {
                "type": name,
                "message": str(exc),
                "traceback": traceback.format_exc(),
                "pid": os.getpid(),
            }
            frame = _envelope(ERROR, ident, json.dumps(info).encode())
        peer.send(frame)

    def _publish(self, peer: _Peer, ident: int, payload: bytes) -> None:
        frame = _envelope(MESSAGE, 0, payload)
        with self._lock:
            self._replay.append(frame)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            if not subscriber.send(frame):
                with self._lock:
                    self._subscribers.discard(subscriber)
        peer.send(_envelope(ACK, ident))

    def _subscribe(self, peer: _Peer, ident: int, *, resume: bool) -> None:
        with self._lock:
            self._subscribers.add(peer)
            backlog = list(self._replay) if resume else []
            peer.lock.acquire()  # taken under our lock: no publish can reach the peer before the backlog
        try:
            for frame in [_envelope(ACK, ident), *backlog]:
                send_message(peer.conn, frame)
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

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()


# -- the client side ---------------------------------------------------------------------------


class _Call:
    __slots__ = ("done", "epoch", "event", "frame", "kind", "payload")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.event = threading.Event()
        self.done = False
        self.kind = 0
        self.payload = b""
        self.epoch = -1  # the socket connection (ChannelSocket.reconnects) the frame was last sent on


class _Requester:
    """The request connection of this process: many threads, one socket, calls matched by id.

    The caller's own thread reads replies (for everyone) while it waits, so a
    lone request pays no thread hand-off; when it is answered, another waiting
    caller takes over reading.
    """

    def __init__(self, channel: Channel, max_size: int) -> None:
        self._channel, self._max_size = channel, max_size
        self.reset()

    def reset(self) -> None:
        """Start afresh (also in a forked child, where the parent's locks may be held)."""
        self._sock: ChannelSocket | None = None
        self._connect_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self._sent_epoch = self._read_epoch = 0

    def call(self, kind: int, payload: bytes, deadline: Deadline) -> _Call:
        """Send one frame and wait for its answer; raises ChannelTimeout at the deadline."""
        ident = next(self._ids)
        call = _Call(_envelope(kind, ident, payload))
        with self._calls_lock:
            self._calls[ident] = call
        try:
            sock = self._socket(deadline)
            with self._write_lock, reconnect_within(deadline.remaining()):
                before = sock.reconnects
                # if the host died, this reconnects and delivers to the new host
                send_message(sock, call.frame)
                moved_here = sock._moved_by_this_thread(before)  # noqa: SLF001
                # sent on the current connection, unless another thread switched it meanwhile: then
                # which connection took it is unknown, so count it as old and let the resend repeat it
                call.epoch = sock.reconnects if sock.reconnects == before or moved_here else before
            self._resend_if_reconnected(sock, deadline)
            self._wait(sock, call, deadline)
        finally:
            with self._calls_lock:
                self._calls.pop(ident, None)
            self._hand_reading_on()
        return call

    def _socket(self, deadline: Deadline) -> ChannelSocket:
        with self._connect_lock:
            if self._sock is None:
                sock = self._channel.connect(timeout=deadline.remaining())
                self._sent_epoch = self._read_epoch = sock.reconnects
                self._sock = sock
            return self._sock

    def _resend_if_reconnected(self, sock: ChannelSocket, deadline: Deadline) -> None:
        """Send again every unanswered frame that went out on an older connection (the old host lost it)."""
        with self._write_lock:
            if sock.reconnects == self._sent_epoch:
                return
            self._sent_epoch = epoch = sock.reconnects
            with self._calls_lock:
                stale = [c for c in self._calls.values() if not c.done and c.epoch != epoch]
            _LOGGER.debug("channel %r: resending %d unanswered frame(s)", self._channel.name, len(stale))
            with reconnect_within(deadline.remaining()):
                for call in stale:
                    send_message(sock, call.frame)
                    call.epoch = epoch

    def _wait(self, sock: ChannelSocket, call: _Call, deadline: Deadline) -> None:
        while not call.done:
            if deadline.remaining() <= 0:
                return
            if self._read_lock.acquire(blocking=False):
                try:
                    while not call.done and deadline.remaining() > 0:
                        self._read_some(sock, deadline)
                finally:
                    self._read_lock.release()
            else:
                call.event.wait(min(deadline.remaining(), _POLL_SLICE))
                if not call.done:
                    call.event.clear()

    def _hand_reading_on(self) -> None:
        if self._read_lock.locked():
            return
        with self._calls_lock:
            waiting = next((c for c in self._calls.values() if not c.done), None)
        if waiting is not None:
            waiting.event.set()  # not answered: wakes it to read for everyone

    def _read_some(self, sock: ChannelSocket, deadline: Deadline) -> None:
        """Read what has arrived (waiting at most a slice) and dispatch every complete frame."""
        epoch = sock.reconnects
        if epoch != self._read_epoch:
            self._buffer.clear()  # a partial frame from the old host is worthless
            self._read_epoch = epoch
            self._resend_if_reconnected(sock, deadline)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        if not poller.poll(int(min(deadline.remaining(), _POLL_SLICE) * 1000)):
            return
        try:
            with reconnect_within(deadline.remaining()):
                data = sock.recv(262144)
        except HostChanged:
            return  # the next round sees the new epoch and resends
        if sock.reconnects != epoch:
            return  # these bytes may belong to either connection: drop them; everything is resent
        if not data:  # the host itself closed our connection: start over with a new one next time
            with self._connect_lock:
                if self._sock is sock:
                    self._sock = None
            sock.close()
            raise ChannelError(f"the host of channel {self._channel.name!r} closed the request connection")
        self._buffer += data
        self._dispatch()

    def _dispatch(self) -> None:
        while len(self._buffer) >= HEADER.size:
            end = HEADER.size + frame_size(self._buffer, self._max_size)
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            kind, ident, payload = _parse(frame)
            with self._calls_lock:
                call = self._calls.get(ident)
            if call is not None and not call.done:  # else a late or duplicate answer (at-least-once)
                call.kind, call.payload, call.done = kind, payload, True
                call.event.set()


class _Subscriber:
    """The subscriber connection of this process and the thread that runs the callbacks."""

    def __init__(self, channel: Channel, codec: Codec, max_size: int) -> None:
        self._channel, self._codec, self._max_size = channel, codec, max_size
        self._callbacks: list[Callable[[Any], object]] = []
        self.reset()

    def reset(self) -> None:
        """Start afresh; callbacks are kept (a forked child subscribes again on next use)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Callable[[Any], object], deadline: Deadline) -> None:
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._start(deadline)

    def ensure_running(self, deadline: Deadline) -> None:
        with self._lock:
            if self._callbacks and self._thread is None:
                self._start(deadline)

    def _start(self, deadline: Deadline) -> None:
        sock = self._channel.connect(timeout=deadline.remaining())
        try:
            with reconnect_within(deadline.remaining()):
                self._subscribe(sock, resume=False)
        except BaseException:
            sock.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"ipchannel-subscriber:{self._channel.name}", daemon=True
        )
        self._thread.start()

    def _subscribe(self, sock: ChannelSocket, *, resume: bool) -> None:
        """Send SUBSCRIBE and wait for its ACK; messages arriving before it are delivered."""
        send_message(sock, _envelope(SUBSCRIBE, 1, b"\x01" if resume else b"\x00"))
        while True:
            kind, _ident, payload = _parse(recv_message(sock, self._max_size))
            if kind == ACK:
                return
            self._deliver(payload)

    def _run(self, sock: ChannelSocket) -> None:
        _platform.leave_signals_to_the_application()
        with reconnect_within(None):  # wait as long as it takes for a new host; close() interrupts
            while True:
                try:
                    kind, _ident, payload = _parse(recv_message(sock, self._max_size))
                    if kind == MESSAGE:
                        self._deliver(payload)
                except HostChanged:
                    self._resubscribe(sock)
                except (ChannelClosed, EOFError, OSError):
                    return
                except ProtocolError as exc:
                    _LOGGER.warning(
                        "channel %r: subscriber connection out of step: %s", self._channel.name, exc
                    )
                    return

    def _resubscribe(self, sock: ChannelSocket) -> None:
        while True:
            try:
                self._subscribe(sock, resume=True)
            except HostChanged:
                continue
            _LOGGER.info("channel %r: re-subscribed after a host change", self._channel.name)
            return

    def _deliver(self, payload: bytes) -> None:
        try:
            message = self._codec.loads(payload)
        except Exception:
            _LOGGER.exception("channel %r: cannot decode a published message", self._channel.name)
            return
        for callback in list(self._callbacks):
            try:
                callback(message)
            except Exception:
                _LOGGER.exception("channel %r: subscriber callback %r raised", self._channel.name, callback)

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)


#: Every RequestChannel of this process, so a forked child can reset them.
_REQUEST_CHANNELS: weakref.WeakSet[RequestChannel] = weakref.WeakSet()


class RequestChannel:
    """Request/reply and publish/subscribe among peer processes, surviving the death of the host.

    ::

        def on_request(message):            # runs in the host process, in a worker thread
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
    """

    def __init__(
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        *,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if on_request is not None and not callable(on_request):
            raise TypeError(f"on_request must be a callable taking the message, or None; not {on_request!r}")
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size < 1
        ):
            raise ValueError(f"max_message_size must be a positive number of bytes, not {max_message_size!r}")
        self._codec = resolve_codec(codec)
        self._host = _Host(name, on_request, self._codec, max_message_size)
        self._channel = Channel(name, self._host.handle, runtime_dir=runtime_dir)
        self._requester = _Requester(self._channel, max_message_size)
        self._subscriber = _Subscriber(self._channel, self._codec, max_message_size)
        _REQUEST_CHANNELS.add(self)

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

    def request(self, message: Any, timeout: float | None = 5.0) -> Any:
        """Send ``message`` to the host's ``on_request`` and return its reply. Thread-safe.

        If the host dies first, the request is sent again to the new host within
        the same timeout: at-least-once, never ``HostChanged``.

        :raises RemoteError: ``on_request`` raised in the host.
        :raises ChannelTimeout: no reply within ``timeout`` seconds.
        :raises ChannelClosed: the channel was closed.
        """
        call = self._call(REQUEST, message, timeout)
        if call.kind == ERROR:
            info = json.loads(call.payload)
            raise RemoteError(self.name, info["type"], info["message"], info["traceback"], info.get("pid"))
        return self._codec.loads(call.payload)

    def publish(self, message: Any, timeout: float | None = 5.0) -> None:
        """Deliver ``message`` to every subscriber (this process's too); return once the host sent it out.

        :raises ChannelTimeout: no host took it within ``timeout`` seconds.
        """
        self._call(PUBLISH, message, timeout)

    def subscribe(self, callback: Callable[[Any], object], timeout: float | None = 5.0) -> None:
        """Call ``callback(message)`` for every message published from now on, by any process.

        The callback runs in a background thread of this process (``ipchannel-subscriber:NAME``)
        and must not block: messages wait behind it. An exception it raises is logged.
        Subscriptions survive failover.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._check_open()
        self._subscriber.add(callback, Deadline(validate_timeout(timeout)))

    def close(self) -> None:
        """Close the channel (handing hosting over) and stop this process's threads. Idempotent."""
        self._channel.close()
        self._subscriber.join()
        self._host.shutdown()

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
            raise ChannelClosed(self.name)

    def _call(self, kind: int, message: Any, timeout: float | None) -> _Call:
        deadline = Deadline(validate_timeout(timeout))
        self._check_open()
        payload = self._codec.dumps(message)
        if self._subscriber.active:
            self._subscriber.ensure_running(deadline)  # after fork: subscribe again in this process
        try:
            call = self._requester.call(kind, payload, deadline)
        except ChannelTimeout as exc:
            raise self._timeout(deadline, exc.last_host_pid) from None
        if not call.done:
            raise self._timeout(deadline, self._channel.host_pid)
        return call

    def _timeout(self, deadline: Deadline, last_host_pid: int | None) -> ChannelTimeout:
        return ChannelTimeout(
            self.name, str(self.runtime_dir), deadline.elapsed(), last_host_pid, "no answer to the request"
        )

    def _reset_after_fork(self) -> None:
        self._host.reset()
        self._requester.reset()
        self._subscriber.reset()


def _reset_request_channels_after_fork() -> None:
    for channel in list(_REQUEST_CHANNELS):
        channel._reset_after_fork()  # noqa: SLF001


os.register_at_fork(after_in_child=_reset_request_channels_after_fork)
