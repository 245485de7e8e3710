"""The metrics' shared state: what every worker sends, how the host folds it in, what a scrape reads.

Kept in one SharedDict (``ipchannel.contrib.prometheus``), as flat keys whose values are
never changed in place (a new value replaces the old one, so no two copies share one):

- ``c:SERIES`` -> float: the total of a counter, histogram bucket or summary sample over every
  worker that ever ran (workers send what they added since their last send).
- ``g:SERIES`` -> {worker: [value, time, pid]}: a gauge's value in each worker; ``~`` holds
  what the workers that died left behind, folded by the gauge's mode (sum, min, max, newest).
- ``m:METRIC`` -> [type, help, gauge mode]: what a metric is, as the first worker said.
- ``i:METRIC`` -> [time, type, help, samples]: an Info's or Enum's samples, as the worker that
  changed them last set them.
- ``w:WORKER`` -> [pid, scrape, number]: a worker that sent something, the last scrape it
  answered and the number of its last push applied (a push sent again is applied once).
- ``scrape`` -> int: the number of the last scrape asked for.

``SERIES`` is ``json.dumps([metric, sample name, sorted labels])``. No prometheus_client here:
the operations are registered in every process that imports this module.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from ipchannel._shareddict import ops

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FORGET", "PUSH", "SCRAPE", "gauge_samples", "series_key", "split_series"]

#: The worker that stands for every worker that died, in a gauge's values (folded by mode).
RETIRED = "~"
#: Gauge modes whose dead workers' values go on counting (as prometheus_client's multiprocess mode).
_FOLD: dict[str, Callable[[list[Any], list[Any]], list[Any]]] = {
    "sum": lambda old, new: [old[0] + new[0], max(old[1], new[1]), 0],
    "max": lambda old, new: old if old[0] >= new[0] else new,
    "min": lambda old, new: old if old[0] <= new[0] else new,
    "mostrecent": lambda old, new: old if old[1] >= new[1] else new,
}


def series_key(metric: str, name: str, labels: dict[str, str]) -> str:
    """Return the key of one series: the same in every worker for the same metric, sample and labels."""
    return json.dumps([metric, name, sorted(labels.items())], separators=(",", ":"))


def split_series(key: str) -> tuple[str, str, dict[str, str]]:
    """Return (metric, sample name, labels) of a series key."""
    metric, name, labels = json.loads(key)
    return metric, name, dict(labels)


def _push(  # noqa: PLR0913, PLR0917 - one op: who, which scrape, and each kind of change
    data: dict[str, Any],
    worker: str,
    pid: int,
    number: int,
    scrape: int,
    metas: list[list[Any]],
    counts: list[list[Any]],
    gauges: list[list[Any]],
    infos: list[list[Any]],
    removed: list[list[Any]],
) -> None:
    """Fold one worker's changes in: counts added, gauges and infos replaced; its scrape answered.

    ``number`` counts the worker's pushes: one it sends again because the answer never came
    (the host was frozen past the write's timeout, say) is not applied twice.
    ``removed``: series it dropped (``remove()``): a counter's total goes, a gauge loses its value.
    """
    known = data.get("w:" + worker)
    if known is not None and number <= known[2]:
        return  # applied already: its answer was lost
    data["w:" + worker] = [pid, scrape, number]
    _remove(data, worker, removed)
    for metric, kind, text, mode in metas:
        data.setdefault("m:" + metric, [kind, text, mode])
    for key, amount in counts:
        data["c:" + key] = data.get("c:" + key, 0.0) + amount
    for key, value, at in gauges:
        values = dict(data.get("g:" + key, {}))
        values[worker] = [value, at, pid]
        data["g:" + key] = values
    for metric, at, kind, text, samples in infos:
        old = data.get("i:" + metric)
        if old is None or old[0] <= at:
            data["i:" + metric] = [at, kind, text, samples]


def _remove(data: dict[str, Any], worker: str, removed: list[list[Any]]) -> None:
    """Take out the series ``worker`` dropped: a counter's total, or its value of a gauge."""
    for key, gauge in removed:
        if not gauge:
            data.pop("c:" + key, None)
        elif worker in data.get("g:" + key, {}):
            values = {other: value for other, value in data["g:" + key].items() if other != worker}
            if values:
                data["g:" + key] = values
            else:
                del data["g:" + key]


def _scrape(data: dict[str, Any]) -> int:
    """Ask every worker for what it has not sent yet: the new scrape number is the result."""
    data["scrape"] = number = data.get("scrape", 0) + 1
    return int(number)


def _forget(data: dict[str, Any], workers: list[str]) -> None:
    """Drop workers that died: live gauges lose them, other modes fold them into ``~``; ``all`` keeps them."""
    gone = {worker for worker in workers if data.pop("w:" + worker, None) is not None}
    if not gone:
        return
    for key in [key for key in data if key.startswith("g:")]:
        values = data[key]
        if gone.isdisjoint(values):
            continue
        mode = data.get("m:" + split_series(key[2:])[0], ["gauge", "", "all"])[2]
        if mode == "all":
            continue  # one series per process, alive or dead, as prometheus_client's multiprocess mode
        values = dict(values)
        fold = _FOLD.get(mode)
        for worker in gone & values.keys():
            left = values.pop(worker)
            if fold is not None:
                retired = values.get(RETIRED)
                values[RETIRED] = left if retired is None else fold(retired, left)
        if values:
            data[key] = values
        else:
            del data[key]


def gauge_samples(mode: str, values: dict[str, list[Any]]) -> list[tuple[float, str | None]]:
    """Return a gauge series' samples as (value, pid label or None), by its mode over the workers' values."""
    if mode in {"all", "liveall"}:
        return [(value, str(pid)) for worker, (value, _at, pid) in values.items() if worker != RETIRED]
    entries = list(values.values())
    if not entries:
        return []
    base = mode.removeprefix("live")
    if base == "sum":
        return [(math.fsum(entry[0] for entry in entries), None)]
    if base == "max":
        return [(max(entry[0] for entry in entries), None)]
    if base == "min":
        return [(min(entry[0] for entry in entries), None)]
    return [(max(entries, key=lambda entry: entry[1])[0], None)]  # mostrecent


#: What a push may say a metric is (prometheus_client's types), and a gauge's mode ("" for the rest).
_KINDS = frozenset(
    {"counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"}
)
_MODES = frozenset(
    {"", *(f"{live}{mode}" for live in ("", "live") for mode in ("all", "sum", "max", "min", "mostrecent"))}
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _is_labels(labels: Any) -> bool:
    return isinstance(labels, dict) and all(isinstance(x, str) for item in labels.items() for x in item)


def _is_series(key: str, *, counted: bool = False) -> bool:
    """Tell whether ``key`` is a series key (``series_key``); a counted bucket needs a number as bound."""
    try:
        metric, name, labels = split_series(key)
        if counted and name == metric + "_bucket":
            float(labels["le"])  # as the scrape makes buckets cumulative
    except (TypeError, ValueError, KeyError):
        return False
    return isinstance(metric, str) and bool(metric) and isinstance(name, str) and _is_labels(labels)


def _checked(op: list[Any]) -> list[Any]:
    """In the host, before a push is applied: refuse one of another shape (another ipchannel version).

    An operation must not raise halfway once applied (the replicas would differ), and what it
    keeps must not break a scrape (the journal would keep it): a push that is not as this
    version makes it is refused whole, and its sender gets the error.
    """
    shapes = {"metas": 4, "counts": 2, "gauges": 3, "infos": 5, "removed": 2}
    if len(op) != 10 or not isinstance(op[1], str) or not all(isinstance(arg, int) for arg in op[2:5]):
        raise TypeError("metrics push: not in the format of this ipchannel version")
    for (part, size), entries in zip(shapes.items(), op[5:], strict=True):
        if not isinstance(entries, list) or not all(
            isinstance(entry, list) and len(entry) == size and isinstance(entry[0], str) and entry[0]
            for entry in entries
        ):
            raise TypeError(f"metrics push: its {part} are not in the format of this ipchannel version")
    metas, counts, gauges, infos, removed = op[5:]
    right = (
        all(
            kind in _KINDS and isinstance(text, str) and mode in _MODES for _metric, kind, text, mode in metas
        )
        and all(_is_series(key, counted=True) and _is_number(amount) for key, amount in counts)
        and all(_is_series(key) and _is_number(value) and _is_number(at) for key, value, at in gauges)
        and all(
            _is_number(at)
            and kind in {"info", "stateset"}
            and isinstance(text, str)
            and isinstance(samples, list)
            and all(
                isinstance(sample, list)
                and len(sample) == 3
                and isinstance(sample[0], str)
                and _is_labels(sample[1])
                and _is_number(sample[2])
                for sample in samples
            )
            for _metric, at, kind, text, samples in infos
        )
        and all(_is_series(key) and isinstance(gauge, bool) for key, gauge in removed)
    )
    if not right:
        raise TypeError("metrics push: not in the format of this ipchannel version")
    return op


PUSH = ops.register("metrics.push", _push, _checked)
SCRAPE = ops.register("metrics.scrape", _scrape)


def _checked_forget(op: list[Any]) -> list[Any]:
    if len(op) != 2 or not isinstance(op[1], list) or not all(isinstance(worker, str) for worker in op[1]):
        raise TypeError("metrics forget: not in the format of this ipchannel version")
    return op


FORGET = ops.register("metrics.forget", _forget, _checked_forget)
