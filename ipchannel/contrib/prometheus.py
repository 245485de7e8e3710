"""Prometheus metrics summed over every worker: ordinary prometheus_client code, no files, no hooks.

::

    from ipchannel.contrib import prometheus
    prometheus.enable("myapp-metrics")   # in the module every worker imports, before any metric

    REQUESTS = prometheus_client.Counter("requests", "Requests served")   # as usual

Any worker's ``/metrics`` (``generate_latest()``, ``make_wsgi_app``, the Django and Flask
exporters' views) then shows the totals over every worker, those that exited included.

- ``inc()``/``set()``/``observe()`` change a value in this process only (``_metricsvalue``);
  ``ipchannel-metrics:NAME`` sends what changed every ``flush_interval`` seconds, as one write
  to a SharedDict whose host folds it in (``_metricsops``). A SIGKILLed worker loses what it
  counted since its last send: at most ``flush_interval`` seconds of it. A worker that exits
  (``max_requests``, a restart) sends what is left first.
- A scrape first asks every live worker for what it has not sent (one write that every replica
  sees), waits up to ``scrape_timeout`` for their answers, then shows its own replica of the
  totals (``_metricsexport``), in multiprocess mode's format: a request counted before the
  scrape began is in it. A worker frozen (SIGSTOP, a debugger) delays a scrape by
  ``max_lag`` (as it delays any SharedDict write, until the host cuts it off) plus
  ``scrape_timeout`` at most; what it has not sent shows in a later scrape.
- A worker joins the scrapes with its first send, made as soon as its first change (or, in a
  child forked from a process with metrics, its start) has opened the dict: a scrape in those
  first tens of milliseconds does not wait for it yet.
- The totals are a SharedDict: they survive the hosting worker's death like any other
  failover, and, with ``appendonly`` (the default on one machine), every worker's exit.

Gauges take prometheus_client's ``multiprocess_mode=``: ``all`` (the default: one series per
process with a ``pid`` label, dead ones kept), ``sum``, ``max``, ``min``, ``mostrecent`` (dead
workers' last values go on counting) and their ``live`` forms, which drop a worker once it
died. ``Info`` and ``Enum`` show what the worker that changed them last set.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import TYPE_CHECKING, Any

from ipchannel.contrib._extras import missing

try:
    from prometheus_client import values as _values
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # pragma: no cover - tested in a process without prometheus_client
    raise missing("ipchannel.contrib.prometheus", "prometheus_client", "prometheus") from exc

from ipchannel._codecs import resolve_codec
from ipchannel._options import Options, validate_name
from ipchannel._shareddict.dict import SharedDict
from ipchannel._shareddict.durability import durable_journal
from ipchannel._timing import validate_timeout
from ipchannel.contrib._metricssharing import Sharing
from ipchannel.contrib._metricsvalue import value_class

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

__all__ = ["SharedCollector", "enable", "shutdown", "start"]

_LOGGER = logging.getLogger("ipchannel")
_CHANNEL_OPTIONS = frozenset(
    {
        "runtime_dir",
        "authkey",
        "coordinator",
        "listen",
        "advertise",
        "ttl",
        "ssl_context",
        "server_hostname",
        "ssl_verify",
    }
)
_DICT_OPTIONS = frozenset({"timeout", "max_message_size", "max_backlog", "max_lag"})
#: What prometheus_client's default registry holds before any metric: not to be shared.
_DEFAULT_FAMILIES = ("process_", "python_gc_", "python_info")

_sharing: Sharing | None = None
_enable_lock = threading.Lock()


def enable(  # noqa: PLR0913 - keyword-only options, as SharedDict has
    name: str,
    *,
    flush_interval: float = 1.0,
    scrape_timeout: float = 1.0,
    registry: CollectorRegistry = REGISTRY,
    appendonly: bool | None = None,
    appendfsync: str | None = None,
    journal_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> None:
    """Share every prometheus_client metric created from now on among the processes that call this.

    Call it in every worker (the module they all import), before the first metric is created.
    Nothing starts here: the dict opens and the sender starts at the first change, or the first
    scrape, in each process (so a gunicorn ``--preload`` master forks no thread).

    :param name: the SharedDict holding the totals (same rule as ``Channel``).
    :param flush_interval: seconds between two sends of what changed (the most a SIGKILL loses).
    :param scrape_timeout: seconds a scrape waits for the workers' answers.
    :param registry: whose scrape shows the totals (default: prometheus_client's ``REGISTRY``);
        for another registry, register a ``SharedCollector`` in it.
    :param appendonly: keep the totals in a journal, so they outlive every worker (default: True
        on one machine; a dict elected across machines cannot be durable this way).
    :param appendfsync: as for ``SharedDict``, and so is ``journal_dir``.
    :param options: SharedDict's other keyword options (``runtime_dir``, ``coordinator``, ...).
    :raises ValueError: another name was enabled, or ``PROMETHEUS_MULTIPROC_DIR`` is set.
    :raises RuntimeError: metrics were created before, and would count in their process only.
    """
    global _sharing  # noqa: PLW0603 - one per process: prometheus_client's value class is global
    name = validate_name(name)
    unknown = set(options) - _CHANNEL_OPTIONS - _DICT_OPTIONS
    if unknown:
        raise TypeError(f"enable() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    interval, waited = _seconds("flush_interval", flush_interval), _seconds("scrape_timeout", scrape_timeout)
    if interval <= 0:
        raise ValueError(f"flush_interval must be more than 0 seconds, not {flush_interval!r}")
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client CollectorRegistry, not {type(registry).__name__}"
        )
    channel = Options.build(**{key: value for key, value in options.items() if key in _CHANNEL_OPTIONS})
    validate_timeout(options.get("timeout", 5.0))
    durable = channel.coordinator is None if appendonly is None else appendonly
    durable_journal(name, channel, resolve_codec("json"), durable, appendfsync, journal_dir)  # checks them
    with _enable_lock:
        if _sharing is not None:
            if _sharing.name != name:
                raise ValueError(f"prometheus sharing is enabled as {_sharing.name!r} already, not {name!r}")
            return
        if any(
            os.environ.get(variable) for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
        ):
            raise ValueError(
                "PROMETHEUS_MULTIPROC_DIR is set, so prometheus_client counts in files of its own "
                "(multiprocess mode); unset it to share the metrics through ipchannel instead"
            )
        _refuse_existing(registry)
        dict_options = {key: value for key, value in options.items() if key in _DICT_OPTIONS}

        def open_dict() -> SharedDict:
            return SharedDict(
                name,
                appendonly=durable,
                appendfsync=appendfsync,
                journal_dir=journal_dir,
                _options=channel,
                **dict_options,
            )

        original = registry.collect
        _sharing = Sharing(name, open_dict, interval, waited, original)
        _values.ValueClass = value_class(_sharing.pending)
        setattr(registry, "collect", lambda: _sharing_collect(original))  # noqa: B010 - mypy: a method


def start() -> None:
    """Join now: open the shared dict in this thread, send once, and start the sender.

    Call it where a worker starts (gunicorn's ``post_worker_init``, a Starlette lifespan).
    Without it, the first change does the same in the background: a scrape in the next tens
    of milliseconds misses the worker, and a worker that exits in them must open the dict at
    exit, which Python 3.12 cannot (it starts no thread then): its counts would be lost there.

    :raises RuntimeError: ``enable()`` was not called.
    :raises ChannelError: the dict cannot be opened (``ChannelTimeout``: no host within ``timeout``).
        In gunicorn's ``post_worker_init``, catch it: an exception there stops every worker.
    """
    if _sharing is None:
        raise RuntimeError("call prometheus.enable() before prometheus.start()")
    _sharing.start()


def shutdown() -> None:
    """Send what this process counted since its last send, then stop sharing (idempotent).

    Exiting does it (atexit). Call it where a worker exits without running atexit handlers:
    uvicorn's workers end by re-raising the SIGTERM they caught, so call it in the lifespan's
    shutdown. Changes made afterwards stay in this process.
    """
    if _sharing is not None:
        _sharing.close()


def _seconds(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{option} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def _refuse_existing(registry: CollectorRegistry) -> None:
    """Raise RuntimeError if metrics exist already: their values were made to count in one process."""
    existing = [family.name for family in registry.collect() if not family.name.startswith(_DEFAULT_FAMILIES)]
    if existing:
        raise RuntimeError(
            f"prometheus.enable() must run before the first metric is created; these exist already "
            f"and would count in their own process only: {', '.join(existing)} (call enable() at "
            "the top of the module every worker imports first)"
        )


def _sharing_collect(original: Callable[[], Iterable[Metric]]) -> Iterator[Metric]:
    """Collect as the registry does, with the shared families in place of this process's own."""
    assert _sharing is not None
    shared = _sharing.gather()
    shown: set[str] = set()
    for family in original():
        if family.name not in shared:
            yield family  # a collector of this process (process_*, a custom one), or nothing shared yet
        elif family.name not in shown:
            shown.add(family.name)
            yield shared[family.name]
    yield from (family for name, family in shared.items() if name not in shown)


class SharedCollector:
    """The shared metrics, for a registry other than ``enable``'s (as ``MultiProcessCollector``).

    ::

        registry = CollectorRegistry()
        prometheus.SharedCollector(registry)
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if _sharing is None:
            raise RuntimeError("call prometheus.enable() before making a SharedCollector")
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """Return every shared metric, after every live worker sent what it had (a scrape)."""
        assert _sharing is not None
        return iter(_sharing.gather().values())
