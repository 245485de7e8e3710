"""The shared dicts a contrib module opened in this process, one per key, shared by every object naming it.

A Django cache (one per LOCATION) and a rate limit storage (one per channel name and kind) each
open their dict once: every backend or storage object naming it gets the same one, and one that
names it with other options is refused. ``close_all`` is for tests and processes done with it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ipchannel import _fork

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["Opened"]

Shared = TypeVar("Shared")


class Opened(Generic[Shared]):
    """Dicts opened by key (see the module); reset in a forked child (the dicts reset themselves)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Hashable, tuple[dict[str, Any], Any]] = {}
        _fork.register(self)

    def open(
        self,
        key: Hashable,
        options: dict[str, Any],
        make: Callable[[], Shared],
        conflict: Callable[[dict[str, Any]], str],
    ) -> Shared:
        """Return the dict of ``key``, made by ``make()`` on first use.

        :raises ValueError: it is open with other options (``conflict(those options)`` says so).
        """
        with self._lock:
            if key in self._open:
                opened, shared = self._open[key]
                if opened != options:
                    raise ValueError(conflict(opened))
                return shared  # type: ignore[no-any-return]
            made = make()
            self._open[key] = (options, made)
            return made

    def close_all(self) -> None:
        """Close every dict opened here (objects made earlier stop working)."""
        with self._lock:
            opened, self._open = self._open, {}
        for _, shared in opened.values():
            shared.close()

    def _reset_after_fork(self) -> None:
        """In a forked child: a new lock (a parent thread may have held it); the dicts reset themselves."""
        self._lock = threading.Lock()
