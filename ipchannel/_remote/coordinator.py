"""The coordinator for channels spread over several machines: an engine (etcd, Redis) decides who hosts.

``RemoteCoordinator`` implements the ``Coordinator`` seam on any ``Engine``
(``_etcd``, ``_redis``). The host record is the value of one key, bound to a
lease (etcd) or a TTL (Redis); the engine's number for the claim is the
generation, which only grows.

- Liveness is the claim, not a pid: a recorded host is alive while its key exists.
- Waiters keep a cached copy of the key, refreshed by thread ``ipchannel-watch:NAME``,
  which blocks in the engine's watch (etcd) or keyspace notifications (Redis, else
  a read every 50 ms). ``read()`` and the monitor's checks read the cache; a
  connection that hit EOF asks the engine itself (``confirm()``).
- The host renews its claim every ttl/3 on thread ``ipchannel-renew:NAME``. It may
  serve only while ``claim_valid()``: the last renewal the engine confirmed was sent
  less than ``ttl - margin`` ago (on a clock that counts suspended time). Past that
  it is fenced even if it never heard that it lost; the monitor then steps it down.
- An engine that does not answer is never an exception here: it is recorded
  (``unreachable()``) and the election waits, within the callers' timeouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .. import _platform
from .._platform import claim_clock
from .._seams.record import HostRecord, own_create_time

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._seams.record import Liveness
    from .._url import CoordinatorURL

__all__ = [
    "Engine",
    "EngineUnavailable",
    "Engines",
    "KeyWatch",
    "LostClaim",
    "RemoteCoordinator",
    "Snapshot",
    "facing_address",
]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0
_RETRY_FIRST, _RETRY_CAP = 0.05, 1.0  # seconds between attempts to reach an engine that does not answer


class EngineUnavailable(Exception):
    """The engine did not answer (refused, timed out, or an error that says nothing about the key)."""


class LostClaim(Exception):
    """Becoming host failed: another process claimed the channel first, or the engine did not answer."""


class Snapshot(NamedTuple):
    """One read of a channel's key: its value (None: no host), its generation and the engine's revision."""

    value: bytes | None
    generation: int
    revision: int = 0


class KeyWatch(Protocol):
    """Waits for a channel's key to change (one per coordinator, on its watch thread)."""

    def wait(self, after: Snapshot, timeout: float) -> None:
        """Return once the key may have changed since ``after``, after ``timeout``, or on ``cancel()``."""

    def cancel(self) -> None:
        """Wake ``wait()`` and release what it holds (from another thread)."""


class Engine(Protocol):
    """One client of an etcd or Redis server, shared by the channels of one process."""

    @property
    def url(self) -> str:
        """The URL, password hidden, for messages."""

    def read(self, name: str) -> Snapshot:
        """Return the channel's key now."""

    def claim(self, name: str, value: bytes, ttl: float, floor: int) -> int | None:
        """Create the key with ``value`` for ``ttl`` unless it exists: its generation (> floor) or None."""

    def renew(self, name: str, generation: int, ttl: float) -> bool:
        """Extend our claim by ``ttl``; False if it is gone (expired, or another's)."""

    def release(self, name: str, generation: int) -> None:
        """Delete the key if it is still our claim (revoke the lease / compare-and-delete)."""

    def watch(self, name: str) -> KeyWatch:
        """Return a new watch on the channel's key."""

    def channels(self) -> list[tuple[str, Snapshot, float | None]]:
        """Return every channel with a host: (name, snapshot, seconds its claim has left or None)."""

    def local_address(self) -> str | None:
        """Return the address this machine reaches the engine from (a default to advertise), or None."""

    def close(self) -> None:
        """Close the client's connections (the last channel of the process using it closed)."""


