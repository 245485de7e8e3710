"""``items()`` and ``values()`` of a shared dict, from one copy of its replica."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import ItemsView, ValuesView

__all__ = ["SnapshotViews"]


class SnapshotViews:
    """A base that gives ``items()`` and ``values()`` from one ``copy()``, taken under the replica's lock.

    ``Mapping``'s own views list the keys, then look each one up: a key the subscriber thread
    deleted in between raised KeyError, and a resync in between mixed two states. These are
    snapshots: they do not follow later changes (``keys()`` and iteration already list them once).
    """

    __slots__ = ()

    def copy(self) -> dict[Any, Any]:
        """Return a plain dict copy of the local replica (the class this is a base of defines it)."""
        raise NotImplementedError

    def items(self) -> ItemsView[Any, Any]:
        """Return the (key, value) pairs of one copy of the local replica."""
        return self.copy().items()

    def values(self) -> ValuesView[Any]:
        """Return the values of one copy of the local replica."""
        return self.copy().values()
