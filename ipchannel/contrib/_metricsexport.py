"""What a scrape shows: prometheus_client metric families built from the shared state.

The same aggregation as prometheus_client's ``MultiProcessCollector`` (whose output users
know): counters, summaries and histogram sums are the totals over every worker that ever ran;
histogram buckets are made cumulative, with ``_count`` their sum; gauges by their mode
(``_metricsops.gauge_samples``: ``all`` and ``liveall`` with a ``pid`` label); Info and Enum as
the worker that changed them last set them. ``_created`` samples are left out, as there.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from ipchannel.contrib._metricsops import gauge_samples, split_series

__all__ = ["families"]

_UNKNOWN = ("unknown", "", "all")
Buckets = dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]]


class _Families:
    """The families being built, by metric name, in first-seen order."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.metas: dict[str, list[str]] = {key[2:]: value for key, value in data.items() if key[:2] == "m:"}
        self.built: dict[str, Metric] = {}

    def get(self, metric: str, kind: str | None = None, text: str | None = None) -> Metric:
        found = self.built.get(metric)
        if found is None:
            meta = self.metas.get(metric, _UNKNOWN)
            found = self.built[metric] = Metric(metric, meta[1] if text is None else text, kind or meta[0])
        return found

    def mode(self, metric: str) -> str:
        return self.metas.get(metric, _UNKNOWN)[2]


def families(data: dict[str, Any]) -> dict[str, Metric]:
    """Return every metric of the shared state ``data`` (a replica's copy) by name, in first-seen order."""
    built = _Families(data)
    for metric in built.metas:  # every shared metric, even with no series left (all removed)
        built.get(metric)
    buckets: Buckets = {}
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for key, value in data.items():
        prefix, rest = key[:2], key[2:]
        if prefix == "c:":
            _count(built, buckets, sums, rest, float(value))
        elif prefix == "g:":
            metric, name, labels = split_series(rest)
            for sample, pid in gauge_samples(built.mode(metric), value):
                built.get(metric).add_sample(name, labels if pid is None else {**labels, "pid": pid}, sample)
        elif prefix == "i:":
            _at, kind, text, samples = value
            target = built.get(rest, kind, text)
            for name, labels, sample in samples:
                target.add_sample(name, labels, float(sample))
    _histograms(built, buckets, sums)
    return built.built


def _histograms(
    built: _Families, buckets: Buckets, sums: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> None:
    """Add each histogram's series together (OpenMetrics): its sum, its buckets made cumulative, its count."""
    for (metric, label_items), bounds in buckets.items():
        labels, target, total = dict(label_items), built.get(metric), 0.0
        if (metric, label_items) in sums:
            target.add_sample(metric + "_sum", labels, sums[metric, label_items])
        for bound in sorted(bounds):
            total += bounds[bound]
            le = floatToGoString(bound)  # type: ignore[no-untyped-call] # as prometheus_client writes it
            target.add_sample(metric + "_bucket", {**labels, "le": le}, total)
        target.add_sample(metric + "_count", labels, total)


def _count(
    built: _Families,
    buckets: Buckets,
    sums: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    series: str,
    value: float,
) -> None:
    """Add a counted series: a histogram's bucket and sum wait to go out together; the rest as it is."""
    metric, name, labels = split_series(series)
    if built.get(metric).type == "histogram" and name == metric + "_bucket":
        bound = float(labels.pop("le"))
        bounds = buckets.setdefault((metric, tuple(sorted(labels.items()))), {})
        bounds[bound] = bounds.get(bound, 0.0) + value
    elif built.get(metric).type == "histogram" and name == metric + "_sum":
        group = (metric, tuple(sorted(labels.items())))
        buckets.setdefault(group, {})
        sums[group] = value
    else:
        built.get(metric).add_sample(name, labels, value)
