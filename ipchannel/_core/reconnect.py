"""How long a socket waits for a new host after its connection is lost, bounded per thread.

A ``ChannelSocket`` waits up to the timeout it was connected with; a layer with deadlines of its
own (the request layer) shares one socket between threads, each bounding its wait by its own.
"""

from __future__ import annotations

import threading
from typing import cast

__all__ = ["reconnect_within", "wait_for_new_host"]

_NO_OVERRIDE = object()
_override = threading.local()


class reconnect_within:  # noqa: N801 - used like a function: ``with reconnect_within(seconds):``
    """In this thread, bound a socket's wait for a new host by ``seconds`` instead of its connect timeout.

    Lets a layer with its own deadlines (the request layer) share one socket between threads.
    A class rather than ``@contextmanager``: it is on every request's path.
    """

    __slots__ = ("_previous", "_seconds")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._previous: object = _NO_OVERRIDE

    def __enter__(self) -> None:
        self._previous = getattr(_override, "seconds", _NO_OVERRIDE)
        _override.seconds = self._seconds

    def __exit__(self, *exc_info: object) -> None:
        _override.seconds = self._previous


def wait_for_new_host(default: float | None) -> float | None:
    """Return this thread's bound on a wait for a new host (``reconnect_within``), else ``default``."""
    override = getattr(_override, "seconds", _NO_OVERRIDE)
    return default if override is _NO_OVERRIDE else cast("float | None", override)
