"""The one at-fork hook: every object that keeps per-process state is reset here, in a forked child.

``os.fork()`` (gunicorn ``--preload``, ``multiprocessing`` with fork) copies
every identity a process holds: writer ids and counters, connections, locks
held by threads that do not exist in the child, the parent's lock descriptor.
Each such object registers itself when it is created; in the child, one hook
calls their ``_reset_after_fork()`` in creation order, so a Channel is reset
before the RequestChannel built on it, and that before the SharedDict on top.
Only then, in a second pass, objects that have one run ``_resume_after_fork()``:
background work (a subscription, a resync) starts once nothing is left half reset.

A child that ``spawn`` or ``forkserver`` starts inherits nothing: it opens its own by name.
``ProcessBound`` objects refuse to be pickled (sent to it) and say so.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from typing import NoReturn, Protocol, SupportsIndex

__all__ = ["ProcessBound", "register"]

_LOGGER = logging.getLogger("ipchannel")


class _Resettable(Protocol):
    def _reset_after_fork(self) -> None: ...


_order = itertools.count()
#: Every registered object of this process, by registration order (weak: a closed, dropped one goes).
_registered: weakref.WeakValueDictionary[int, _Resettable] = weakref.WeakValueDictionary()


class ProcessBound:
    """A base for what belongs to the process that opened it (connections, threads, a replica)."""

    __slots__ = ()

    def __copy__(self) -> NoReturn:
        """Refuse to be copied (``copy.copy``, ``deepcopy``): it is this process's handle on shared state."""
        name = type(self).__name__
        raise TypeError(
            f"cannot copy a {name}: it is this process's handle on state shared with others; use it as "
            "it is (a SharedDict's copy() gives a plain dict of what it holds)"
        )

    def __deepcopy__(self, memo: object) -> NoReturn:
        """As ``__copy__``."""
        self.__copy__()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Refuse to be pickled, as when sent to a ``spawn`` or ``forkserver`` child, and say why."""
        name = type(self).__name__
        raise TypeError(
            f"cannot send a {name} to another process (pickle it): it belongs to the process that "
            f"opened it; open it there instead, by name: {name}(name, ...) in the child's target "
            "or in a Pool's initializer"
        )


def register(obj: _Resettable) -> None:
    """Have ``obj._reset_after_fork()`` called in every child this process forks from now on."""
    _registered[next(_order)] = obj


def _reset_all_after_fork() -> None:
    # The child has one thread; nothing may wait on a lock a parent thread held at fork time.
    objects = [obj for key in sorted(_registered.keys()) if (obj := _registered.get(key)) is not None]
    for step in ("_reset_after_fork", "_resume_after_fork"):
        for obj in objects:
            method = getattr(obj, step, None)
            if method is None:
                continue
            try:
                method()
            except Exception:
                _LOGGER.exception("ipchannel: %s of %r failed", step, obj)


os.register_at_fork(after_in_child=_reset_all_after_fork)
