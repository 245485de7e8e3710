"""The members of a SharedDict across machines: a key beside the host's in the engine, and a lease each.

The host stores ``{"g": generation, "members": [...]}`` under the channel's ``members`` key,
only while its claim of that generation holds (one transaction or script). A member
is ``pid PID on HOST #TOKEN``; it is alive while its key ``member/TOKEN`` exists,
kept by a lease of ``ttl`` seconds (etcd) or a TTL (Redis) that the thread
``ipchannel-presence:NAME`` renews every third of it. A process frozen or cut off
from the engine past ``ttl`` counts as dead from then on, like a host: when it runs
again its lapsed name is dropped and it takes a new one, which no record names, so
it may not campaign while a member lives (``_shareddict.members``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING, TypeVar

from .. import _fork, _platform
from .._errors import ChannelError
from .._seams.record import Recorded, decode_members
from .engine import EngineUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .engine import Engine

__all__ = ["RemoteMembership"]

_LOGGER = logging.getLogger("ipchannel")
_T = TypeVar("_T")
_LEAF = "members"
_JOIN_TIMEOUT = 2.0


class RemoteMembership:
    """The ``Membership`` capability of the remote backend."""

    def __init__(self, name: str, engine: Callable[[], Engine], ttl: float) -> None:
        self._name, self._engine, self._ttl = name, engine, ttl
        self._lock = threading.Lock()
        self._pid = 0  # whose name and thread these are: a forked child makes its own
        self._me = ""
        self._left = False  # this process left (``leave``): ``me`` keeps the name, and makes no other
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ignored = ""  # why the record was last ignored (said once)
        _fork.register(self)

    def _reset_after_fork(self) -> None:
        """In a forked child: no name, no thread, a new lock (the parent's thread may have held it)."""
        self._lock = threading.Lock()
        self._pid, self._me, self._thread, self._stop = 0, "", None, threading.Event()
        self._left = False

    def me(self) -> str:
        """Return this process's name, made (its key, its thread) at the first call in a process.

        Once it left, the name it left as: a new one would be a key and a thread that nothing
        stops (whatever asks as the dict closes, on another thread, may ask after the leave).

        :raises ChannelError: the engine did not answer (the name is made at a later call).
        """
        with self._lock:
            if self._left and self._pid == os.getpid():
                return self._me
            if self._pid != os.getpid() or not self._me:
                name = self._new_name()
                self._ask(lambda engine: engine.present(self._name, _leaf(name), self._ttl, first=True))
                self._pid, self._me, self._stop = os.getpid(), name, threading.Event()
                self._thread = threading.Thread(
                    target=self._keep,
                    args=(self._stop,),
                    name=f"ipchannel-presence:{self._name}",
                    daemon=True,
                )
                self._thread.start()
            return self._me

    def _new_name(self) -> str:
        return f"pid {os.getpid()} on {socket.gethostname()} #{secrets.token_hex(6)}"

    def _keep(self, stop: threading.Event) -> None:
        """Renew this process's key every third of the ttl (``ipchannel-presence:NAME``)."""
        _platform.leave_signals_to_the_application()
        while not stop.wait(self._ttl / 3):
            with self._lock:
                me = self._me
            try:
                if self._engine().present(self._name, _leaf(me), self._ttl, first=False):
                    continue
            except EngineUnavailable as exc:
                _LOGGER.debug("channel %r: cannot renew this member's key: %s", self._name, exc)
                continue
            with self._lock:  # lapsed: others may have counted us dead; a new name, in no record
                if stop.is_set() or self._me != me or self._left:
                    return
                self._me = self._new_name()
            _LOGGER.warning(
                "shared dict %r: this process's member key lapsed (frozen or cut off from %s for over"
                " %.1f s); it resyncs, and may host only once no member is left",
                self._name,
                "the engine",
                self._ttl,
            )
            try:
                self._engine().present(self._name, _leaf(self._me), self._ttl, first=True)
            except EngineUnavailable as exc:
                _LOGGER.debug("channel %r: cannot make this member's key: %s", self._name, exc)

    def _ask(self, call: Callable[[Engine], _T]) -> _T:
        """Run ``call`` on the engine; a ChannelError if it does not answer (the callers' one error)."""
        try:
            return call(self._engine())
        except EngineUnavailable as exc:
            raise ChannelError(f"channel {self._name!r}: the coordinator did not answer: {exc}") from exc

    def record(self, generation: int, members: Iterable[str]) -> None:
        value = json.dumps({"g": generation, "host": self.me(), "members": sorted(members)}).encode()
        if not self._ask(lambda engine: engine.put_if_claimed(self._name, generation, _LEAF, value)):
            raise ChannelError(f"channel {self._name!r}: no longer the host of generation {generation}")

    def members(self) -> Recorded | None:
        value = self._ask(lambda engine: engine.get(self._name, _LEAF))
        if value is None:
            return None
        try:
            return decode_members(value)
        except ValueError as exc:
            if str(exc) != self._ignored:  # once: every election try reads it
                self._ignored = str(exc)
                _LOGGER.warning("ignoring the members record of %r in the engine: %s", self._name, exc)
            return None

    def alive(self, member: str) -> bool:
        return self._ask(lambda engine: engine.get(self._name, _leaf(member))) is not None

    def leave(self, member: str, alone_in: int | None) -> None:
        """Delete ``member``'s key; a host alone in its term records an empty set first.

        Only the host of a generation may write its record, so a member cannot take its own
        name out; the empty set is refused unless this process's claim of ``alone_in`` holds.
        """
        with self._lock:
            if member != self._me or self._pid != os.getpid() or self._left:
                return
            self._left, stop, thread = True, self._stop, self._thread
            self._thread = None
        stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        if alone_in is not None:
            try:
                self.record(alone_in, [])
            except ChannelError as exc:  # as before: the next to open reports every write lost
                _LOGGER.debug("channel %r: cannot record that its last member closed: %s", self._name, exc)
        self._ask(lambda engine: engine.absent(self._name, _leaf(member)))


def _leaf(member: str) -> str:
    """Return the key of ``member``'s lease: its token."""
    return f"member/{member.rpartition('#')[2]}"
