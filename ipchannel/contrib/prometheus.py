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
  scrape began is in it. A frozen worker delays a scrape by ``scrape_timeout`` at most.
- The totals are a SharedDict: they survive the hosting worker's death like any other
  failover, and, with ``appendonly`` (the default on one machine), every worker's exit.

Gauges take prometheus_client's ``multiprocess_mode=``: ``all`` (the default: one series per
process with a ``pid`` label, dead ones kept), ``sum``, ``max``, ``min``, ``mostrecent`` (dead
workers' last values go on counting) and their ``live`` forms, which drop a worker once it
died. ``Info`` and ``Enum`` show what the worker that changed them last set.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import values as _values
    from prometheus_client.registry import REGISTRY, CollectorRegistry
except ImportError as exc:  # pragma: no cover - tested in a process without prometheus_client
    raise ImportError(
        "ipchannel.contrib.prometheus needs prometheus_client, which is not installed; "
        "install it with: pip install 'ipchannel[prometheus]'"
    ) from exc

from ipchannel import _fork, _platform
from ipchannel._codecs import resolve_codec
from ipchannel._errors import ChannelClosed, ChannelError
from ipchannel._options import Options, validate_name
from ipchannel._shareddict.dict import SharedDict, membership_of
from ipchannel._shareddict.durability import durable_journal
from ipchannel._timing import validate_timeout
from ipchannel.contrib._metricsexport import families
from ipchannel.contrib._metricsops import FORGET, PUSH, SCRAPE
from ipchannel.contrib._metricsvalue import Pending, value_class

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from prometheus_client.metrics_core import Metric

__all__ = ["SharedCollector", "enable"]

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

_sharing: _Sharing | None = None
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
    :param appendfsync, journal_dir, options: as for ``SharedDict`` (runtime_dir, coordinator, ...).
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

        _sharing = _Sharing(name, open_dict, interval, waited)
        _values.ValueClass = value_class(_sharing.pending)
        original = registry.collect
        setattr(registry, "collect", lambda: _sharing_collect(original))  # noqa: B010 - mypy: a method


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


class _Sharing:
    """One process's side: open the dict, send what changed, run a scrape (see the module)."""

    def __init__(
        self, name: str, open_dict: Callable[[], SharedDict], interval: float, scrape_timeout: float
    ) -> None:
        self.name, self._open_dict = name, open_dict
        self._interval, self._scrape_timeout = interval, scrape_timeout
        self.pending = Pending(self._changed)
        self._dict: SharedDict | None = None
        self._collect_here: Callable[[], Iterable[Metric]] = REGISTRY.collect
        self._reset()
        _fork.register(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # opening the dict, starting the sender
        self._send_lock = threading.Lock()  # one send at a time: each says the scrape it answers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._answered = 0  # the scrape the last send answered
        self._infos: dict[str, list[Any]] = {}  # Info and Enum samples as last sent

    def _reset_after_fork(self) -> None:
        """In a forked child: its values at 0, nothing sent, no sender (its parent's is not ours)."""
        self._reset()
        self.pending.after_fork()

    def _resume_after_fork(self) -> None:
        """In a forked child: the sender starts, so its series exist from its start (as multiprocess mode)."""
        if self.pending.values:
            self._changed()

    def shared(self) -> SharedDict:
        """Return the dict, opened at the first need in this process."""
        with self._lock:
            if self._dict is None:
                self._dict = self._open_dict()
                atexit.register(self.close)  # after the dict's own: at exit, runs before they close it
            return self._dict

    def _changed(self) -> None:
        """Start the sender, unless running (a value changed for the first time since the last send)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                # at exit, before every atexit handler (the dict's channel closes in one): sends
                # also when the process exits while the dict still opens (recycled right after boot)
                with contextlib.suppress(RuntimeError):  # exiting already: the atexit one sends
                    threading._register_atexit(self.close)  # type: ignore[attr-defined] # noqa: SLF001
                self._thread = threading.Thread(
                    target=self._run, name=f"ipchannel-metrics:{self.name}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        _platform.leave_signals_to_the_application()
        while not self._stop.is_set():
            try:
                shared = self.shared()
                shared.wait_for(self._asked, self._interval)
                if not self._stop.is_set():
                    self.send(infos=shared.get("scrape", 0) != self._answered)
            except ChannelClosed:
                return
            except Exception as exc:  # noqa: BLE001 - kept for the next send; the thread goes on
                _LOGGER.warning(
                    "metrics %r: cannot send this process's changes (kept for later): %s", self.name, exc
                )
                self._stop.wait(self._interval)

    def _asked(self) -> bool:
        """Tell whether to send now: closing, or a scrape not answered yet (under the replica's lock)."""
        shared = self._dict
        return self._stop.is_set() or shared is None or shared.get("scrape", 0) != self._answered

    def send(self, *, infos: bool = False) -> None:
        """Send what changed (and, for a scrape, the Info and Enum samples), answering the last scrape."""
        shared = self.shared()
        with self._send_lock:
            scrape = shared.get("scrape", 0)
            metas, changes = self.pending.take()
            info_list = self._changed_infos() if infos else []
            if not (metas or changes or info_list) and scrape == self._answered:
                return
            counts = [[key, counted] for key, counted, _gauge, _at in changes if counted is not None]
            gauges = [[key, gauge, at] for key, _counted, gauge, at in changes if gauge is not None]
            membership = membership_of(shared)
            worker = membership.me() if membership is not None else f"pid {os.getpid()}"
            try:
                shared.perform(PUSH, worker, os.getpid(), scrape, metas, counts, gauges, info_list)
            except BaseException:
                self.pending.give_back(metas, changes)
                raise
            self._answered = scrape
            for metric, _at, _kind, _text, samples in info_list:
                self._infos[metric] = samples

    def _changed_infos(self) -> list[list[Any]]:
        """Return this process's Info and Enum metrics whose samples changed since they were last sent."""
        changed = []
        for family in self._collect_here():
            if family.type not in {"info", "stateset"}:
                continue
            samples = [[sample.name, sample.labels, sample.value] for sample in family.samples]
            known = self._infos.get(family.name)
            if known != samples:
                # first seen here: as made, not set, unless nobody said more (a set anywhere wins)
                at = 0.0 if known is None else time.time()
                changed.append([family.name, at, family.type, family.documentation, samples])
        return changed

    def gather(self) -> dict[str, Metric]:
        """Run a scrape: every live worker sends what it has, then the totals as metric families."""
        shared = self.shared()
        try:
            self.send(infos=True)
            number = shared.perform(SCRAPE)
            waiting = self._live_workers(shared)
            if not shared.wait_for(
                lambda: all(_has_answered(shared, w, number) for w in waiting), self._scrape_timeout
            ):
                late = [
                    str(shared.get("w:" + w, ["?"])[0])
                    for w in waiting
                    if not _has_answered(shared, w, number)
                ]
                _LOGGER.warning(
                    "metrics %r: no answer within %.1f s from worker pid %s (stopped?): this scrape shows"
                    " what they sent before",
                    self.name,
                    self._scrape_timeout,
                    ", ".join(late),
                )
        except ChannelError as exc:
            _LOGGER.warning(
                "metrics %r: this scrape shows the totals as this process last saw them: %s", self.name, exc
            )
        return families(shared.copy())

    def _live_workers(self, shared: SharedDict) -> list[str]:
        """Return the other workers that sent something and live; forget those that died."""
        membership = membership_of(shared)
        workers = [key[2:] for key in shared if isinstance(key, str) and key.startswith("w:")]
        if membership is None:
            return []
        me = membership.me()
        alive = {worker: membership.alive(worker) for worker in workers if worker != me}
        dead = [worker for worker, lives in alive.items() if not lives]
        if dead:
            shared.perform(FORGET, dead)
        return [worker for worker, lives in alive.items() if lives]

    def close(self) -> None:
        """Send what is left and stop (at exit: a worker that exits loses nothing it counted)."""
        atexit.unregister(self.close)
        if self._stop.is_set():
            return  # closed already (also at exit: it is registered twice)
        self._stop.set()
        try:
            if self._dict is not None or self._thread is not None:  # opened, or its sender opens it
                self.send()
        except ChannelError as exc:
            _LOGGER.warning(
                "metrics %r: what this process counted since its last send is lost: %s", self.name, exc
            )
        with self._lock:
            shared, self._dict = self._dict, None
        if shared is not None:
            shared.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def _has_answered(shared: SharedDict, worker: str, number: int) -> bool:
    """Tell whether ``worker`` answered scrape ``number`` (or was forgotten meanwhile: it died)."""
    entry = shared.get("w:" + worker)
    return entry is None or entry[1] >= number
