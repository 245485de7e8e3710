"""What a process does with what its subscription brings: each message to the callbacks once, gaps told."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .wire import DEDUP_WINDOW, PUBLISH_ID

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._codecs import Codec

__all__ = ["Inbox"]

_LOGGER = logging.getLogger("ipchannel")


class Inbox:
    """What this process does with what its subscription brings: callbacks, once each, and gaps reported.

    The ids of the last ``DEDUP_WINDOW`` messages delivered are remembered, so a message resent
    after a failover, or replayed, is delivered once. Runs on ``ipchannel-subscriber:NAME``.
    """

    def __init__(self, name: str, codec: Codec) -> None:
        self._name, self._codec = name, codec
        self.callbacks: list[Callable[[Any], object]] = []
        self.missed_callbacks: list[Callable[[int | None], object]] = []
        self.forget()

    def forget(self) -> None:
        """Remember no message (a forked child's subscription is its own)."""
        self._ids: set[bytes] = set()
        self._order: deque[bytes] = deque()

    def deliver(self, payload: bytes) -> None:
        if len(payload) < PUBLISH_ID.size:
            _LOGGER.warning("channel %r: dropping a published message without an id", self._name)
            return
        if self._again(payload[: PUBLISH_ID.size]):
            return
        try:
            message = self._codec.loads(payload[PUBLISH_ID.size :])
        except Exception:
            _LOGGER.exception("channel %r: cannot decode a published message", self._name)
            return
        self._call(self.callbacks, message, "subscriber")

    def missed(self, count: int | None) -> None:
        """Tell the ``on_missed`` callbacks that ``count`` messages (None: unknown) are lost for good."""
        shown = "an unknown number of" if count is None else count
        _LOGGER.warning("channel %r: this process's subscription missed %s message(s)", self._name, shown)
        self._call(self.missed_callbacks, count, "on_missed")

    def _call(self, callbacks: list[Callable[[Any], object]], argument: object, kind: str) -> None:
        for callback in list(callbacks):
            try:
                callback(argument)
            except Exception:
                _LOGGER.exception("channel %r: %s callback %r raised", self._name, kind, callback)

    def _again(self, ident: bytes) -> bool:
        """Remember ``ident``; True if it was among the last ``DEDUP_WINDOW`` already."""
        if ident in self._ids:
            return True
        self._ids.add(ident)
        self._order.append(ident)
        if len(self._order) > DEDUP_WINDOW:
            self._ids.discard(self._order.popleft())
        return False
