"""The rate limits' operations on a SharedDict: counters and moving windows with host-stamped expiry.

Two kinds of entry, told apart by the key's prefix (``limits`` keeps them apart as well):

- ``"c/" + key -> [expires, count]``: a fixed window's counter (and each window of a sliding window
  counter, under the key ``limits`` derives from the window's number);
- ``"m/" + key -> [expires, [t, ...], expiry]``: a moving window's acquisitions, newest first, at
  most ``limit`` of them (as limits' redis storage keeps its list). An acquisition at ``t`` counts
  while ``t >= now - expiry``: at ``t + expiry`` itself still, as limits' memory and redis storages
  count it; ``expires`` (``t + expiry``) only orders the sweep and ``reset``'s count.

``expires`` is an absolute time on the host's clock. Each write's prepare step (host only, as in
``_cacheops``) puts the host's time ``at`` into the op, so every replica applies the same op to the
same state with the same outcome: a check and its increment happen in one op, atomically across
processes. Every write also sweeps a few entries (``SWEEP``) in dict order, dropping expired ones and
moving live ones to the end, so expired entries cannot pile up: each entry is looked at once every
``len / SWEEP`` writes, and a write costs the same with 10 entries or 100,000 (it never lists them).
A write sweeps after its own change, so one that raises (arguments ``check`` would refuse, sent with
``perform``) changes nothing, as ``ops`` asks.

Reads (``count``, ``expiry``, ``moving_window``, ``sliding_window``) compare with the reader's clock:
``time.time``, the same clock in every process of one machine.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ipchannel._shareddict import ops

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ACQUIRE_MOVING",
    "ACQUIRE_SLIDING",
    "CLEAR",
    "CLEAR_SLIDING",
    "INCR",
    "RESET",
    "check",
    "count",
    "expiry",
    "moving_window",
    "now",
    "sliding_window",
]

Data = dict[str, list[Any]]
View = Mapping[str, list[Any]]  # what reads take: a SharedDict, or its plain copy
#: entries each write looks at for expiry (a bounded cost, on the host and in every replica)
SWEEP = 4

#: The clock of expiry, on the host (stamping) and on every reader (comparing). Tests replace it.
_clock: Callable[[], float] = time.time


def now() -> float:
    """Return the time expiry is measured in (``time.time``: the same in every process of a machine)."""
    return _clock()


def window_keys(key: str, expiry: float, at: float) -> tuple[str, str]:
    """Return the previous and current windows' counter keys of a sliding window (as limits' memory)."""
    return f"{key}/{int((at - expiry) / expiry)}", f"{key}/{int(at / expiry)}"


def check(key: object, expiry: object = 1, amount: object = 0, limit: object = 0) -> None:
    """Refuse, before anything is sent, what the host's op could not apply or would miscount.

    :raises TypeError: ``key`` not a str, ``expiry`` not a number, ``amount`` or ``limit`` not an int.
    :raises ValueError: ``expiry`` not finite and > 0, ``amount`` or ``limit`` negative (a negative
        amount would give slots back).
    """
    if not isinstance(key, str):
        raise TypeError(f"a rate limit's key must be a str, not {type(key).__name__}")
    if isinstance(expiry, bool) or not isinstance(expiry, (int, float)):
        raise TypeError(f"expiry must be a number of seconds (int or float), not {type(expiry).__name__}")
    if not (math.isfinite(expiry) and expiry > 0):
        raise ValueError(f"expiry must be a finite number of seconds > 0, not {expiry!r}")
    for label, value in (("amount", amount), ("limit", limit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{label} must be >= 0, not {value!r}")


# -- reads: the local replica, against the reader's clock ----------------------------------------


def _live(data: View, name: str, at: float) -> list[Any] | None:
    entry = data.get(name)
    return entry if entry is not None and entry[0] > at else None


def count(data: View, key: str, at: float) -> int:
    """Return the counter of ``key`` at time ``at`` (0: none, or expired)."""
    entry = _live(data, "c/" + key, at)
    return 0 if entry is None else int(entry[1])


def expiry(data: View, key: str, at: float) -> float:
    """Return when the counter of ``key`` expires (``at`` if it does not exist), as limits' memory storage."""
    entry = _live(data, "c/" + key, at)
    return at if entry is None else float(entry[0])


