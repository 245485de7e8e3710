"""Keeping this process's replica in step with the host: opening, resyncing, after a fork.

Opening subscribes first, then takes a snapshot, so every change after the snapshot comes
on the stream. A forked child stays out of elections until it has synced again (hosting
from its fork-time copy while another process holds newer writes would make everyone
resync to that copy).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, JournalError
from . import ops
from .durability import check_same

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.port import Port
    from .._requests.channel import RequestChannel
    from .replica import Replica
    from .store import Store

__all__ = ["Sync"]

_LOGGER = logging.getLogger("ipchannel")
_SURVIVOR_GRACE = 0.5  # with a dead host's record, how long to give survivors to elect one of them
_RETRY_PAUSE = 0.05  # between two background resyncs of a forked child while no host answers
_FORK_TRY = 1.0  # how long a forked child's resync waits for a host before it may host itself
_WATCH_EVERY = 0.05  # how often an opening replica looks at the host record while its snapshot waits


class Sync:
    """How one SharedDict's replica gets, and gets back, the host's state."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by SharedDict
        self,
        name: str,
        requests: RequestChannel,
        replica: Replica,
        port: Port,
        timeout: float | None,
        confirmation: Callable[[], tuple[str, int, int] | None],
        store: Store,
    ) -> None:
        self._name, self._requests, self._replica, self._port = name, requests, replica, port
        self._confirmation, self._store = confirmation, store
        self._timeout = timeout
        self._may_host_after_fork = True  # what a forked child's channel goes back to once synced

    def open(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe, then take the first snapshot."""
        # the host cut this replica off and lacks what it missed (on ``ipchannel-subscriber:NAME``)
        self._requests.on_missed(lambda _count: self._replica.on_missed(self.resync))
        self._join(on_change)
        self._first_sync()

    def _join(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        """Subscribe to the live host; if there is none and none comes, we are alone: host ourselves."""
        # No record: nobody hosts now, and a host that just closed is replaced within milliseconds.
        # A dead host's record: survivors, if any, elect one of themselves within a tick or two.
        # A live host's: connecting to it is immediate.
        recorded = self._port.recorded_host()  # the coordinator's view
        if recorded == "none":
            # Nobody hosts: waiting for a host that may come (it used to be 50 ms of election
            # backoff, most of an open) protects nothing the members gate does not already. A
            # process that may hold writes others lack is a member, and while one may be alive
            # nobody else campaigns (``members.may_campaign``); without one, whoever wins is as good.
            self._requests.channel.may_host = True
        wait = {"dead": _SURVIVOR_GRACE}.get(recorded, self._timeout)
        try:
            self._requests.subscribe(on_change, timeout=wait)
        except ChannelTimeout:
            _LOGGER.info("shared dict %r: no host within %.2f s; opening as the first", self._name, wait)
            self._requests.channel.may_host = True
            self._requests.subscribe(on_change, timeout=self._timeout)

    def _first_sync(self) -> None:
        """Take the first snapshot; if its host went away and nobody took over in time, we are alone.

        While it waits, ``ipchannel-open:NAME`` watches the host record: once no host is
        recorded alive for ``_SURVIVOR_GRACE`` (survivors elect one of themselves within
        milliseconds), there are none, say every other process is exiting, and this process
        takes part in elections, so the snapshot comes from its own term. A process that is
        not a member still cannot host while a member may be alive (``members.may_campaign``).
        """
        done = threading.Event()
        watcher = threading.Thread(
            target=self._host_if_alone, args=(done,), name=f"ipchannel-open:{self._name}", daemon=True
        )
        watcher.start()
        try:
            self.resync(check=True)
        except ChannelTimeout:
            _LOGGER.info(
                "shared dict %r: the host left while this replica opened; opening as the first", self._name
            )
            self._requests.channel.may_host = True
            self.resync(check=True)
        finally:
            done.set()
            watcher.join()

    def _host_if_alone(self, done: threading.Event) -> None:
        _platform.leave_signals_to_the_application()
        gone_since: float | None = None
        while not done.wait(_WATCH_EVERY):
            if self._port.recorded_host() == "maybe alive":
                gone_since = None
                continue
            gone_since = time.monotonic() if gone_since is None else gone_since
            if time.monotonic() - gone_since >= _SURVIVOR_GRACE:
                _LOGGER.info(
                    "shared dict %r: the host left while this replica opened, and nobody took over within"
                    " %.2f s; opening as the first",
                    self._name,
                    _SURVIVOR_GRACE,
                )
                self._requests.channel.may_host = True
                return

    def resync(self, most: float | None = None, *, check: bool = False) -> None:
        """Replace the replica by the host's snapshot (``Replica.resync``); ``most``: a shorter wait.

        ``check``: first make sure the host journals the dict as this process would (on opening).
        """
        wait = self._timeout if most is None else most
        request = self._requests.request

        def snapshot() -> Any:
            answer = request({"v": ops.PROTOCOL, "op": "snapshot"}, timeout=wait)
            if isinstance(answer, dict) and "journal" in answer:  # the host cannot replay the journal
                raise JournalError(*answer["journal"])
            if check and isinstance(answer, dict):
                check_same(self._name, answer.get("d"), self._store.durability())
            return answer

        self._replica.resync(snapshot)
        confirmable = self._confirmation()
        if confirmable is None:  # another resync began meanwhile: it says so itself
            return
        member, generation, position = confirmable
        try:  # a member from now on, not only from the next change (``members``)
            request(
                {"v": ops.PROTOCOL, "op": "synced", "m": member, "g": generation, "s": position}, timeout=wait
            )
        except ChannelError as exc:  # it joins at its next confirmation instead
            _LOGGER.debug("shared dict %r: could not say it synced: %s", self._name, exc)

    def after_fork(self) -> None:
        """In a forked child: out of elections until synced again."""
        channel = self._requests.channel
        self._may_host_after_fork, channel.may_host = channel.may_host, False

    def resume_after_fork(self) -> None:
        """In a forked child, once everything is reset: sync the replica again in the background."""
        if not self._replica.closed:
            threading.Thread(
                target=self._resync_after_fork, name=f"ipchannel-resync:{self._name}", daemon=True
            ).start()

    def _resync_after_fork(self) -> None:
        _platform.leave_signals_to_the_application()
        replica, channel = self._replica, self._requests.channel
        while not replica.closed:
            try:
                self.resync(_FORK_TRY)
            except ChannelClosed:
                return
            except ChannelTimeout:
                # Survivors holding the data elect one of themselves within milliseconds; a whole
                # try without a host means there are none: this replica is what there is.
                channel.may_host = self._may_host_after_fork
                with replica.lock:
                    replica.cond.wait_for(lambda: replica.closed, _RETRY_PAUSE)
                continue
            except Exception:
                _LOGGER.exception("shared dict %r: cannot sync after fork", self._name)
                return
            channel.may_host = self._may_host_after_fork
            return
