"""A host's claim on a channel's key, its renewal, and the fence that says whether it may serve.

The host renews its claim every ttl/3 on thread ``ipchannel-renew:NAME``. It may serve
only while its last renewal the engine confirmed was *sent* less than ``ttl - margin``
ago (on a clock that counts suspended time, ``_platform.claim_clock``): past that it is
fenced, even if it never heard that it lost; the monitor then steps it down. A renewal
the engine refuses (the key expired, or is another's: renewals are keyed on the
generation) means it lost the claim for good; one that finds its record changed (someone
else wrote the key) also logs an ERROR.

A claim the engine says may follow a reset of its data (``Claimed.hold``) is taken and
renewed, but its host holds off (``holding``) until any host from before the reset must
have stopped: the monitor does not step it down for that, and clients it refuses meanwhile
try again within their own timeouts.
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
    from .engine import Claimed, Engine, Renewal, Seen
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
        self._claimed: Claimed | None = None  # as the engine granted it (what renewals compare)
        self._serve_from = -math.inf  # no answer before this (``claim_clock``): a reset's hold
        self._renewed = -math.inf  # when the last renewal the engine confirmed was sent
        self._lost = ""
        self._renewer: threading.Thread | None = None
        self._renew_stop = threading.Event()

    def take(self, record: HostRecord, seen: Seen) -> HostRecord:
        """Claim the channel with ``record``: return it numbered by the engine, or raise LostClaim."""
        sent = claim_clock()
        try:
            claimed = self._engine.claim(
                self._name, lambda epoch: dataclasses.replace(record, epoch=epoch).to_json(), self._ttl, seen
            )
        except EngineUnavailable as exc:
            self._health.failed(exc)
            raise LostClaim(str(exc)) from exc
        if claimed is None:
            raise LostClaim("another process claimed the channel first")
        ours = dataclasses.replace(record, generation=claimed.generation, epoch=claimed.epoch)
        if claimed.hold:
            _LOGGER.info(
                "channel %r: %s may have been reset (its data lost or restored): as host of generation %d "
                "this process serves only in %.1f s, once any host from before must have stopped",
                self._name,
                self._engine.url,
                claimed.generation,
                claimed.hold,
            )
        with self._lock:
            self.record, self._claimed, self._lost, self._renewed = ours, claimed, "", sent
            self._serve_from = claim_clock() + claimed.hold
            self._renew_stop = threading.Event()
            self._renewer = threading.Thread(
                target=self._renew,
                args=(ours, claimed, self._renew_stop),
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

    def holding(self) -> float:
        """Return how many seconds more this host must hold off before it first serves (0: none)."""
        return max(0.0, self._serve_from - claim_clock())

    def drop(self, record: HostRecord) -> None:
        """Give the claim ``record`` up, at the engine too; an engine that does not answer lets it expire.

        A claim still holding off is left to expire: a host from before the engine's reset may
        serve until then, and the next claim must come after it.
        """
        with self._lock:
            if self.record != record or self._claimed is None:
                return
            claimed, holding = self._claimed, self.holding()
            self.record, self._claimed, self._renewed = None, None, -math.inf
            self._renew_stop.set()
        if holding:
            _LOGGER.info("channel %r: leaving the claim at %s to expire", self._name, self._engine.url)
            return
        problem = self._health.problem  # an engine that did not answer last time is not waited for again
        if not problem:
            try:
                self._engine.release(self._name, claimed)
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

    def _lost_because(self, claim: HostRecord, renewal: Renewal) -> str:
        """Say why the claim is lost; an ERROR if someone else rewrote our record (not an expiry)."""
        if renewal.found is None:
            return f"{self._engine.url} says its claim expired or was taken"
        found = renewal.found[:300].decode(errors="replace")
        _LOGGER.error(
            "channel %r: the host record of generation %d at %s was changed by someone else; it now "
            "holds %r: this host steps down",
            self._name,
            claim.generation,
            self._engine.url,
            found,
        )
        return f"its record at {self._engine.url} was changed by someone else (it holds {found!r})"

    def stop_renewing(self) -> None:
        """Stop the renewal thread and wait for it (the claim itself lapses, or ``drop`` released it)."""
        with self._lock:
            renewer, self._renewer = self._renewer, None
            self._renew_stop.set()
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(_JOIN_TIMEOUT)

    def _renew(self, claim: HostRecord, claimed: Claimed, stop: threading.Event) -> None:
        """Renew ``claim`` every ttl/3 until ``stop``; a refusal means we lost it (then the fence acts)."""
        _platform.leave_signals_to_the_application()
        interval = self._ttl / 3
        wait = interval
        while not stop.wait(wait):
            sent = claim_clock()
            try:
                renewal = self._engine.renew(self._name, claimed, self._ttl)
            except EngineUnavailable as exc:
                self._health.failed(exc)
                wait = min(interval, 0.1)
                continue
            except Exception:
                _LOGGER.exception("ipchannel-renew:%s: renewing at %s failed", self._name, self._engine.url)
                wait = min(interval, 0.1)
                continue
            with self._lock:
                if not renewal.ours:
                    if self.record == claim:
                        self._lost = self._lost_because(claim, renewal)
                    return
                self._health.answered()
                if self.record == claim:
                    self._renewed = sent
            wait = interval