def moving_window(data: View, key: str, expiry: float, at: float) -> tuple[float, int]:
    """Return (the oldest acquisition within ``expiry`` seconds before ``at``, how many there are)."""
    entry = data.get("m/" + key)
    times: list[float] = [] if entry is None else entry[1]
    inside = 0
    while inside < len(times) and times[inside] >= at - expiry:
        inside += 1
    return (times[inside - 1], inside) if inside else (at, 0)


def sliding_window(data: View, key: str, expiry: float, at: float) -> tuple[int, float, int, float]:
    """Return (previous count, previous ttl, current count, current ttl), as limits' memory storage."""
    previous_key, current_key = window_keys(key, expiry, at)
    previous = count(data, previous_key, at)
    previous_ttl = 0.0 if previous == 0 else (1 - (((at - expiry) / expiry) % 1)) * expiry
    current_ttl = (1 - ((at / expiry) % 1)) * expiry + expiry
    return previous, previous_ttl, count(data, current_key, at), current_ttl


# -- writes: applied by the host, then by every replica ------------------------------------------


def _expired(name: str, entry: list[Any], at: float) -> bool:
    """Tell whether an entry is out: a counter at its expiry, a window once its newest time left it."""
    if name.startswith("m/"):  # the same test as _acquire_moving's, with the entry's own expiry
        return not (entry[1] and entry[1][0] >= at - entry[2])
    return bool(entry[0] <= at)


def _sweep(data: Data, at: float) -> None:
    """Look at the first SWEEP entries: drop the expired ones, move the live ones to the end."""
    for name in list(itertools.islice(data, SWEEP)):  # not list(data): O(1), not O(len) a write
        entry = data.pop(name)
        if not _expired(name, entry, at):
            data[name] = entry


def _incr(data: Data, at: float, key: str, expiry: float, amount: int) -> int:
    entry = _live(data, "c/" + key, at)
    value = amount if entry is None else entry[1] + amount
    data["c/" + key] = [at + expiry if entry is None else entry[0], value]
    _sweep(data, at)
    return int(value)


def _acquire_moving(data: Data, at: float, key: str, limit: int, expiry: float, amount: int) -> bool:  # noqa: PLR0913, PLR0917 - the op's fields
    entry = data.get("m/" + key)
    times: list[float] = [] if entry is None else entry[1]
    if amount > limit or (len(times) > limit - amount and times[limit - amount] >= at - expiry):
        _sweep(data, at)
        return False
    data["m/" + key] = [at + expiry, ([at] * amount + times)[:limit], expiry]
    _sweep(data, at)
    return True


def _acquire_sliding(data: Data, at: float, key: str, limit: int, expiry: float, amount: int) -> bool:  # noqa: PLR0913, PLR0917 - the op's fields
    previous, previous_ttl, current, _ = sliding_window(data, key, expiry, at)
    if amount > limit or math.floor(previous * previous_ttl / expiry + current) + amount > limit:
        _sweep(data, at)
        return False
    _incr(data, at, window_keys(key, expiry, at)[1], 2 * expiry, amount)  # sweeps
    return True


def _clear(data: Data, at: float, key: str) -> None:
    data.pop("c/" + key, None)
    data.pop("m/" + key, None)
    _sweep(data, at)


def _clear_sliding(data: Data, at: float, key: str, expiry: float) -> None:
    for name in window_keys(key, expiry, at):
        _clear(data, at, name)


def _reset(data: Data, at: float) -> int:
    """Remove every entry; return how many were live."""
    live = sum(1 for name, entry in data.items() if not _expired(name, entry, at))
    data.clear()
    return live


def _stamp(op: list[Any]) -> list[Any]:
    """Put the host's time at ``op[1]``: the prepare step of every write."""
    return [op[0], now(), *op[2:]]


INCR = ops.register("limits.incr", _incr, _stamp)
ACQUIRE_MOVING = ops.register("limits.acquire_moving", _acquire_moving, _stamp)
ACQUIRE_SLIDING = ops.register("limits.acquire_sliding", _acquire_sliding, _stamp)
CLEAR = ops.register("limits.clear", _clear, _stamp)
CLEAR_SLIDING = ops.register("limits.clear_sliding", _clear_sliding, _stamp)
RESET = ops.register("limits.reset", _reset, _stamp)
