"""The sleeps of a process waiting in the election, on descriptors where the backend gives them.

``ElectionWaits`` opens the backend's ``ElectionNotices`` at the first backoff sleep of an
election loop (never on the warm path), reopens them when the host to get past changes,
and closes them when the loop ends (a ``with`` block). Without them the backoff looks at
the coordinator every ``Backoff.POLL`` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from .._seams.base import ElectionNotices, Waiting
    from .._seams.record import HostRecord

__all__ = ["ElectionWaits"]


class ElectionWaits:
    """What one election loop sleeps on: opened lazily, per dead host, closed when the loop ends."""

    def __init__(self, notices: ElectionNotices | None) -> None:
        self._notices = notices
        self._open: tuple[HostRecord | None, Waiting] | None = None

    def events(self, dead: HostRecord | None) -> Callable[[float], bool] | None:
        """Return the sleep on the notices of ``dead``'s exit and of a new host, or None (poll)."""
        if self._notices is None:
            return None
        if self._open is None or self._open[0] != dead:
            self.close()
            waiting = self._notices.open(dead)
            if waiting is None:
                self._notices = None  # none here (inotify unavailable or used up): poll from now on
                return None
            self._open = (dead, waiting)
        return self._open[1].wait

    def close(self) -> None:
        """Close what is open (idempotent)."""
        if self._open is not None:
            _dead, waiting = self._open
            self._open = None
            waiting.close()

    def __enter__(self) -> ElectionWaits:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
