"""The cache's operations on a SharedDict: entries with host-stamped expiry, and culling as LocMemCache.

An entry is ``key -> (expires, pickled)``: ``expires`` an absolute time on the host's clock (None:
never), ``pickled`` the value as Django's backends pickle it. A writer sends a relative timeout; each
operation's prepare step (``ipchannel._shareddict.ops``), run by the host only, stamps its clock
(``now``) and turns the timeout into ``expires`` before it applies and publishes the op, so every
replica runs the same op on the same state: which entries are expired at a write, and which ones a
cull removes, come out the same everywhere. Culling removes the least recently *written* entries
(dict order: a write moves its key to the end); reads are local and never reach the host, so they
cannot reorder anything.

No Django here: the operations are registered in every process that imports this module.
"""

from __future__ import annotations

import builtins
import itertools
import pickle
import time
from typing import TYPE_CHECKING, Any

from ipchannel._shareddict import ops

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ADD", "DELETE", "DELETE_MANY", "INCR", "SET", "SET_MANY", "TOUCH", "is_live", "now"]

Entry = tuple[float | None, bytes]
Data = dict[Any, Entry]
PROTOCOL = pickle.HIGHEST_PROTOCOL  # as LocMemCache's pickle_protocol

#: The clock of expiry, on the host (stamping) and on every reader (comparing). Tests replace it.
_clock: Callable[[], float] = time.time


def now() -> float:
    """Return the time on the clock expiry is measured with (``time.time``: the same in every process)."""
    return _clock()


def is_live(entry: Entry | None, at: float) -> bool:
    """Tell whether ``entry`` exists and has not expired at time ``at``."""
    return entry is not None and (entry[0] is None or entry[0] > at)


def _put(data: Data, at: float, key: Any, entry: Entry, cull: tuple[int, int]) -> None:
    """Store ``entry`` as the newest one, culling first if the cache is full; an expired one is dropped.

    ``cull`` is the writer's (MAX_ENTRIES, CULL_FREQUENCY), carried in its op.
    """
    data.pop(key, None)  # re-inserted at the end: the most recently written
    if not is_live(entry, at):
        return  # a timeout <= 0: expired at once, so never stored
    limit, frequency = cull
    if len(data) >= limit:
        _cull(data, at, limit, frequency)
    data[key] = entry


def _cull(data: Data, at: float, limit: int, frequency: int) -> None:
    """Make room: expired entries first; if still full, as LocMemCache (0: clear; else drop 1/frequency)."""
    for key in [key for key, entry in data.items() if not is_live(entry, at)]:
        del data[key]
    if len(data) < limit:
        return
    if frequency == 0:
        data.clear()
        return
    # at least one, unlike LocMemCache, whose cull drops nothing below CULL_FREQUENCY entries
    for key in list(itertools.islice(data, max(1, len(data) // frequency))):
        del data[key]


def _set(data: Data, at: float, key: Any, value: bytes, expires: float | None, *cull: int) -> None:
    _put(data, at, key, (expires, value), (cull[0], cull[1]))


def _add(data: Data, at: float, key: Any, value: bytes, expires: float | None, *cull: int) -> bool:
    if is_live(data.get(key), at):
        return False
    _put(data, at, key, (expires, value), (cull[0], cull[1]))
    return True


def _set_many(
    data: Data, at: float, items: list[tuple[Any, bytes]], expires: float | None, *cull: int
) -> list[Any]:
    for key, value in items:
        _put(data, at, key, (expires, value), (cull[0], cull[1]))
    return []


def _touch(data: Data, at: float, key: Any, expires: float | None) -> bool:
    entry = data.get(key)
    if not is_live(entry, at):
        data.pop(key, None)
        return False
    assert entry is not None
    if expires is not None and expires <= at:
        del data[key]  # touched with a timeout <= 0: expired at once
    else:
        data[key] = (expires, entry[1])  # in place: a touch is not a write of the value (as LocMemCache)
    return True


def _incr(data: Data, at: float, key: Any, delta: Any) -> list[Any]:
    """Add ``delta`` to the value; ``["missing"]`` or ``["failed", type, text]`` rather than raise."""
    entry = data.get(key)
    if entry is None or not is_live(entry, at):
        data.pop(key, None)
        return ["missing"]
    try:
        value = pickle.loads(entry[1]) + delta  # noqa: S301 - the cache's own values, as LocMemCache
        pickled = pickle.dumps(value, PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - raised again in the caller; a replica must never raise here
        return ["failed", type(exc).__name__, str(exc)]
    del data[key]
    data[key] = (entry[0], pickled)  # the newest, with its expiry unchanged (as LocMemCache and memcached)
    return ["ok", value]


def _delete(data: Data, at: float, key: Any) -> bool:
    return is_live(data.pop(key, None), at)


def _delete_many(data: Data, at: float, keys: list[Any]) -> None:
    for key in keys:
        data.pop(key, None)
    del at


def _stamp(timeout_at: int | None) -> Callable[[list[Any]], list[Any]]:
    """Make a prepare step: the host's time at ``op[1]``, and ``op[timeout_at]`` made an expiry."""

    def prepare(op: list[Any]) -> list[Any]:
        at = now()
        op = [op[0], at, *op[2:]]
        if timeout_at is not None and op[timeout_at] is not None:
            op[timeout_at] = at + op[timeout_at]
        return op

    return prepare


def failure(result: list[Any]) -> Exception:
    """Rebuild the exception of an ``incr`` that failed in the host (of its builtin type, if it was one)."""
    _, name, text = result
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(text)
    return TypeError(f"{name}: {text}")


SET = ops.register("cache.set", _set, _stamp(4))
ADD = ops.register("cache.add", _add, _stamp(4))
SET_MANY = ops.register("cache.set_many", _set_many, _stamp(3))
TOUCH = ops.register("cache.touch", _touch, _stamp(3))
INCR = ops.register("cache.incr", _incr, _stamp(None))
DELETE = ops.register("cache.delete", _delete, _stamp(None))
DELETE_MANY = ops.register("cache.delete_many", _delete_many, _stamp(None))
