"""The host side of a RequestChannel: answer requests, fan published messages out, replay them.

Runs in the host process only: ``RequestHost.handle`` is the channel's handler,
one call per connection, in that connection's handler thread
(``ipchannel-handler:NAME``), which also runs ``on_request``. An ``on_request``
that returns a ``Deferred`` answers later, from any thread (a SharedDict's
batches are answered by the thread that applied them): its handler thread goes
back to reading at once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import _hooks
from .._errors import ProtocolError, RemoteError
from .._framing import FrameReader
from .wire import (
    ACK,
    ERROR,
    MESSAGE,
    PUBLISH,
    PUBLISH_ID,
    REPLAY_LIMIT,
    REPLY,
    REQUEST,
    SUBSCRIBE,
    build_frame,
    parse_frame,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from .._codecs import Codec

__all__ = ["Deferred", "RequestHost"]

_LOGGER = logging.getLogger("ipchannel")


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


class Deferred:
    """An answer ``on_request`` gives later: return one, then call ``resolve`` or ``fail`` from any thread.

    The first of the two calls counts. The host sends the answer from whichever
    thread comes last: the one that settles it, or the handler thread once it
    got it back from ``on_request``.
    """

    __slots__ = ("_lock", "_outcome", "_target")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcome: tuple[int, Any] | None = None  # (REPLY, reply) or (ERROR, encoded error)
        self._target: Callable[[int, Any], None] | None = None

    def resolve(self, reply: object) -> None:
        """Answer with ``reply`` (encoded with the channel's codec)."""
        self._settle((REPLY, reply))

    def fail(self, exc: BaseException) -> None:
        """Answer with ``exc``, which reaches the caller as RemoteError; call it where ``exc`` is handled."""
        self._settle((ERROR, RemoteError.encode(exc)))

    def _settle(self, outcome: tuple[int, Any]) -> None:
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome, target = outcome, self._target
        if target is not None:
            target(*outcome)

    def _bind(self, target: Callable[[int, Any], None]) -> None:
        """Say where the answer goes (the handler thread, once ``on_request`` returned)."""
        with self._lock:
            self._target, outcome = target, self._outcome
        if outcome is not None:
            target(*outcome)


class RequestHost:
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
        self._replay: deque[bytes] = deque(maxlen=REPLAY_LIMIT)

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection (runs in a handler thread of the host)."""
        peer, reader = _Peer(conn), FrameReader(conn, self._max_size)
        try:
            while True:
                try:
                    kind, ident, payload = parse_frame(reader.read())
                except EOFError:
                    return
                except ProtocolError as exc:
                    _LOGGER.warning("channel %r: closing a connection that sent garbage: %s", self._name, exc)
                    return
                if kind == REQUEST:
                    self._answer(peer, ident, payload)
                elif kind == PUBLISH and len(payload) >= PUBLISH_ID.size:
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
            if isinstance(frame, Deferred):
                frame._bind(lambda kind, body: self._send_later(peer, ident, payload, kind, body))  # noqa: SLF001 - Deferred, of this module: where its answer goes
                return
            if not self._handing_over():
                peer.send(frame)
        if _hooks.pause is not None:
            _hooks.pause("requests.answered", payload)

    def _reply(self, ident: int, payload: bytes) -> bytes | Deferred:
        try:
            if self._on_request is None:
                raise LookupError("this RequestChannel was created without on_request")  # noqa: TRY301
            reply = self._on_request(self._codec.loads(payload))
            if isinstance(reply, Deferred):
                return reply
            return build_frame(REPLY, ident, self._codec.dumps(reply))
        except Exception as exc:  # noqa: BLE001 - every failure travels back as RemoteError
            return build_frame(ERROR, ident, RemoteError.encode(exc))

    def _send_later(self, peer: _Peer, ident: int, payload: bytes, kind: int, body: object) -> None:
        """Send a deferred answer (in the thread that settled it, or the handler thread)."""
        if kind == REPLY:
            try:
                frame = build_frame(REPLY, ident, self._codec.dumps(body))
            except Exception as exc:  # noqa: BLE001 - as in _reply
                frame = build_frame(ERROR, ident, RemoteError.encode(exc))
        else:
            frame = build_frame(ERROR, ident, body)  # type: ignore[arg-type] # encoded by fail()
        if not self._handing_over():
            peer.send(frame)
        if _hooks.pause is not None:
            _hooks.pause("requests.answered", payload)

    def _publish(self, peer: _Peer, ident: int, payload: bytes) -> None:
        if self._handing_over():
            return  # not ours to fan out any more: the publisher resends it to the next host
        self.fan_out(payload)
        if _hooks.pause is not None:
            _hooks.pause("requests.fanned_out", payload)
        if not self._handing_over():  # else resent to the next host, and subscribers drop the copy
            peer.send(build_frame(ACK, ident))

    def fan_out(self, payload: bytes) -> None:
        """Send a published message to every subscriber (and keep it for resuming ones)."""
        frame = build_frame(MESSAGE, 0, payload)
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
            for frame in [build_frame(ACK, ident), *backlog]:
                peer.conn.sendall(frame)
        except OSError:
            pass
        finally:
            peer.lock.release()
        if resume and len(backlog) == REPLAY_LIMIT:
            _LOGGER.warning(
                "channel %r: a resuming subscriber may have missed messages (replay limit %d)",
                self._name,
                REPLAY_LIMIT,
            )