class Engines(Protocol):
    """Where coordinators get their engine client: one per process and URL (``_backend.ENGINES``)."""

    def acquire(self, url: CoordinatorURL) -> Engine:
        """Return the client for ``url``, counting one more user."""

    def release(self, url: CoordinatorURL, engine: Engine) -> None:
        """Count one user less; the last one closes the client."""


class RemoteCoordinator:
    """The election through an engine: a claimed key, a cached copy, a renewal thread and the fence."""

    def __init__(
        self,
        name: str,
        url: CoordinatorURL,
        ttl: float,
        runtime_dir: Path,
        engines: Engines,
    ) -> None:
        self._name, self._url, self._ttl, self._runtime_dir = name, url, ttl, runtime_dir
        self._engines = engines
        self.margin = min(max(0.25 * ttl, 0.2), 2.0)  # how long before the engine's expiry a host stops
        self._reset()

    def _reset(self) -> None:
        """Start afresh: no cache, no claim, no thread (also in a forked child: none of those are ours)."""
        self._engine = self._engines.acquire(self._url)
        self._lock = threading.Lock()
        self._current: HostRecord | None = None
        self._loaded = False
        self._version = 0
        self._problem = ""  # why the engine did not answer last time ("" once it does)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._key_watch: KeyWatch | None = None
        self._claim: HostRecord | None = None
        self._floor = 0
        self._renewed = -math.inf  # when the last renewal the engine confirmed was sent
        self._lost = ""
        self._renewer: threading.Thread | None = None
        self._renew_stop = threading.Event()
        self._closed = False

    # -- what the channel asks ---------------------------------------------------

    @property
    def runtime_dir(self) -> Path:
        return self._runtime_dir

    @property
    def location(self) -> str:
        return self._url.text

    @property
    def engine(self) -> Engine:
        """The engine client (the transport asks it which address to advertise)."""
        return self._engine

    def read(self) -> HostRecord | None:
        self._ensure_watching()
        if not self._loaded:
            self._fresh()
        return self._current

    def try_acquire(self) -> bool:
        self._ensure_watching()
        if self._problem:
            return False  # the watch thread keeps trying; the caller waits within its timeout, unblocked
        if self._loaded:
            # The watch keeps the cache current, and claiming is atomic: a stale "no host" only
            # costs a claim that fails, while a round trip here would delay every handover.
            return self._current is None
        try:
            snapshot = self._engine.read(self._name)
        except EngineUnavailable as exc:
            self._unanswered(exc)
            return False
        self._store(snapshot)
        return snapshot.value is None

    def release(self) -> None:
        with self._lock:
            renewer, self._renewer = self._renewer, None
            self._renew_stop.set()
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(_JOIN_TIMEOUT)

    def new_record(
        self, address: str, previous: HostRecord | None, last_seen: int, *, auth: bool
    ) -> HostRecord:
        self._floor = max(previous.generation if previous else 0, last_seen)
        pid = os.getpid()
        return HostRecord(pid, own_create_time(pid), address, 0, time.time(), auth, node=socket.gethostname())

    def prepare(self) -> None:
        """Nothing to prepare: the engine holds the record."""

    def publish(self, record: HostRecord) -> HostRecord:
        """Claim the channel with ``record``: return it with the engine's generation, or raise LostClaim."""
        sent = claim_clock()
        try:
            generation = self._engine.claim(self._name, record.to_json(), self._ttl, self._floor)
        except EngineUnavailable as exc:
            self._unanswered(exc)
            raise LostClaim(str(exc)) from exc
        if generation is None:
            raise LostClaim("another process claimed the channel first")
        ours = dataclasses.replace(record, generation=generation)
        with self._lock:
            self._claim, self._lost = ours, ""
            self._renewed = sent
            self._set_current(ours)
            self._renew_stop = threading.Event()
            self._renewer = threading.Thread(
                target=self._renew,
                args=(ours, self._renew_stop),
                name=f"ipchannel-renew:{self._name}",
                daemon=True,
            )
            self._renewer.start()
        return ours

    def retract(self, record: HostRecord) -> None:
        with self._lock:
            ours = self._claim == record
            if ours:
                self._claim = None
                self._renewed = -math.inf
                self._renew_stop.set()
            if self._current == record:
                self._set_current(None)  # we stopped serving, whatever the engine says for now
        if not ours:
            return
        problem = self._problem  # an engine that did not answer last time is not waited for again
        if not problem:
            try:
                self._engine.release(self._name, record.generation)
            except EngineUnavailable as exc:
                problem = str(exc)
        if problem:
            _LOGGER.warning(
                "channel %r: could not release the claim at %s (%s); it expires within %g s of its last "
                "renewal",
                self._name,
                self._url.text,
                problem,
                self._ttl,
            )

    def serving(self, record: HostRecord) -> bool:
        return self.read() == record

    def confirm(self, record: HostRecord) -> bool:
        """Ask the engine itself whether ``record`` is the current claim (after an EOF)."""
        return self._fresh() == record

    def liveness(self, record: HostRecord) -> Liveness:
        return "alive" if self.read() == record else "dead"

    def released(self, record: HostRecord) -> bool:
        return self.read() != record

    def exit_notice(self, record: HostRecord) -> int | None:  # noqa: ARG002 - a host elsewhere: its lease tells
        return None

    def stand_by(self) -> bool:
        return False  # the engine elects the next host; there is no standby across machines

    def publish_standby(self, record: HostRecord) -> None:
        """Nothing: never the standby."""

    def standby(self) -> HostRecord | None:
        return None

    def stop_standing_by(self, record: HostRecord | None) -> None:
        """Nothing: never the standby."""

    def may_campaign(self, dead: HostRecord | None) -> bool:  # noqa: ARG002 - no standby to wait for
        return True

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:  # noqa: ARG002 - the cache says it all
        self._ensure_watching()
        version = self._version
        return lambda: self._version != version

    def claim_valid(self) -> bool:
        """Tell whether our claim is provably ours: renewed less than ``ttl - margin`` ago."""
        return (
            self._claim is not None
            and not self._lost
            and claim_clock() - self._renewed < self._ttl - self.margin
        )

    def holding_problem(self) -> str:
        if self._lost:
            return self._lost
        if self._claim is None:
            return f"it holds no claim at {self._url.text}"
        late = claim_clock() - self._renewed
        if late >= self._ttl - self.margin:
            why = self._problem or "no answer"
            return (
                f"its claim at {self._url.text} was last renewed {late:.2f} s ago (ttl {self._ttl:g} s, "
                f"margin {self.margin:g} s): {why}"
            )
        return ""

    def record_problem(self, record: HostRecord) -> str:
        return "" if self._claim == record else f"its claim at {self._url.text} was replaced"

    def unreachable(self) -> str:
        return self._problem

    def stuck_detail(self) -> str:
        return f"the coordinator {self._url.text} does not answer: {self._problem}" if self._problem else ""

    def stuck_report(self) -> str:
        return self.stuck_detail() or f"the coordinator {self._url.text} names no host that can be reached"

    def warm_up(self) -> None:
        own_create_time(os.getpid())
        self._ensure_watching()

    def after_fork(self) -> None:
        if self._closed:
            self._stop = threading.Event()
            self._stop.set()  # a closed channel's coordinator stays closed, with no client of its own
            self._watcher = self._renewer = None
            self._claim = None
            return
        self._reset()  # the parent's claim, threads and connections stay the parent's

    def close(self) -> None:
        """Stop the watch and renewal threads (the claim itself is released by ``retract()``)."""
        self._stop.set()
        with self._lock:
            watcher, key_watch = self._watcher, self._key_watch
        if key_watch is not None:
            key_watch.cancel()
        self.release()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(_JOIN_TIMEOUT)
            if watcher.is_alive():
                _LOGGER.warning("%s did not stop within %.1f s", watcher.name, _JOIN_TIMEOUT)
        if not self._closed:
            self._closed = True
            self._engines.release(self._url, self._engine)

    # -- the cache ---------------------------------------------------------------

    def _fresh(self) -> HostRecord | None:
        try:
            self._store(self._engine.read(self._name))
        except EngineUnavailable as exc:
            self._unanswered(exc)
        return self._current

    def _store(self, snapshot: Snapshot) -> None:
        record = self._parse(snapshot)
        with self._lock:
            self._problem = ""
            if record != self._current or not self._loaded:
                self._set_current(record)
            self._loaded = True

    def _set_current(self, record: HostRecord | None) -> None:
        """Replace the cached record (called with ``_lock`` held)."""
        self._current = record
        self._version += 1

    def _parse(self, snapshot: Snapshot) -> HostRecord | None:
        if snapshot.value is None:
            return None
        try:
            return HostRecord.from_json(snapshot.value, snapshot.generation)
        except ValueError as exc:
            _LOGGER.warning("channel %r: ignoring the record at %s: %s", self._name, self._url.text, exc)
            return None

    def _unanswered(self, exc: EngineUnavailable) -> None:
        if self._stop.is_set():
            return  # closing: the watch was cut on purpose
        if not self._problem:
            _LOGGER.warning(
                "channel %r: the coordinator %s does not answer: %s", self._name, self._url.text, exc
            )
        self._problem = str(exc) or type(exc).__name__

    def _ensure_watching(self) -> None:
        if self._watcher is not None or self._stop.is_set():
            return
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(
                target=self._watch, name=f"ipchannel-watch:{self._name}", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Keep the cache current: read the key, wait in the engine's watch for a change, again."""
        _platform.leave_signals_to_the_application()
        delay = _RETRY_FIRST
        while not self._stop.is_set():
            try:
                if self._key_watch is None:
                    key_watch = self._engine.watch(self._name)
                    with self._lock:
                        self._key_watch = key_watch
                    if self._stop.is_set():
                        key_watch.cancel()
                        return
                snapshot = self._engine.read(self._name)
                self._store(snapshot)
                delay = _RETRY_FIRST
                self._key_watch.wait(snapshot, max(self._ttl, 5.0))
            except EngineUnavailable as exc:
                self._unanswered(exc)
                with self._lock:
                    broken, self._key_watch = self._key_watch, None
                if broken is not None:
                    broken.cancel()
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_CAP)
            except Exception:
                _LOGGER.exception("ipchannel-watch:%s: watching %s failed", self._name, self._url.text)
                self._stop.wait(_RETRY_CAP)

    def _renew(self, claim: HostRecord, stop: threading.Event) -> None:
        """Renew ``claim`` every ttl/3 until ``stop``; a refusal means we lost it (then the fence acts)."""
        _platform.leave_signals_to_the_application()
        interval = self._ttl / 3
        wait = interval
        while not stop.wait(wait):
            sent = claim_clock()
            try:
                still_ours = self._engine.renew(self._name, claim.generation, self._ttl)
            except EngineUnavailable as exc:
                self._unanswered(exc)
                wait = min(interval, 0.1)
                continue
            except Exception:
                _LOGGER.exception("ipchannel-renew:%s: renewing at %s failed", self._name, self._url.text)
                wait = min(interval, 0.1)
                continue
            if not still_ours:
                with self._lock:
                    if self._claim == claim:
                        self._lost = f"{self._url.text} says its claim expired or was taken"
                return
            with self._lock:
                self._problem = ""
                if self._claim == claim:
                    self._renewed = sent
            wait = interval


def facing_address(endpoint: tuple[str, int]) -> str | None:
    """Return the local address a packet to ``endpoint`` leaves from (no packet is sent), or None."""
    try:
        infos = socket.getaddrinfo(endpoint[0], endpoint[1], type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, address in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    return None
