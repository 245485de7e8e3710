"""Time limits: validating a timeout argument, a deadline on the monotonic clock, and the retry backoff."""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Backoff", "Deadline", "validate_timeout"]

_LOGGER = logging.getLogger("ipchannel")


def validate_timeout(timeout: object, name: str = "timeout") -> float | None:
    """Return ``timeout`` as float seconds (None: forever), or raise TypeError/ValueError naming ``name``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds (int or float) or None, not {type(timeout).__name__}"
        )
    seconds = float(timeout)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, or None to wait forever; got {timeout!r}")
    return None if math.isinf(seconds) else seconds


class Deadline:
    """A point in time measured on the monotonic clock; ``None`` timeout means never."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._start = time.monotonic()
        self._end = math.inf if timeout is None else self._start + timeout

    def remaining(self) -> float:
        """Seconds left, never negative; ``inf`` for no deadline."""
        return max(0.0, self._end - time.monotonic())

    def elapsed(self) -> float:
        """Seconds since the deadline was created."""
        return time.monotonic() - self._start


class Backoff:
    """Waits between election attempts: 1 ms doubling to 50 ms, with jitter, within a deadline.

    ``wait(seconds)`` is the channel's stop Event ``wait``, so ``close()``
    interrupts a waiting ``connect()``; it returns True when interrupted.
    ``sleep(changed)`` also ends early, checking every ``POLL`` seconds, once
    ``changed()`` says the election can move on (a new host published itself, or
    the dead one's lock is free): waiters act within half a millisecond of it
    instead of at their next backoff step; with ``events``, at once, and asleep meanwhile.
    """

    FIRST = 0.001
    CAP = 0.05
    POLL = 0.0005
    STOP_CHECK = 0.01  # with ``events``: how often the stop Event (and ``changed()``) is looked at

    def __init__(self, deadline: Deadline, wait: Callable[[float], bool], first: float = FIRST) -> None:
        self._deadline = deadline
        self._wait = wait
        self._delay = first

    def sleep(
        self, changed: Callable[[], bool] | None = None, events: Callable[[float], bool] | None = None
    ) -> bool:
        """Wait for the next attempt. Return False if the deadline has passed or the wait was interrupted.

        ``events(seconds)``: sleep on descriptors that turn when ``changed()`` may have (it is
        asked then, and every ``STOP_CHECK``), instead of asking it every ``POLL``.
        """
        remaining = self._deadline.remaining()
        if remaining <= 0:
            return False
        delay = min(self._delay * random.uniform(0.5, 1.5), remaining)  # noqa: S311 - jitter, not crypto
        self._delay = min(self._delay * 2, self.CAP)
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            if events is not None and changed is not None:
                if changed():
                    break
                events(min(left, self.STOP_CHECK))
                if self._wait(0.0):
                    return False
                continue
            if self._wait(left if changed is None else min(left, self.POLL)):
                return False
            if changed is not None and changed():
                break
        _LOGGER.debug("election: retrying after %.1f ms", (delay - max(0.0, left)) * 1000)
        return True
