"""The cached copy of a channel's key, kept current by thread ``ipchannel-watch:NAME``.

The thread reads the key, then blocks in the engine's watch (etcd) or keyspace
notifications (Redis; else a read every 50 ms) until it changes, and again. Reads
(``current``) cost nothing; ``fresh()`` asks the engine itself (after an EOF). Every
change bumps ``version``, which the election's waiters watch.

Generation fencing, on the client's side: a record numbered below the highest this
process has seen in its epoch (a host from before a restore) is refused, and logged once
per generation, as if no host were recorded. A record of another epoch (the engine's data
was reset, and its counter made anew) is followed once the engine confirms that epoch is
its own (read with the key); numbering then starts again from it. A record of an epoch
other than the one the engine names is refused.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .. import _platform
from .._seams.record import HostRecord
from .engine import EngineUnavailable, Seen

if TYPE_CHECKING:
    from collections.abc import Callable

    from .engine import Engine, KeyWatch, Snapshot
    from .health import EngineHealth

__all__ = ["RecordCache"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0
_RETRY_FIRST, _RETRY_CAP = 0.05, 1.0  # seconds between attempts to reach an engine that does not answer


class RecordCache:
    """The host record as last read from the engine, and the thread that keeps it current."""

    def __init__(
        self, name: str, engine: Engine, health: EngineHealth, ttl: float, before: RecordCache | None = None
    ) -> None:
        """``before``: a cache whose highest generation carries over (a forked child keeps refusing)."""
        self._name, self._engine, self._health, self._ttl = name, engine, health, ttl
        self._lock = threading.Lock()
        self._current: HostRecord | None = None
        self.occupied = False  # the key holds a claim, even one refused here (below ``seen``)
        self.loaded = False  # read at least once
        self.version = 0
        # the epoch followed (None: none yet), its highest generation met (below: refused), the revision
        self.epoch: str | None = None if before is None else before.epoch
        self.seen: int = 0 if before is None else before.seen
        self.revision: int = 0 if before is None else before.revision
        self.refused: set[tuple[str, int]] = set() if before is None else set(before.refused)  # warned once
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._key_watch: KeyWatch | None = None

    @property
    def current(self) -> HostRecord | None:
        """The cached record (None: no host, or not read yet)."""
        return self._current

    def read(self) -> HostRecord | None:
        """Return the cached record, reading the engine first if it was never read."""
        self.ensure_watching()
        if not self.loaded:
            self.fresh()
        return self._current

    def fresh(self) -> HostRecord | None:
        """Ask the engine itself (the cache stays as it was if the engine does not answer)."""
        try:
            self.store(self._engine.read(self._name))
        except EngineUnavailable as exc:
            self._health.failed(exc)
        return self._current

    def followed(self) -> Seen:
        """Return what this process has followed (a claim is numbered above it, and told of resets)."""
        return Seen(self.epoch, self.seen, self.revision)

    def store(self, snapshot: Snapshot) -> None:
        """Keep what a read of the key said (the engine answered)."""
        record = self._parse(snapshot)
        with self._lock:
            self._health.answered()
            if snapshot.epoch == self.epoch:
                self.revision = max(self.revision, snapshot.revision)
            self.occupied = snapshot.value is not None
            if record != self._current or not self.loaded:
                self._set(record, snapshot.revision)
            self.loaded = True

    def replace(self, record: HostRecord | None, *, only_if: HostRecord | None = None) -> None:
        """Set the cached record to ours (a claim), or clear it (``only_if`` it is still that one)."""
        with self._lock:
            if only_if is None or self._current == only_if:
                self._set(record)
                self.occupied = record is not None

    def changed_since_now(self) -> Callable[[], bool]:
        """Return a predicate that turns True once the cached record changes."""
        self.ensure_watching()
        version = self.version
        return lambda: self.version != version

    def _set(self, record: HostRecord | None, revision: int = 0) -> None:
        if record is not None and record.epoch != self.epoch:
            self.epoch, self.seen, self.revision = record.epoch, record.generation, revision
        elif record is not None:
            self.seen = max(self.seen, record.generation)
        self._current = record
        self.version += 1

    def _parse(self, snapshot: Snapshot) -> HostRecord | None:
        if snapshot.value is None:
            return None
        try:
            record = HostRecord.from_json(snapshot.value, snapshot.generation)
        except ValueError as exc:
            _LOGGER.warning("channel %r: ignoring the record at %s: %s", self._name, self._engine.url, exc)
            return None
        if snapshot.epoch is not None and record.epoch != snapshot.epoch:
            self._refuse(record, f"its epoch {record.epoch!r} is not the coordinator's ({snapshot.epoch!r})")
            return None
        if self.epoch is not None and record.epoch != self.epoch and record.epoch == snapshot.epoch:
            self._followed_new_epoch(record)
            return record  # a new epoch, confirmed by the engine: numbering starts again
        if record.generation < self.seen:
            self._refuse(record, f"its generation {record.generation} is below {self.seen}, seen before")
            return None
        return record

    def _followed_new_epoch(self, record: HostRecord) -> None:
        if self.epoch:  # "": records from before epochs, then the first one numbered in one: no reset
            _LOGGER.warning(
                "channel %r: the coordinator %s was reset (epoch %r, now %r): following its host pid %d "
                "of generation %d",
                self._name,
                self._engine.url,
                self.epoch,
                record.epoch,
                record.pid,
                record.generation,
            )

    def _refuse(self, record: HostRecord, why: str) -> None:
        if (record.epoch, record.generation) in self.refused:
            return
        self.refused.add((record.epoch, record.generation))
        _LOGGER.warning("channel %r: refusing the host at %s: %s", self._name, record.sock, why)

    def ensure_watching(self) -> None:
        """Start the watch thread unless it runs (or the cache was closed)."""
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
                self.store(snapshot)
                delay = _RETRY_FIRST
                self._key_watch.wait(snapshot, max(self._ttl, 5.0))
            except EngineUnavailable as exc:
                self._health.failed(exc)
                with self._lock:
                    broken, self._key_watch = self._key_watch, None
                if broken is not None:
                    broken.cancel()
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_CAP)
            except Exception:
                _LOGGER.exception("ipchannel-watch:%s: watching %s failed", self._name, self._engine.url)
                self._stop.wait(_RETRY_CAP)

    def close(self) -> None:
        """Stop the watch thread and wait for it."""
        self._stop.set()
        with self._lock:
            watcher, key_watch = self._watcher, self._key_watch
        if key_watch is not None:
            key_watch.cancel()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(_JOIN_TIMEOUT)
            if watcher.is_alive():
                _LOGGER.warning("%s did not stop within %.1f s", watcher.name, _JOIN_TIMEOUT)

    def stop_after_fork(self) -> None:
        """In a forked child of a closed channel: never watch (the parent's thread is not ours)."""
        self._stop = threading.Event()
        self._stop.set()
        self._watcher = None
