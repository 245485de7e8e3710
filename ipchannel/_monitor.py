"""The monitor: one background thread per channel that keeps a host alive.

Thread ``ipchannel-monitor:NAME`` calls the channel's ``_monitor_tick`` every
interval until the channel's stop Event is set. The tick notices a dead host
(pid + create time, psutil) even when no call is blocked on it and runs the
election; in the host it restarts a server thread that died. A tick that
raises is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from . import _platform

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Monitor"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0


class Monitor:
    """Runs ``tick()`` every ``interval`` seconds on a named daemon thread until ``stopping`` is set."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], None],
        interval: float,
        stopping: threading.Event,
        first: Callable[[], None] | None = None,
    ) -> None:
        self._first = first
        self._tick = tick
        self._interval = interval
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name=f"ipchannel-monitor:{name}", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread to end; the caller has set the stop Event."""
        if self._thread is threading.current_thread() or not self._thread.is_alive():
            return
        self._thread.join(_JOIN_TIMEOUT)
        if self._thread.is_alive():
            _LOGGER.warning("%s did not stop within %.1f s", self._thread.name, _JOIN_TIMEOUT)

    def _run(self) -> None:
        _platform.leave_signals_to_the_application()
        if self._first is not None:
            try:
                self._first()
            except Exception:
                _LOGGER.exception("%s: start-up work failed", self._thread.name)
        while not self._stopping.wait(self._interval):
            try:
                self._tick()
            except Exception:
                _LOGGER.exception("%s: monitor tick failed", self._thread.name)
