"""Strangers on a TCP host's port: how many may wait unauthenticated, and how loudly they are refused.

Anyone who can reach the port can open a connection, and each costs the host a
handler thread until its handshake ends. So a host lets at most
``MAX_UNAUTHENTICATED`` connections wait for their handshake at once, each within
one deadline (``_auth.HANDSHAKE_TIMEOUT`` for TLS, the authkey and the hello
together). When a new one arrives and the places are full, the *oldest* waiting
connection is shut down: an honest peer finishes its handshake in a few round trips,
so it is never the oldest for long, while silent or slow-drip connections are; a
flood therefore cannot keep honest peers out unless it opens more connections per
handshake time than there are places. Refusals are logged at most once per
``LOG_INTERVAL`` (with how many were refused meanwhile): a port scanner does not fill the log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict

__all__ = ["LOG_INTERVAL", "MAX_UNAUTHENTICATED", "Admission", "Throttled"]

_LOGGER = logging.getLogger("ipchannel")
#: connections a host lets wait for their handshake at once; a new one beyond shuts the oldest down
MAX_UNAUTHENTICATED = 64
LOG_INTERVAL = 10.0  # seconds between two warnings about refused strangers


class Throttled:
    """A WARNING logged at most once per ``interval``; the next one says how many were held back."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time from which the next warning is logged
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log ``message % args`` as a WARNING, unless one was logged less than an interval ago."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return
            held, self._held, self._next = self._held, 0, now + self._interval
        more = f" ({held} more refused in the last {self._interval:.0f} s, not logged)" if held else ""
        _LOGGER.warning("%s%s", message % args, more)


class Admission:
    """The connections accepted but not yet authenticated, oldest first, at most ``cap`` of them."""

    def __init__(self, channel: str, cap: int = MAX_UNAUTHENTICATED) -> None:
        self._channel, self._cap = channel, cap
        self.warn = Throttled()
        self._lock = threading.Lock()
        self._waiting: OrderedDict[int, socket.socket] = OrderedDict()  # by descriptor: TLS keeps it

    def enter(self, conn: socket.socket) -> None:
        """In the accepting thread: count ``conn`` in; if the places are full, shut the oldest one down."""
        with self._lock:
            self._waiting.pop(conn.fileno(), None)  # a stale entry's place would make it look the oldest
            self._waiting[conn.fileno()] = conn
            oldest = self._waiting.popitem(last=False)[1] if len(self._waiting) > self._cap else None
            if oldest is not None:
                with contextlib.suppress(OSError):  # its thread wakes, sees EOF and ends
                    socket.socket.shutdown(oldest, socket.SHUT_RDWR)  # the descriptor, not TLS's override
        if oldest is not None:
            self.warn(
                "channel %r: closed an unauthenticated connection: %d were waiting for their handshake "
                "(a port scanner or a flood?); the oldest makes room",
                self._channel,
                self._cap,
            )

    def replace(self, old: socket.socket, new: socket.socket) -> None:
        """Hand ``old``'s place to ``new``, which took its descriptor over (TLS wrapped it)."""
        with self._lock:
            if self._waiting.get(new.fileno()) is old:
                self._waiting[new.fileno()] = new

    def leave(self, fileno: int) -> None:
        """Free the place of ``fileno``, whose handshake ended (either way)."""
        with self._lock:
            self._waiting.pop(fileno, None)
