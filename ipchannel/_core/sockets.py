"""The sockets a channel made (``connect()``), so it can tell each one what happened to its host."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from .. import _hooks
from .._errors import ChannelClosed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._seams.record import HostRecord
    from .socket import ChannelSocket, Event

__all__ = ["Sockets"]


class Sockets:
    """A weak set of a channel's sockets, added to and listed under one lock.

    A ``WeakSet`` listed while another thread adds to it raises RuntimeError ("Set changed
    size during iteration"): a host change's "kick" or ``close()`` would stop half done.
    Threads: ``add`` in any caller of ``connect()``; ``tell`` in the monitor, a recovering
    socket's thread or the closing one.
    """

    def __init__(self, name: str) -> None:
        self._name = name  # the channel's, for ChannelClosed
        self._sockets: weakref.WeakSet[ChannelSocket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False  # told "close": a socket added later is closed at once

    def add(self, sock: ChannelSocket) -> None:
        """Keep ``sock``; ChannelClosed, and ``sock`` closed, if the channel closed while it was made.

        A ``connect()`` on another thread can be past its check of the channel's phase when
        ``close()`` tells every socket: the one it makes would stay open, with nobody to close it.
        """
        if _hooks.pause is not None:
            _hooks.pause("channel.connected", sock)
        with self._lock:
            if not self._closed:
                self._sockets.add(sock)
                return
        sock._on_channel("close")  # noqa: SLF001 - the one door out, as in ``tell``
        raise ChannelClosed(self._name)

    def tell(self, event: Event, record: HostRecord | None = None) -> None:
        """Tell every socket what happened to it (``Event``)."""
        if event == "fork":  # one thread left, and the lock may be one a lost thread held
            self._lock = threading.Lock()
        with self._lock:
            self._closed = self._closed or event == "close"
            listed = list(self._sockets)
        for sock in listed:
            sock._on_channel(event, record)  # noqa: SLF001 - the one door out: what the channel tells them

    def __iter__(self) -> Iterator[ChannelSocket]:
        with self._lock:
            return iter(list(self._sockets))

    def __len__(self) -> int:
        return len(self._sockets)
