"""Who holds every acknowledged write, and who may therefore become host (the election restriction).

The promise: an acknowledged write is lost only if every process that held it has died.

- Each replica confirms the position it applied (generation, sequence) after each batch
  it took (CONFIRM frames, ``_requests.confirm``).
- The host's members are the processes known to hold every acknowledged write: a
  replica joins once it confirmed a position at or past every acknowledged one; at
  the start of a term, the previous term's recorded members that are alive stay.
- The host acknowledges a batch once every member confirmed it (``wait``). A member
  that has not within ``max_lag`` seconds, or whose subscription ended, leaves; the
  set is recorded where elections are decided (``Membership``) before any write is
  acknowledged without it. A member that left is cut off and rejoins by itself.
- A process outside the recorded set may not campaign (nor stand by) while a member
  may be alive (``may_campaign``): a replica cut off while stopped wakes up stale and
  must not host from what it has, even if the host died meanwhile. Once every member
  is dead, it may, and says what is lost (ERROR).

Threads: ``subscribed``, ``confirmed`` and ``gone`` run on the host's handler threads, ``wait`` on the
thread that committed the batch, ``may_campaign`` wherever an election is tried.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _hooks
from .._errors import ChannelClosed, ChannelError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._seams.base import Membership
    from .._seams.record import Recorded

__all__ = ["Members"]

_LOGGER = logging.getLogger("ipchannel")
#: Seconds between two tries to record out a member cut off, while the record cannot be written.
_RECORD_AGAIN = 0.5


@dataclass
class _Member:
    position: int  # the highest it confirmed in this term


class Members:
    """The host's set of members (while hosting), and the question every process asks before campaigning."""

    def __init__(
        self,
        name: str,
        membership: Membership | None,
        max_lag: float,
        serving: Callable[[], int | None],
        position: Callable[[], tuple[int, int]],
    ) -> None:
        """Keep track for ``name``; ``serving()`` is the generation this process may serve (None: not now)."""
        self._name, self.membership, self._max_lag = name, membership, max_lag
        self._serving, self._position = serving, position
        self.durable = False  # a journal holds every acknowledged write (set by SharedDict)
        # this process closed its dict (``leave``): it records nothing more, and takes no new name;
        # kept in a forked child, whose copy of the dict is closed too
        self._left, self._left_as = False, ""
        self.after_fork()

    def after_fork(self) -> None:
        """Not hosting, nothing said (also in a forked child: the parent's term is not ours)."""
        self._cond = threading.Condition()
        self._term: int | None = None  # the host term the set is of
        self._members: dict[str, _Member] = {}  # the others: this process holds what it acknowledges
        # each process's subscription: what cuts off the connection it last named itself on, until
        # that one ends; its older connections' late frames and ends change nothing (``gone``)
        self._subscriptions: dict[str, Callable[[], None]] = {}
        self._acknowledged = 0  # the highest position ``wait`` let be acknowledged in the term
        self._told_lost: object = None  # the record whose loss was last reported (``may_campaign``)
        self._record_failing = False  # recording a member out failed, said at WARNING (``wait``)

    # -- the host ----------------------------------------------------------------------------------

    def start_term(self, generation: int) -> None:
        """Begin a term of ours: the previous term's members that are alive stay members."""
        membership = self.membership
        if membership is None:
            return
        if self._left:  # closing: the next host starts the term
            raise ChannelClosed(self._name, "SharedDict")
        me = membership.me()
        recorded = membership.members()
        # The previous host is not waited for: this process won the election because it is gone
        # (or fenced off; leaving a member out is always safe, only who may campaign shrinks).
        earlier = [] if recorded is None else [m for m in recorded.members if m != recorded.host]
        alive = [m for m in earlier if m != me and membership.alive(m)]
        with self._cond:
            self._record(alive, generation)
            self._term, self._acknowledged = generation, 0
            # -1: nothing confirmed in this term yet. They hold every write acknowledged so far, not
            # the ones the previous host applied and never acknowledged, which this term answers
            # "dup": those wait until each confirmed a position of this term (``wait``; it resyncs).
            self._members = {member: _Member(-1) for member in alive}

    def subscribed(self, member: str, cut: Callable[[], None]) -> None:
        """Take a connection that names ``member`` (a handler thread), and that ``cut`` ends: it is on it now.

        Opened after its earlier one ended, whose handler thread may take that end later (``gone``).
        """
        with self._cond:
            self._subscriptions[member] = cut

    def confirmed(self, member: str, generation: int, position: int, cut: Callable[[], None] | None) -> None:
        """Take a replica's confirmation (a handler thread); it joins if it holds every acknowledged write.

        ``cut`` ends the connection it confirmed on; None when it said so by request, after a resync.
        """
        if _hooks.pause is not None:
            _hooks.pause("members.confirmed", member)
        with self._cond:
            if cut is not None:  # none known: the connection it last named itself on ended first
                self._subscriptions.setdefault(member, cut)
            elif member not in self._subscriptions:  # by request, and each connection it named has ended
                return  # a live process's new connection takes it in (its first CONFIRM, or this after ACK)
            if not self._in_term() or self._left:
                return
            if generation != self._term or self.membership is None or member == self.membership.me():
                return
            known = self._members.get(member)
            if known is None:
                if position < self._acknowledged:
                    return  # it lacks an acknowledged write: it joins once it confirms past it
                # in, then recorded: joining only shrinks who may campaign; if the record
                # fails, the host waits for it all the same, and tries again at the next change
                self._members[member] = _Member(position)
                try:
                    self._record(self._members)
                except (ChannelError, OSError) as exc:
                    _LOGGER.warning(
                        "shared dict %r: cannot record %s as a member: %s", self._name, member, exc
                    )
            else:
                known.position = max(known.position, position)
            self._cond.notify_all()

    def gone(self, member: str, cut: Callable[[], None]) -> None:
        """Let a member whose subscription ended leave (a handler thread): it takes no more writes.

        ``cut``: the ended connection's. The end of a connection the process no longer
        subscribes on (it named itself on a newer one: ``subscribed``) changes nothing.
        """
        if _hooks.pause is not None:
            _hooks.pause("members.gone", member)
        with self._cond:
            self._cond.notify_all()  # a handover too: ``wait`` gives up
            if self._subscriptions.get(member) != cut:  # bound methods: equal, not the same object
                _LOGGER.debug("shared dict %r: %s stays: an old connection of it ended", self._name, member)
                return
            del self._subscriptions[member]
            if member in self._members and self._in_term() and not self._left:
                # recorded out first, only then out of what writes wait for; if the record
                # fails, writes go on waiting for it (``wait`` tries again after max_lag)
                try:
                    self._record([name for name in self._members if name != member])
                except (ChannelError, OSError) as exc:
                    _LOGGER.warning("shared dict %r: cannot record %s out: %s", self._name, member, exc)
                else:
                    del self._members[member]
                    _LOGGER.debug(
                        "shared dict %r: %s is out of the members: its subscription ended", self._name, member
                    )

    def wait(self, generation: int, position: int, exempt: str = "") -> None:
        """Return once every member confirmed ``position`` of ``generation`` or left (recorded first).

        A member has ``max_lag`` seconds from now: then it is cut off, and recorded out.
        ``exempt``: the one process whose writes these all are; it is not waited for, as it
        acknowledges its own writes only once its replica has them (``Writes``).
        """
        deadline = time.monotonic() + self._max_lag
        with self._cond:
            while self._term == generation:
                if self._handing_over():  # not ours to acknowledge: the writers ask the next host
                    raise ChannelClosed(self._name, "SharedDict")
                behind = [
                    name
                    for name, member in self._members.items()
                    if member.position < position and name != exempt
                ]
                if not behind:
                    self._acknowledged = max(self._acknowledged, position)
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    try:
                        self._leave_behind(behind, position)
                    except ChannelClosed:
                        raise
                    except (ChannelError, OSError) as exc:
                        # Applied and published: failing the batch would tell its writers it was not,
                        # and a caller retrying an incr would apply it twice. It stays unanswered
                        # (their timeout: ChannelTimeout, which says it may have been applied) until
                        # the record can be written, or the host hands over. Said once an outage.
                        level = logging.DEBUG if self._record_failing else logging.WARNING
                        self._record_failing = True
                        _LOGGER.log(
                            level, "shared dict %r: cannot record %s out (%s): change %d:%d waits",
                            self._name, ", ".join(behind), exc, generation, position,
                        )  # fmt: skip
                        deadline = time.monotonic() + min(self._max_lag, _RECORD_AGAIN)
                    continue
                self._cond.wait(remaining)
            if self.membership is not None and self._term is not None:
                # the term ended while this batch waited, and another began (this process was
                # elected again): its members were not asked for it; the writers ask again
                raise ChannelClosed(self._name, "SharedDict")

    def _leave_behind(self, behind: list[str], position: int) -> None:
        """Record out the members that did not confirm ``position`` in time; cut them off (with the lock)."""
        self._record([name for name in self._members if name not in behind])  # first: it may fail
        _LOGGER.warning(
            "shared dict %r: %s did not confirm change %d:%d within %.1f s; acknowledged without it,"
            " it resyncs when it runs again",
            self._name,
            ", ".join(f"member {name}" for name in behind),
            self._term,
            position,
            self._max_lag,
        )
        for name in behind:
            del self._members[name]
            cut = self._subscriptions.get(name)  # its subscription now
            if cut is not None:
                cut()

    def _handing_over(self) -> bool:
        return self._serving() is None

    def _in_term(self) -> bool:
        """Tell whether this process serves the term its set is of (not an old one, elected again)."""
        return self._term is not None and self._term == self._serving()

    def _record(self, others: Iterable[str], generation: int | None = None) -> None:
        """Write ``others`` and this process where elections are decided (with the lock); raise if not.

        Only while this process may serve that term: a host that is handing over must not
        overwrite its successor's set, nor a host elected again its predecessor's with its
        old term's (locally nothing else refuses it); ChannelClosed: its writes are not
        acknowledged, their writers ask again.
        """
        if self._handing_over() or self._left or (generation is None and not self._in_term()):
            raise ChannelClosed(self._name, "SharedDict")
        term = self._term if generation is None else generation
        if self.membership is not None and term is not None:
            self.membership.record(term, [self.membership.me(), *others])
            self._record_failing = False

    # -- every process ---------------------------------------------------------------------------

    def my_name(self) -> str:
        """Return this process's member name; "" if there is none now (the engine does not answer).

        Once the dict left (``leave``), the name it left as: asking the membership would make a
        new one, and across machines a key and a presence thread that nothing would stop. A
        change that reaches the subscriber between the leave and its stop asks, and confirms.
        """
        membership = self.membership
        if membership is None:
            return ""
        if self._left:
            return self._left_as
        try:
            return membership.me()
        except ChannelError as exc:
            _LOGGER.debug("shared dict %r: no member name for now: %s", self._name, exc)
            return ""

    def may_campaign(self) -> bool:
        """Tell whether this process may become host: a member, or no member may be alive (the gate).

        False while the record cannot be read (the engine does not answer): asked again later.
        """
        membership = self.membership
        if membership is None:
            return True
        if self._left:  # closing: it hands hosting over, it does not take it
            return False
        try:
            recorded = membership.members()
            # an empty set: its last host closed with no other member (``Membership.leave``)
            if not recorded or not recorded.members or membership.me() in recorded.members:
                return True
            if any(membership.alive(member) for member in recorded.members):
                return False
        except ChannelError as exc:
            _LOGGER.debug("shared dict %r: cannot tell who may host: %s", self._name, exc)
            return False
        self._report_loss(recorded)
        return True

    def _report_loss(self, recorded: Recorded) -> None:
        """Say, once per record, that every member is gone and what this process takes over with."""
        if self._told_lost == recorded:
            return
        self._told_lost = recorded
        position, members = self._position(), ", ".join(recorded.members)
        if self.durable:  # the journal holds every acknowledged write: the next host replays it
            _LOGGER.info(
                "shared dict %r: every process that held it is gone (%s); the next host replays its journal",
                self._name,
                members,
            )
            return
        if position == (0, 0):  # it holds nothing: every write acknowledged is gone
            _LOGGER.warning(
                "shared dict %r: every process that held it is gone (exited, or, across machines, its"
                " lease lapsed: %s); this one starts empty",
                self._name,
                members,
            )
            return
        _LOGGER.error(
            "shared dict %r: every process that held its acknowledged writes of host term %d is gone"
            " (exited, or, across machines, its lease lapsed: %s); this one takes over with what it"
            " holds (%d:%d): writes it lacks are lost",
            self._name,
            recorded.generation,
            members,
            *position,
        )

    def leave(self) -> None:
        """Take this process, which closes its dict, out of the members (``Membership.leave``).

        Else a process alive but no longer sharing would keep the others out of elections.
        From then on it records nothing (as host, until it hands over, it answers no write):
        a record of its in-memory set would bring back members that left meanwhile. A host
        alone in its term says so: whoever opens the dict later must not report its writes
        lost, as if it had died.
        """
        with self._cond:
            if self._left:
                return
            self._left = True  # from now on nobody joins: alone stays alone
            alone_in = self._term if self._in_term() and not self._members else None
        if self.membership is not None:
            self._left_as = self.membership.me()
            self.membership.leave(self._left_as, alone_in)
