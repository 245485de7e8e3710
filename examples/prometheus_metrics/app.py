"""A WSGI app whose gunicorn workers' Prometheus metrics add up, with no files and no hook.

Ordinary prometheus_client code: a Counter and a Histogram of the requests, and a gauge in
each ``multiprocess_mode``. ``/metrics`` (``make_wsgi_app()``) of any worker shows the totals
over every worker, those that exited (``max_requests``) or were killed included, because
``prometheus.enable`` runs first. With ``PROMETHEUS_MULTIPROC_DIR`` set, the same code runs
prometheus_client's own multiprocess mode instead, as its documentation says (a fresh
directory at every start, ``mark_process_dead`` in ``gunicorn.conf.py``): to compare.

    cd examples/prometheus_metrics
    gunicorn -c gunicorn.conf.py app:app
    curl --unix-socket /tmp/prometheus-metrics.sock http://localhost/work
    curl --unix-socket /tmp/prometheus-metrics.sock http://localhost/metrics

``/work?seq=N`` is a request the metrics count (``seq``: a number the ``mostrecent`` gauges
show); ``/pid``: which worker answered. Every answer says it in ``X-Worker-Pid``.
``IPCHANNEL_DIR`` (runtime directory), ``METRICS_JOURNAL_DIR`` (where the totals' journal
goes) and ``METRICS_FLUSH_INTERVAL`` (seconds between two sends of a worker) are read here.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if not MULTIPROCESS:  # before the first metric is created: every value is made to be shared
    from ipchannel.contrib import prometheus

    prometheus.enable(
        "prometheus-metrics",
        journal_dir=os.environ.get("METRICS_JOURNAL_DIR") or None,
        flush_interval=float(os.environ.get("METRICS_FLUSH_INTERVAL", "1")),
    )

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

REQUESTS = Counter("app_requests", "Requests served (/work)")
LATENCY = Histogram("app_request_seconds", "Time to serve /work")
#: requests this worker served, in every mode that folds numbers (all: one series per worker pid)
SERVED = {
    mode: Gauge(
        f"app_served_{mode}", f"Requests served by a worker, multiprocess_mode={mode}", multiprocess_mode=mode
    )
    for mode in ("all", "liveall", "sum", "livesum", "max", "livemax", "min", "livemin")
}
#: the ``seq`` of the last request: the newest set wins
LAST_SEQ = {
    mode: Gauge(
        f"app_last_seq_{mode}", f"seq of the last request, multiprocess_mode={mode}", multiprocess_mode=mode
    )
    for mode in ("mostrecent", "livemostrecent")
}
_served = 0  # by this worker (sync workers: one request at a time)

if MULTIPROCESS:  # prometheus_client's documented setup: a registry that reads every worker's files
    _registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(_registry)  # type: ignore[no-untyped-call]
    metrics_app = make_wsgi_app(_registry)
else:
    metrics_app = make_wsgi_app()  # the default registry: prometheus.enable shares it


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """``/work``: a counted request; ``/metrics``: the totals; ``/pid``: the worker's pid."""

    def with_pid(status: str, headers: list[tuple[str, str]], *args: Any) -> object:
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], *args)

    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        return metrics_app(environ, with_pid)  # type: ignore[no-any-return]
    if path == "/work":
        return _json(with_pid, _work(environ))
    if path == "/pid":
        return _json(with_pid, {"pid": os.getpid()})
    return _json(with_pid, {"paths": ["/work", "/metrics", "/pid"]}, "404 Not Found")


def _work(environ: dict[str, Any]) -> dict[str, Any]:
    global _served  # noqa: PLW0603 - this worker's own number, as a gauge shows it
    started = time.perf_counter()
    seq = int(parse_qs(environ.get("QUERY_STRING", "")).get("seq", ["0"])[0])
    REQUESTS.inc()
    _served += 1
    for gauge in SERVED.values():
        gauge.set(_served)
    for gauge in LAST_SEQ.values():
        gauge.set(seq)
    LATENCY.observe(time.perf_counter() - started)
    return {"pid": os.getpid(), "served": _served, "seq": seq}


def _json(start_response: Callable[..., object], body: dict[str, Any], status: str = "200 OK") -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
