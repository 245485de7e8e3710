"""A host's claim on a channel's key, its renewal, and the fence that says whether it may serve.

The host renews its claim every ttl/3 on thread ``ipchannel-renew:NAME``. It may serve
only while its last renewal the engine confirmed was *sent* less than ``ttl - margin``
ago (on a clock that counts suspended time, ``_platform.claim_clock``): past that it is
fenced, even if it never heard that it lost; the monitor then steps it down. A renewal
the engine refuses (the key expired, or is another's: renewals are keyed on the
generation) means it lost the claim for good.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from typing import TYPE_CHECKING

from .. import _platform
from .._platform import claim_clock
from .._seams.base import LostClaim
from .engine import EngineUnavailable

if TYPE_CHECKING:
    from .._seams.record import HostRecord
    from .engine import Engine
    from .health import EngineHealth

__all__ = ["Claim"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 5.0


class Claim:
    """At most one claim of this process at a time: taken by ``take``, given up by ``drop``."""

    def __init__(self, name: str, engine: Engine, health: EngineHealth, ttl: float) -> None:
        self._name, self._engine, self._health, self._ttl = name, engine, health, ttl
        self.margin = min(max(0.25 * ttl, 0.2), 2.0)  # how long before the engine's expiry a host stops
        self._lock = threading.Lock()
        self.record: HostRecord | None = None
        self._renewed = -math.inf  # when the last renewal the engine confirmed was sent
        self._lost = ""
        self._renewer: threading.Thread | None = None
        self._renew_stop = threading.Event()

    def take(self, record: HostRecord, floor: int) -> HostRecord:
        """Claim the channel with ``record``: return it with the engine's generation, or raise LostClaim."""
        sent = claim_clock()
        try:
            generation = self._engine.claim(self._name, record.to_json(), self._ttl, floor)
        except EngineUnavailable as exc:
            self._health.failed(exc)
            raise LostClaim(str(exc)) from exc
        if generation is None:
            raise LostClaim("another process claimed the channel first")
        ours = dataclasses.replace(record, generation=generation)
        with self._lock:
            self.record, self._lost, self._renewed = ours, "", sent
            self._renew_stop = threading.Event()
            self._renewer = threading.Thread(
                target=self._renew,
                args=(ours, self._renew_stop),
                name=f"ipchannel-renew:{self._name}",
                daemon=True,
            )
            self._renewer.start()
        return ours

    def problem(self) -> str:
        """Return "" while the claim is provably ours (renewed under ``ttl - margin`` ago), else why not."""
        if self._lost:
            return self._lost
        if self.record is None:
            return f"it holds no claim at {self._engine.url}"
        late = claim_clock() - self._renewed
        if late < self._ttl - self.margin:
            return ""
        why = self._health.problem or "no answer"
        return (
            f"its claim at {self._engine.url} was last renewed {late:.2f} s ago (ttl {self._ttl:g} s, "
            f"margin {self.margin:g} s): {why}"
        )

    def drop(self, record: HostRecord) -> None:
        """Give the claim ``record`` up, at the engine too; an engine that does not answer lets it expire."""
        with self._lock:
            if self.record != record:
                return
            self.record, self._renewed = None, -math.inf
            self._renew_stop.set()
        problem = self._health.problem  # an engine that did not answer last time is not waited for again
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
                self._engine.url,
                problem,
                self._ttl,
            )

    def stop_renewing(self) -> None:
        """Stop the renewal thread and wait for it (the claim itself lapses, or ``drop`` released it)."""
        with self._lock:
            renewer, self._renewer = self._renewer, None
            self._renew_stop.set()
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(_JOIN_TIMEOUT)

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
                self._health.failed(exc)
                wait = min(interval, 0.1)
                continue
            except Exception:
                _LOGGER.exception("ipchannel-renew:%s: renewing at %s failed", self._name, self._engine.url)
                wait = min(interval, 0.1)
                continue
            with self._lock:
                if not still_ours:
                    if self.record == claim:
                        self._lost = f"{self._engine.url} says its claim expired or was taken"
                    return
                self._health.answered()
                if self.record == claim:
                    self._renewed = sent
            wait = interval
