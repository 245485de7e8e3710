"""The metric values of one process: prometheus_client's value class, counting locally until they are sent.

``prometheus.enable`` makes prometheus_client build every value of a metric (a counter, one
bucket of a histogram, a gauge) as a ``SharedValue`` (the ``ValueClass`` hook multiprocess mode
uses). An ``inc()`` or ``set()`` changes the local value under the value's own lock, as
prometheus_client's ``MutexValue`` does; the first change after a send also puts the value on
``Pending``'s list, so sending costs nothing for values that did not change. The sender
(``ipchannel-metrics:NAME``) takes what each listed value added (counters) or is (gauges).

A value that is dropped (``remove()`` or ``clear()`` of a labelled metric) takes its series out
of the shared view at the next send: a gauge's value of this worker, a counter's total.

Per-process state: a forked child starts with every value at 0 and nothing to send (what the
parent counted is the parent's to send), as multiprocess mode starts a child from an empty file.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ipchannel.contrib._metricsops import series_key

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Change", "Pending", "value_class"]

#: What one value has to send: (key, counted since the last send or None, gauge value or None, time).
Change = tuple[str, float | None, float | None, float]


class Pending:
    """The values that changed since the last send, and the metrics described to nobody yet."""

    def __init__(self, on_first_change: Callable[[], None]) -> None:
        self._on_first_change = on_first_change
        self.values: weakref.WeakSet[SharedValueBase] = weakref.WeakSet()
        self.after_fork()

    def after_fork(self) -> None:
        """Nothing changed, nothing described (also in a forked child, whose values are reset)."""
        self.lock = threading.Lock()
        self._changed: list[SharedValueBase] = []
        self._metas: dict[str, list[str]] = {}  # metric -> [type, help, gauge mode]
        self._unsent: list[str] = []
        self._removed: collections.deque[tuple[str, bool]] = collections.deque()  # (key, gauge)
        for value in list(self.values):
            value.reset()
            self._changed.append(value)  # in the child too, every series exists from the start
            self._describe(value.meta)

    def created(self, value: SharedValueBase) -> None:
        """Take a new value: it exists (at 0) from the next send on, as in one process.

        Listed, but the sender is not started for it: a gunicorn ``--preload`` master creates
        metrics at import and must fork no thread; a change (or, in a forked child, its start) does.
        """
        with self.lock:
            self.values.add(value)
            self._describe(value.meta)
            self._changed.append(value)

    def _describe(self, meta: tuple[str, str, str, str]) -> None:
        metric, kind, text, mode = meta
        if metric not in self._metas:
            self._metas[metric] = [kind, text, mode]
            self._unsent.append(metric)

    def removed(self, key: str, gauge: bool) -> None:
        """Take a value that is gone (``remove()``, ``clear()``): its series leaves the shared view.

        Called by the value's finalizer, in whatever thread dropped it (even inside a lock): no lock.
        """
        self._removed.append((key, gauge))

    def changed(self, value: SharedValueBase) -> None:
        """Put ``value`` on the list (its first change since the last send; called with its lock)."""
        with self.lock:
            self._changed.append(value)
        self._on_first_change()

    def take(self) -> tuple[list[list[Any]], list[Change], list[list[Any]]]:
        """Return the metrics to describe, every listed value's change and the series removed."""
        with self.lock:
            changed, self._changed = self._changed, []
            unsent, self._unsent = self._unsent, []
        metas = [[metric, *self._metas[metric]] for metric in unsent]
        changes = [value.take() for value in dict.fromkeys(changed)]  # listed as created, then changed
        removed = []
        while self._removed:
            key, gauge = self._removed.popleft()
            removed.append([key, gauge])
        return metas, changes, removed


class SharedValueBase:
    """One value of one metric in this process (see the module): prometheus_client's value interface."""

    _multiprocess = False
    _pending: Pending  # set by ``value_class``

    def __init__(  # noqa: PLR0913, PLR0917 - prometheus_client's ValueClass signature
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Any,
        labelvalues: Any,
        help_text: str,
        multiprocess_mode: str = "",
        **_kwargs: Any,
    ) -> None:
        self._gauge = typ == "gauge"
        mode = (multiprocess_mode or "all") if self._gauge else ""
        self.meta = (metric_name, typ, help_text, mode)
        self.key = series_key(metric_name, name, dict(zip(labelnames, labelvalues, strict=True)))
        self._exemplar: Any = None
        self.reset()
        self._pending.created(self)
        # gone with its child (``remove()``, ``clear()``): not at exit, where everything goes
        weakref.finalize(self, self._pending.removed, self.key, self._gauge).atexit = False

    def reset(self) -> None:
        """At 0, nothing to send (a new value, or one a forked child inherited)."""
        self._lock = threading.Lock()
        self._value = 0.0
        self._counted = 0.0  # added since the last send (not gauges)
        self._at = 0.0  # when a gauge was last set (mostrecent)
        self._listed = False  # listed by a change (``created`` lists it too, starting nothing)

    def inc(self, amount: float) -> None:
        with self._lock:
            self._value += amount
            self._counted += amount
            if not self._listed:
                self._listed = True
                self._pending.changed(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._counted += value - self._value  # a counter's reset() takes its part out of the total
            self._value = value
            self._at = time.time() if timestamp is None else timestamp
            if not self._listed:
                self._listed = True
                self._pending.changed(self)

    def set_exemplar(self, exemplar: Any) -> None:
        with self._lock:
            self._exemplar = exemplar

    def get(self) -> float:
        """Return this process's own value (the shared total is what a scrape shows)."""
        with self._lock:
            return self._value

    def get_exemplar(self) -> Any:
        with self._lock:
            return self._exemplar

    def take(self) -> Change:
        """Return what to send, and start counting anew (the sender's side of the list)."""
        with self._lock:
            self._listed = False
            counted, self._counted = self._counted, 0.0
            if self._gauge:
                return (self.key, None, self._value, self._at)
            return (self.key, counted, None, self._at)


def value_class(pending: Pending) -> type[SharedValueBase]:
    """Return the value class prometheus_client builds values with, listing changes on ``pending``."""
    return type("SharedValue", (SharedValueBase,), {"_pending": pending})
