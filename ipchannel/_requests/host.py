"""The host side of a RequestChannel: answer requests, fan published messages out, replay them.

Runs in the host process only: ``RequestHost.handle`` is the channel's handler,
one call per connection, in that connection's handler thread
(``ipchannel-handler:NAME``), which also runs ``on_request``. An ``on_request``
that returns a ``Deferred`` answers later, from any thread (a SharedDict's
batches are answered by the thread that applied them): its handler thread goes
back to reading at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import _hooks
from .._errors import ProtocolError, RemoteError
from .._framing import FrameReader
from .outbox import DEFAULT_LIMITS, Limits, Outbox
from .wire import (
    ACK,
    CONFIRM,
    CONFIRMED,
    ENVELOPE,
    ERROR,
    MESSAGE,
    PUBLISH,
    PUBLISH_ID,
    REPLAY_LIMIT,
    REPLY,
    REQUEST,
    SLACK,
    SUBSCRIBE,
    SUBSCRIBED,
    SUBSCRIBER,
    build_frame,
    parse_frame,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._codecs import Codec
    from .confirm import Confirmations

__all__ = ["Deferred", "RequestHost"]

_LOGGER = logging.getLogger("ipchannel")


class _Peer:
    """One connection as the host sees it: every frame for it goes through its outbox, whole.

    Whoever sends (its handler thread, a publisher, the thread that settles a deferred
    answer) never waits for the client: a stopped client holds up no one else.
    """

    def __init__(self, conn: socket.socket, name: str, limits: Limits) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.where = ""  # where a TCP client is, for the warnings that name it
        if conn.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):  # gone already: its first read says so
                address = conn.getpeername()
                self.where = f" at {address[0]}:{address[1]}"
        self.outbox = Outbox(name, conn, self.lock, f"client connection{self.where}", limits, self.cut_off)
        self.subscribed = False
        self.member = ""  # the member name it gave (SUBSCRIBE, CONFIRM: ``Confirmations``), if any

    def send(self, frame: bytes) -> bool:
        """Send or queue ``frame``; False if the client went away (its process resends to whoever hosts)."""
        return self.outbox.put(frame)

    def cut_off(self) -> None:
        """End the connection now (a client too far behind): its handler thread reads EOF."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)


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

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by RequestChannel
        self,
        name: str,
        on_request: Callable[[Any], Any] | None,
        codec: Codec,
        max_size: int,
        handing_over: Callable[[], bool],
        generation: Callable[[], int | None],
        limits: Limits = DEFAULT_LIMITS,
        confirmations: Confirmations | None = None,
    ) -> None:
        self._name, self._on_request, self._codec, self._max_size = name, on_request, codec, max_size
        self._handing_over, self._generation, self._limits = handing_over, generation, limits
        self._confirmations = confirmations
        self.reset()

    def reset(self) -> None:
        """Forget every connection and the replay buffer (a forked child starts with none)."""
        self._lock = threading.Lock()
        self._subscribers: set[_Peer] = set()
        self._term = 0  # the host generation the numbers and the replay buffer are of
        self._number = 0  # of the last message fanned out in that term
        self._replay: deque[tuple[int, bytes]] = deque(maxlen=REPLAY_LIMIT)

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection (runs in a handler thread of the host)."""
        peer, reader = _Peer(conn, self._name, self._limits), FrameReader(conn, self._max_size)
        try:
            while True:
                try:
                    kind, ident, payload = parse_frame(reader.read())
                except EOFError:
                    peer.outbox.flush(self._limits.max_lag)  # the client may still read what is queued
                    return
                except ProtocolError as exc:
                    _LOGGER.warning("channel %r: closing a connection that sent garbage: %s", self._name, exc)
                    return
                if kind == REQUEST:
                    self._answer(peer, ident, payload)
                elif kind == PUBLISH and len(payload) >= PUBLISH_ID.size:
                    self._publish(peer, ident, payload)
                elif kind == SUBSCRIBE and payload:
                    self._subscribe(peer, ident, payload)
                elif kind == CONFIRM and len(payload) > CONFIRMED.size and self._confirmations is not None:
                    self._confirmed(peer, payload)
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
            peer.cut_off()  # a send blocked in the outbox's thread ends with it
            peer.outbox.close()
            if peer.member and self._confirmations is not None:
                self._confirmations.gone(peer.member, peer.cut_off)

    def _confirmed(self, peer: _Peer, payload: bytes) -> None:
        """Pass a subscriber's word on what it holds to the layer above (``Confirmations``)."""
        assert self._confirmations is not None
        generation, position = CONFIRMED.unpack_from(payload)
        self._named(peer, payload[CONFIRMED.size :])
        self._confirmations.confirmed(peer.member, generation, position, peer.cut_off)

    def _named(self, peer: _Peer, name: bytes) -> None:
        """Take the member name ``peer`` gave (SUBSCRIBE, CONFIRM): its subscription is on this connection."""
        assert self._confirmations is not None
        member = bytes(name).decode(errors="replace")  # garbage names nobody
        if member != peer.member:  # this connection is new to it (it named nobody, or another)
            if peer.member:
                self._confirmations.gone(peer.member, peer.cut_off)
            peer.member = member
            self._confirmations.subscribed(member, peer.cut_off)

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
        self.wait_taken(self.fan_out(payload))
        if _hooks.pause is not None:
            _hooks.pause("requests.fanned_out", payload)
        if not self._handing_over():  # else resent to the next host, and subscribers drop the copy
            peer.send(build_frame(ACK, ident))

    def fan_out(self, payload: bytes, taken_here: Callable[[], bool] | None = None) -> int:
        """Queue a published message for every subscriber (and keep it for resuming ones); its number.

        Never blocks; under the lock, so every subscriber gets the term's messages in the order
        of their numbers. A message larger than every subscriber reads is refused (ValueError).
        Acknowledge it only after ``wait_taken``. ``taken_here`` (a SharedDict's own changes):
        called under the lock; True if this process's own subscription took the message
        already, in its place in the order, so it is not sent to it (nor decoded there).
        """
        if ENVELOPE.size + len(payload) > self._max_size + SLACK:
            raise ValueError(f"a published message of {len(payload)} bytes is over max_message_size")
        with self._lock:
            self._start_term()
            self._number += 1
            frame = build_frame(MESSAGE, self._number, payload)
            self._replay.append((self._number, frame))  # replayed to our own too, if it resumes: held
            own = self._own_subscription(taken_here)
            for subscriber in list(self._subscribers):
                if own and subscriber.member == own:
                    continue
                if not subscriber.outbox.put(frame, self._number):
                    self._subscribers.discard(subscriber)
            return self._number

    def _own_subscription(self, taken_here: Callable[[], bool] | None) -> str:
        """Return the member name of this process's own subscription if it took the message (else "")."""
        if taken_here is None or self._confirmations is None:
            return ""
        own = self._confirmations.member()  # what our own SUBSCRIBE said (``Subscriber._subscribe``)
        return own if own and taken_here() else ""

    def wait_taken(self, number: int) -> None:
        """Return once every subscriber's socket has message ``number``, or it was cut off (``max_lag``).

        Then an acknowledged message is with every subscriber even if the host dies (locally:
        across machines a written frame may still be lost with the host's machine).
        """
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.outbox.wait_written(number)

    def _start_term(self) -> None:
        """Start numbering from 1 in a new host term, with an empty replay buffer (call with the lock)."""
        generation = self._generation() or 0
        if generation != self._term:
            self._term, self._number = generation, 0
            self._replay.clear()

    def _backlog(self, after: int) -> list[tuple[int, bytes]]:
        """Return the frames of this term after number ``after``: the newest that fit in half the limit.

        More would have the subscriber cut off again at once; what does not fit, it is told it missed.
        """
        backlog: list[tuple[int, bytes]] = []
        room = self._limits.max_backlog // 2
        for number, frame in reversed(self._replay):
            if number <= after or len(frame) > room:
                break
            backlog.append((number, frame))
            room -= len(frame)
        backlog.reverse()
        return backlog

    def _subscribe(self, peer: _Peer, ident: int, payload: bytes) -> None:
        """Subscribe ``peer``; if it resumes, replay what it lacks of this term and say what is gone."""
        resume = payload[:1] == b"\x01"
        pid, generation, last = (
            SUBSCRIBER.unpack_from(payload, 1) if len(payload) > SUBSCRIBER.size else (0, 0, 0)
        )
        who = f"pid {pid}{peer.where}"
        if self._confirmations is not None and len(payload) > 1 + SUBSCRIBER.size:  # its member name
            self._named(peer, payload[1 + SUBSCRIBER.size :])
        with self._lock:
            self._start_term()
            if not peer.subscribed:
                peer.subscribed = True
                peer.outbox.subscribed(f"subscriber {who}")
            after = last if generation == self._term else 0
            backlog = self._backlog(after) if resume else []
            first = self._number + 1 - len(backlog)
            missed = max(0, first - after - 1) if resume else 0
            self._subscribers.add(peer)
            for number, frame in [(0, build_frame(ACK, ident, SUBSCRIBED.pack(missed))), *backlog]:
                if not peer.outbox.put(frame, number):
                    self._subscribers.discard(peer)
                    return
        if missed:
            _LOGGER.warning(
                "channel %r: subscriber %s missed %d message(s) of host term %d (replay limit %d)",
                self._name,
                who,
                missed,
                self._term,
                REPLAY_LIMIT,
            )
