"""Time limits: validating a timeout argument, and a deadline on the monotonic clock."""

from __future__ import annotations

import math
import time

__all__ = ["Deadline", "validate_timeout"]


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
