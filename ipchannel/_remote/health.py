"""Whether the engine answers: the one record of why it did not, shared by a coordinator's parts.

An engine that does not answer is never an exception for the channel: it is noted here
(logged once, at WARNING, until it answers again) and the election waits, within the
callers' timeouts, while ``problem`` says why (``CoordinatorUnavailable`` words it).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import EngineUnavailable

__all__ = ["EngineHealth"]

_LOGGER = logging.getLogger("ipchannel")


class EngineHealth:
    """Why the engine did not answer last time ("" once it does); quiet once the channel closes."""

    def __init__(self, name: str, url: str) -> None:
        self._name, self._url = name, url
        self.problem = ""
        self.closing = threading.Event()  # set by close(): a watch cut on purpose is no failure

    def failed(self, exc: EngineUnavailable) -> None:
        """Note that the engine did not answer (logged once until it answers again)."""
        if self.closing.is_set():
            return
        if not self.problem:
            _LOGGER.warning("channel %r: the coordinator %s does not answer: %s", self._name, self._url, exc)
        self.problem = str(exc) or type(exc).__name__

    def answered(self) -> None:
        """Note that the engine answered."""
        self.problem = ""
