"""The coordinator across machines: an engine (etcd, Redis) decides who hosts, made of three parts.

``RemoteCoordinator`` implements the ``Coordinator`` seam on any ``Engine``. The host
record is the value of one key, bound to a lease (etcd) or a TTL (Redis); the engine's
number for the claim is the generation, which only grows. Its parts, one concern each:

- ``RecordCache`` (``cache``): the cached key and the watch thread; generation fencing;
- ``Claim`` (``claim``): this process's claim, its renewal thread, and the fence;
- ``EngineHealth`` (``health``): why the engine did not answer, if it did not.

Liveness is the claim, not a pid: a recorded host serves while its key exists; after
an EOF the engine itself is asked, and the host greeted (``probe``: the transport's,
handed in by the backend chooser), to tell a crash from a handler that closed its
connection. It has no standby and no exit notices.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

from .._seams.base import HostState
from .._seams.record import HostRecord, own_create_time
from .cache import RecordCache
from .claim import Claim
from .engine import EngineUnavailable
from .health import EngineHealth

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._seams.base import Evidence
    from .._url import CoordinatorURL
    from .engine import Engine, Engines

__all__ = ["RemoteCoordinator"]


class RemoteCoordinator:
    """The election through an engine: a claimed key, a cached copy, a renewal thread and the fence."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by the backend chooser
        self,
        name: str,
        url: CoordinatorURL,
        ttl: float,
        runtime_dir: Path,
        engines: Engines,
        probe: Callable[[HostRecord], bool],
    ) -> None:
        self._name, self._url, self._ttl, self._runtime_dir = name, url, ttl, runtime_dir
        self._engines, self._probe = engines, probe
        self._closed = False
        self._start()

    def _start(self, before: RecordCache | None = None) -> None:
        """Start afresh: no cache, no claim, no thread (also in a forked child: none of those are ours).

        The generations seen ``before`` carry over: a forked child refuses what its parent refuses.
        """
        self._engine = self._engines.acquire(self._url)
        self._health = EngineHealth(self._name, self._url.text)
        self._cache = RecordCache(self._name, self._engine, self._health, self._ttl, before)
        self._claim = Claim(self._name, self._engine, self._health, self._ttl)

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

    @property
    def margin(self) -> float:
        """Seconds before the engine's expiry that a host stops serving."""
        return self._claim.margin

    def read(self) -> HostRecord | None:
        return self._cache.read()

    def assess(self, record: HostRecord, *, after: Evidence = "look") -> HostState:
        current = self._cache.read() if after == "look" else self._cache.fresh()
        if current != record:
            return HostState.GONE  # its claim expired, was released, or another's replaced it
        if after == "eof" and not self._probe(record):
            return HostState.FAILING  # crashed or cut off: its claim lapses within the ttl
        return HostState.SERVING

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:  # noqa: ARG002 - the cache says it all
        return self._cache.changed_since_now()

    def try_acquire(self) -> bool:
        self._cache.ensure_watching()
        if self._health.problem:
            return False  # the watch thread keeps trying; the caller waits within its timeout, unblocked
        if not self._cache.loaded:
            try:
                self._cache.store(self._engine.read(self._name))
            except EngineUnavailable as exc:
                self._health.failed(exc)
                return False
        # The watch keeps the cache current, and claiming is atomic: a stale "no host" only
        # costs a claim that fails, while a round trip here would delay every handover.
        return not self._cache.occupied

    def new_record(self, address: str, previous: HostRecord | None, *, auth: bool) -> HostRecord:  # noqa: ARG002
        # numbered by the engine, above what the cache has seen (``previous`` among it)
        pid = os.getpid()
        return HostRecord(pid, own_create_time(pid), address, 0, time.time(), auth, node=socket.gethostname())

    def publish(self, record: HostRecord) -> HostRecord:
        """Claim the channel with ``record``: return it with the engine's generation, or raise LostClaim."""
        ours = self._claim.take(record, self._cache.followed())
        self._cache.replace(ours)
        return ours

    def retract(self, record: HostRecord) -> None:
        self._cache.replace(None, only_if=record)  # we stopped serving, whatever the engine says for now
        self._claim.drop(record)

    def release(self) -> None:
        self._claim.stop_renewing()

    def fence(self, record: HostRecord, *, thorough: bool = False) -> str:
        problem = self._claim.problem()
        if problem or not thorough or self._claim.record == record:
            return problem
        return f"its claim at {self._url.text} was replaced"

    def holding_off(self, record: HostRecord) -> float:
        """Seconds before our claim ``record`` may serve: after a reset of the engine, a ttl (see claim)."""
        return self._claim.holding() if self._claim.record == record else 0.0

    def unreachable(self) -> str:
        return self._health.problem

    def blocker(self) -> str:
        problem = self._health.problem
        return f"the coordinator {self._url.text} does not answer: {problem}" if problem else ""

    def warm_up(self) -> None:
        own_create_time(os.getpid())
        self._cache.ensure_watching()

    def after_fork(self) -> None:
        if self._closed:
            self._cache.stop_after_fork()  # a closed channel's coordinator stays closed, with no client
            return
        self._start(before=self._cache)  # the parent's claim, threads and connections stay the parent's

    def close(self) -> None:
        """Stop the watch and renewal threads (the claim itself is released by ``retract()``)."""
        self._health.closing.set()
        self._cache.close()
        self._claim.stop_renewing()
        if not self._closed:
            self._closed = True
            self._engines.release(self._url, self._engine)
