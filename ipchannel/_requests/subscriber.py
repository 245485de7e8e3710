"""The client side of a RequestChannel's publish/subscribe: this process's subscription.

The subscriber socket re-subscribes with the resume flag after a host change; the new
host replays what was published to it in its term, and copies of a message (resent, or
replayed) are dropped by their ``msgid``. A subscription the host cut off (this process
fell too far behind: ``outbox``), or that failed otherwise, is opened again the same
way, saying the last message it got; what the host could not replay is reported to the
``on_missed`` callbacks. Callbacks run on ``ipchannel-subscriber:NAME``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._core.reconnect import reconnect_within
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, HostChanged, ProtocolError
from .._framing import FrameReader, FrameTooLarge
from .._locks import release_if_held
from .._timing import Deadline
from .confirm import Confirmer
from .inbox import Inbox
from .resend import Ended, with_resends
from .wire import (
    ACK,
    ENVELOPE,
    MESSAGE,
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
    from .._core.channel import Channel
    from .._core.socket import ChannelSocket
    from .confirm import Confirmations

__all__ = ["Subscriber"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 2.0
_RESUME_TRY = 1.0  # seconds per attempt of a background re-subscription (after fork, after a cut)
_RETRY_PAUSE = 0.1  # after a re-subscription that failed with an error, before the next try


class Subscriber:
    """The subscriber connection of this process and the thread that runs the callbacks.

    Published messages carry their publisher's id and number (``PUBLISH_ID``): the last ``DEDUP_WINDOW``
    ids seen are kept, so a message resent after a failover or replayed to a resuming one is delivered once.
    """

    def __init__(
        self,
        channel: Channel,
        codec: Codec,
        max_size: int,
        timeout_error: Callable[[Deadline, str], ChannelTimeout],
        confirmations: Confirmations | None = None,
    ) -> None:
        self._channel, self._max_size = channel, max_size
        self._confirmer = None if confirmations is None else Confirmer(channel.name, confirmations)
        self.inbox = Inbox(channel.name, codec)
        self._timeout_error = timeout_error
        self.reset()

    def reset(self) -> None:
        """Start afresh; callbacks are kept (a forked child subscribes again, see ``resume_after_fork``)."""
        self._lock = threading.RLock()  # an RLock: releasing it when not held raises (ensure_running)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # of the thread running now: set, it ends (``remove``)
        self._sock: ChannelSocket | None = None  # the connection that thread reads
        self._ending: list[threading.Thread] = []  # threads told to stop, joined by ``join``
        self.generation: int | None = None  # of the host our subscription is attached to
        self.epoch: str | None = None  # of that generation: a host of another (a reset) numbers anew, from 1
        self._last = 0  # number of the last message that host sent us
        self._cut = False  # the subscription ended without a host change: what came meanwhile is unknown
        self.inbox.forget()

    @property
    def active(self) -> bool:
        return bool(self.inbox.callbacks)

    def add(self, callback: Callable[[Any], object], deadline: Deadline) -> None:
        with self._lock:
            self.inbox.callbacks.append(callback)
            if self._thread is None:
                try:
                    self._start(deadline)
                except BaseException:
                    self.inbox.callbacks.remove(callback)  # not subscribed: leave no trace
                    raise

    def remove(self, callback: Callable[[Any], object]) -> bool:
        """Stop calling ``callback``; the last one ends the subscription (without waiting). False: unknown."""
        with self._lock:
            if callback not in self.inbox.callbacks:
                return False
            self.inbox.callbacks.remove(callback)
            if self.inbox.callbacks or self._thread is None:
                return True
            self._ending = [thread for thread in self._ending if thread.is_alive()]  # no growth: let ended go
            self._ending.append(self._thread)
            stop, sock = self._stop, self._sock
            self._thread, self.generation, self.epoch, self._last = None, None, None, 0
        stop.set()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the host sees the end; the thread reads it and returns
        return True

    def ensure_running(self, deadline: Deadline) -> None:
        """Subscribe again if there are callbacks but no subscriber thread (fork, lost link), by deadline."""
        remaining = deadline.remaining()
        try:  # taken inside, see _locks
            if not self._lock.acquire(timeout=-1 if math.isinf(remaining) else remaining):
                raise self._timeout_error(deadline, "another thread is still subscribing")
            if self.inbox.callbacks and (self._thread is None or not self._thread.is_alive()):
                self._start(deadline, resume=self._thread is not None)
        finally:
            release_if_held(self._lock)

    def resume_after_fork(self) -> None:
        """In a forked child with callbacks: subscribe again now, in the background (a listening worker)."""
        if self.inbox.callbacks:
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
        sock, reader = with_resends(
            lambda: self._connected(deadline, resume=resume), deadline, self._channel.name, "subscription"
        )
        self._stop, self._sock = threading.Event(), sock
        self._thread = threading.Thread(
            target=self._run,
            args=(sock, reader, self._stop),
            name=f"ipchannel-subscriber:{self._channel.name}",
            daemon=True,
        )
        self._thread.start()

    def _connected(self, deadline: Deadline, *, resume: bool) -> tuple[ChannelSocket, FrameReader]:
        """Connect and subscribe; ``Ended`` if the host ended the connection before acknowledging."""
        sock = self._channel.connect(timeout=deadline.remaining())
        reader = FrameReader(sock, self._max_size + SLACK)
        try:
            self._subscribe_within(sock, reader, deadline, resume=resume)
        except BaseException:
            sock.close()
            raise
        return sock, reader

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
            raise self._timeout_error(deadline, "the host did not acknowledge the subscription") from None
        except (EOFError, ConnectionError) as exc:  # not a ChannelError (above): ended by a host going away
            raise Ended(str(exc) or "it closed the connection before acknowledging") from exc
        sock.settimeout(None)

    def _subscribe(self, sock: ChannelSocket, reader: FrameReader, *, resume: bool) -> None:
        """Send SUBSCRIBE and wait for its ACK; messages arriving before it are delivered."""
        reader.clear()  # after a host change: a partial frame from the old host is worthless
        term = (self.generation or 0, self._last) if sock.host_epoch == self.epoch else (0, 0)  # all of it
        where = SUBSCRIBER.pack(os.getpid(), *term)
        where += b"" if self._confirmer is None else self._confirmer.member()
        sock.sendall(build_frame(SUBSCRIBE, 1, (b"\x01" if resume else b"\x00") + where))
        _LOGGER.debug(
            "channel %r: subscription sent to host pid %s; waiting for its acknowledgement",
            self._channel.name,
            self._channel.host_pid,
        )
        while True:
            kind, ident, payload = parse_frame(reader.read())
            if kind == ACK:
                self._attached(sock.host_generation, sock.host_epoch, payload)
                if self._confirmer is not None:  # a new connection: the host knows us from our CONFIRM
                    self._confirmer.confirm(sock, self.generation, again=True)
                return
            self._deliver(ident, payload)

    def _attached(self, generation: int | None, epoch: str | None, ack: bytes) -> None:
        """Follow the numbers of the host that acknowledged us; report what is lost for good."""
        (missed,) = SUBSCRIBED.unpack(ack) if len(ack) == SUBSCRIBED.size else (0,)
        another = (generation, epoch) != (self.generation, self.epoch)  # a new host term
        if self._cut and self.generation is not None and another:
            missed = -1  # cut off from the old host, which may have published more before it went
        moved = self.generation is not None and another
        if another:
            self.generation, self.epoch, self._last = generation, epoch, 0
        self._cut = False
        if missed:
            self.inbox.missed(None if missed < 0 else missed)
        elif moved and self._confirmer is not None:
            self._confirmer.moved()

    def _run(self, sock: ChannelSocket, reader: FrameReader, stop: threading.Event) -> None:
        _platform.leave_signals_to_the_application()
        try:
            while True:
                with reconnect_within(None):  # wait as long as it takes for a new host; close() interrupts
                    self._follow(sock, reader, stop)
                sock.close()
                if stop.is_set() or (opened := self._open_again(stop)) is None:
                    return
                sock, reader = opened
                self._sock = sock
                if stop.is_set():  # removed meanwhile, before it could shut this one down
                    return
        except ChannelClosed:
            return
        except Exception:
            _LOGGER.exception(
                "channel %r: the subscriber thread failed; it starts again at this process's next request"
                " or publish",
                self._channel.name,
            )
        finally:
            sock.close()

    def _follow(self, sock: ChannelSocket, reader: FrameReader, stop: threading.Event) -> None:
        """Deliver messages, subscribing again on each host change; return when the connection is lost."""
        while not stop.is_set():
            try:
                try:
                    frame = reader.read()
                except FrameTooLarge as exc:  # read on: subscribing again would replay it, over and over
                    self._last = max(self._last, _skip(reader, exc.size, self._channel.name))
                    self.inbox.missed(1)
                    continue
                kind, ident, payload = parse_frame(frame)
                if kind == MESSAGE and not stop.is_set():
                    self._deliver(ident, payload, sock)
                continue
            except HostChanged:
                pass
            except ChannelClosed:
                raise
            except (EOFError, OSError, ProtocolError, ChannelError) as exc:
                if not stop.is_set():  # else this process unsubscribed: the end it read is its own
                    self._read_lost(exc)
                return
            try:
                self._resubscribe(sock, reader)
            except ChannelClosed:
                raise
            except (EOFError, OSError, ProtocolError, ChannelError) as exc:
                _lost(self._channel, exc)
                self._cut = True
                return

    def _read_lost(self, exc: BaseException) -> None:
        """Say why the connection was lost while reading (not a host change); it is opened again."""
        self._cut = True
        if isinstance(exc, (EOFError, ProtocolError)):  # the host is alive and cut this process off
            name = self._channel.name
            _LOGGER.info("channel %r: the host ended this process's subscription (%s)", name, exc or "EOF")
        else:
            _lost(self._channel, exc)

    def _open_again(self, stop: threading.Event) -> tuple[ChannelSocket, FrameReader] | None:
        """Subscribe on a new connection, as long as it takes; None once the channel is closed."""
        while not self._channel.closed and not stop.is_set():
            try:
                sock = self._channel.connect(timeout=_RESUME_TRY)
            except ChannelClosed:
                return None
            except ChannelTimeout:
                continue
            except (OSError, ChannelError) as exc:
                _lost(self._channel, exc)
                time.sleep(_RETRY_PAUSE)
                continue
            reader = FrameReader(sock, self._max_size + SLACK)
            try:
                self._subscribe_within(sock, reader, Deadline(_RESUME_TRY), resume=True)
            except ChannelClosed:
                sock.close()
                return None
            except (OSError, ChannelError) as exc:
                sock.close()
                if not isinstance(exc, ChannelTimeout):
                    _lost(self._channel, exc)
                    time.sleep(_RETRY_PAUSE)
                continue
            _LOGGER.info("channel %r: subscribed again", self._channel.name)
            return sock, reader
        return None

    def _resubscribe(self, sock: ChannelSocket, reader: FrameReader) -> None:
        while True:
            try:
                self._subscribe(sock, reader, resume=True)
            except HostChanged:
                continue
            _LOGGER.info("channel %r: re-subscribed after a host change", self._channel.name)
            return

    def _deliver(self, number: int, payload: bytes, sock: ChannelSocket | None = None) -> None:
        """Deliver a message; then (``sock``) confirm what the callbacks made of it (``Confirmations``)."""
        self._last = max(self._last, number)
        self.inbox.deliver(payload)
        if sock is not None and self._confirmer is not None:
            self._confirmer.confirm(sock, self.generation)

    def join(self) -> None:
        """Wait for the subscriber threads to end (the channel is closed, or they were told to stop)."""
        with self._lock:
            threads, self._ending = [*self._ending, self._thread], []
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)


def _skip(reader: FrameReader, size: int, name: str) -> int:
    """Skip a published message over this process's limit; return its number (0 if unknown)."""
    head = reader.skip(ENVELOPE.size)
    kind, number = ENVELOPE.unpack(head) if len(head) == ENVELOPE.size else (0, 0)
    _LOGGER.warning(
        "channel %r: skipped a published message of %d bytes, over this process's max_message_size"
        " (every process of a channel should pass the same)",
        name,
        size,
    )
    return int(number) if kind == MESSAGE else 0


def _lost(channel: Channel, exc: BaseException) -> None:
    """Say that the subscription was lost (it is opened again); not while the process exits."""
    if not channel.closed:
        exiting = not threading.main_thread().is_alive()  # the channel closes at exit: no news
        _LOGGER.log(
            logging.DEBUG if exiting else logging.WARNING,
            "channel %r: subscription lost (%s: %s); subscribing again",
            channel.name,
            type(exc).__name__,
            exc,
        )
