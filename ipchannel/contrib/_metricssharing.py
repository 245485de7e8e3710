"""One process's side of the shared metrics: the sender thread, and a scrape (``prometheus``).

``Sharing.send`` ships what changed (``_metricsvalue.Pending``) as one write; the thread
``ipchannel-metrics:NAME`` sends every ``flush_interval`` and whenever a scrape asks;
``Sharing.gather`` runs a scrape: it asks every live worker, waits for their answers, and
builds the families from this process's replica (``_metricsexport``).

Threads: ``send`` runs in the sender thread, in a scraping thread, and at exit (before every
atexit handler: the dict's channel closes in one); ``close`` at exit or from ``shutdown()``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ipchannel import _fork, _platform
from ipchannel._errors import ChannelClosed, ChannelError, RemoteError
from ipchannel._shareddict.dict import SharedDict, membership_of, wait_for
from ipchannel.contrib._metricsexport import families
from ipchannel.contrib._metricsops import FORGET, PUSH, SCRAPE
from ipchannel.contrib._metricsvalue import Pending

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric

__all__ = ["Sharing"]

_LOGGER = logging.getLogger("ipchannel")


class Sharing:
    """One process's side: open the dict, send what changed, run a scrape (see the module)."""

    def __init__(
        self,
        name: str,
        open_dict: Callable[[], SharedDict],
        interval: float,
        scrape_timeout: float,
        collect_here: Callable[[], Iterable[Metric]],
    ) -> None:
        self.name, self._open_dict = name, open_dict
        self._interval, self._scrape_timeout = interval, scrape_timeout
        self.pending = Pending(self._changed)
        self._dict: SharedDict | None = None
        self._collect_here = collect_here  # the registry's own collect: this process's Info and Enum
        self._reset()
        _fork.register(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # opening the dict (and closing it)
        self._send_lock = threading.Lock()  # one send at a time: each says the scrape it answers
        self._start_lock = threading.Lock()  # starting the sender
        self._stop = threading.Event()
        self._closed = False  # shutdown() or exit: the dict is not opened again
        self._thread: threading.Thread | None = None
        self._answered = 0  # the scrape the last send answered
        self._number = 0  # of this process's last push
        self._unanswered: list[Any] | None = None  # a push that got no answer: it may have been applied
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
                if self._closed:
                    raise ChannelClosed(self.name, "SharedDict")  # after shutdown(): not again
                self._dict = self._open_dict()
                atexit.register(self.close)  # after the dict's and its channel's: at exit, runs first
            return self._dict

    def start(self) -> None:
        """Open the dict and send in the calling thread, then start the sender (``prometheus.start``).

        Only opening may raise: a send that fails is the sender's to make again.
        """
        self.shared()
        try:
            self.send()
        except ChannelError as exc:
            _LOGGER.warning("metrics %r: the first send failed (the sender tries again): %s", self.name, exc)
        self._changed()

    def _changed(self) -> None:
        """Start the sender, unless running (a value changed for the first time since the last send)."""
        if self._thread is not None:
            return
        with self._start_lock:  # not the opening lock: an inc() never waits for a dict to open
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
        joined = False  # the first send, at once, makes this worker one that scrapes wait for
        while not self._stop.is_set():
            try:
                shared = self.shared()
                if joined:
                    wait_for(shared, self._asked, self._interval)
                joined = True
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
        """Send what changed (and, for a scrape, the Info and Enum samples), answering the last scrape.

        A push whose answer did not come (the host froze past the write's timeout, or died) may
        have been applied: it goes again first, as it was, under its number (applied once).
        """
        shared = self.shared()
        with self._send_lock:
            if self._unanswered is not None:
                self._push(shared, self._unanswered)
            scrape = shared.get("scrape", 0)
            metas, changes, removed = self.pending.take()
            info_list = self._changed_infos() if infos else []
            if not (metas or changes or info_list or removed) and scrape == self._answered:
                return
            counts = [[key, counted] for key, counted, _gauge, _at in changes if counted is not None]
            gauges = [[key, gauge, at] for key, _counted, gauge, at in changes if gauge is not None]
            membership = membership_of(shared)
            worker = membership.me() if membership is not None else f"pid {os.getpid()}"
            self._number += 1
            self._push(
                shared, [worker, os.getpid(), self._number, scrape, metas, counts, gauges, info_list, removed]
            )

    def _push(self, shared: SharedDict, push: list[Any]) -> None:
        """Perform one push; keep it to send again unless the host answered (applied, or refused it)."""
        self._unanswered = push
        try:
            shared.perform(PUSH, *push)
        except (RemoteError, TypeError, ValueError) as exc:
            if not _refused(exc):  # a host that failed otherwise (exiting, say): sent again, applied once
                raise
            self._unanswered = None  # refused, and would be each time: not kept
            _LOGGER.error(  # noqa: TRY400 - the message says it all
                "metrics %r: the host refused this process's changes, which are lost: %s", self.name, exc
            )
            raise
        self._unanswered = None
        self._answered = push[3]
        for metric, _at, _kind, _text, samples in push[7]:
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
            if not wait_for(
                shared, lambda: all(_has_answered(shared, w, number) for w in waiting), self._scrape_timeout
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
            self._closed = True
        if shared is not None:
            shared.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


def _has_answered(shared: SharedDict, worker: str, number: int) -> bool:
    """Tell whether ``worker`` answered scrape ``number`` (or was forgotten meanwhile: it died)."""
    entry = shared.get("w:" + worker)
    return entry is None or entry[1] >= number


def _refused(exc: BaseException) -> bool:
    """Tell whether a push failed for what it is (this process cannot encode it, the host's check refused it).

    Such a push would fail each time; any other failure of the host (one exiting cannot start a
    thread, say) is a reason to send it again.
    """
    if isinstance(exc, RemoteError):
        return exc.type_name == "TypeError" and exc.message.startswith("metrics push:")
    return True
