"""A SharedDict's host side: the store, group commit, and each new term's start from the replica.

Runs in the host only, for the request channel's ``on_request``. Writes that reach the
host while a batch is being applied wait and form the next batch: one fan-out per batch,
not per write. Each batch is applied in order, numbered (generation, sequence), published
as one message, and only then answered: once every member applied it (``members``), so
an acknowledged write is lost only if every process that held it died. The host remembers
each writer's last write (in the replicated state), so a write resent after a failover is
answered, not applied twice.

A new host term starts from this process's replica once its subscription has moved to
the new generation (everything the old host sent it is applied).

Threads: a batch is applied in the handler thread that found nobody applying, or, while
writes keep coming, on ``ipchannel-commit:NAME``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _hooks, _platform
from .._errors import ChannelClosed, ChannelError, JournalError
from .._requests.host import Deferred
from . import history
from .ops import PROTOCOL

if TYPE_CHECKING:
    from collections.abc import Callable

    from .journal import Journal
    from .members import Members
    from .replica import Replica

__all__ = ["Store"]

_LOGGER = logging.getLogger("ipchannel")
_TERM_WAIT = 2.0  # how long a new host waits for its replica to catch up before starting anyway
_JOIN_TIMEOUT = 2.0
#: What a write refused by a host that could not start its term from the journal is told, beside why.
_NOT_STARTED = (
    "; the host could not start its term, so it applied nothing: a write sent again after the"
    " previous host ended may have been applied by that host"
)


class _Queued:
    """The writes of one request, waiting in the host for a batch, and the answer it promised."""

    __slots__ = ("answer", "member", "writes")

    def __init__(self, writes: list[list[Any]], member: str = "") -> None:
        self.writes, self.member = writes, member  # member: the writing process's name (``members``)
        self.answer = Deferred()


class Store:
    """The state as the host holds it, and the batches that change it (used only while hosting)."""

    def __init__(  # noqa: PLR0913, PLR0917 - made in one place, by SharedDict
        self,
        name: str,
        replica: Replica,
        generation: Callable[[], int | None],
        subscribed: Callable[[], int | None],
        publish: Callable[[Any, Callable[[], bool]], None],
        members: Members,
        journal: Journal | None,
    ) -> None:
        self._name, self._replica = name, replica
        self._generation, self._subscribed, self._publish = generation, subscribed, publish
        self._members, self._journal = members, journal
        self.after_fork()

    def after_fork(self) -> None:
        """Empty, with new locks and no committer thread (also in a forked child: none is ours).

        A journal's descriptors in a forked child are the parent's: closed here, never unlocked.
        """
        if self._journal is not None:
            self._journal.after_fork()
        self._store_lock = threading.Lock()
        self._term = 0
        self._retrying = ""  # why writes were last asked to retry (said at WARNING once)
        self._store: dict[Any, Any] = {}
        self._applied: dict[str, list[Any]] = {}
        self._seq = 0
        self._queue_lock = threading.Lock()
        self._queue_cond = threading.Condition(self._queue_lock)
        self._queue: list[_Queued] = []  # requests waiting for the next batch
        self._leading = False  # a thread is applying a batch, and will see to what is queued
        self._commit_due = False  # the committer thread has the queue
        self._closed = False
        self._committer: threading.Thread | None = None

    def on_request(self, message: dict[str, Any]) -> Any:
        """Apply writes or answer a snapshot (runs in the host, in a handler thread)."""
        if message.get("v") != PROTOCOL:
            raise ValueError(
                f"this host speaks shared dict protocol {PROTOCOL}, the request {message.get('v')!r}:"
                " every process must run the same ipchannel version"
            )
        if message.get("op") == "synced":  # a replica applied a snapshot: it may join (``members``)
            with self._store_lock:
                self._start_term()
            self._members.confirmed(str(message["m"]), int(message["g"]), int(message["s"]), None)
            return {"v": PROTOCOL}
        if message.get("op") == "snapshot":
            with self._store_lock:
                try:
                    self._start_term()
                except JournalError as exc:  # raised in the replica that asked, as itself
                    return {"v": PROTOCOL, "journal": _refusal(exc)[1:]}
                return {
                    "v": PROTOCOL,
                    "g": self._term,
                    "s": self._seq,
                    "items": [[key, value] for key, value in self._store.items()],
                    # a copy: the answer is encoded after the lock is released, and must not hold
                    # a later write's entry without that write's data
                    "applied": {client: list(last) for client, last in self._applied.items()},
                    "d": self.durability(),
                }
        writes = message.get("w")
        if not isinstance(writes, list):  # refused here, not in a batch with other processes' writes
            raise TypeError(f"a shared dict request carries a list of writes, not {type(writes).__name__}")
        return self._group_commit(writes, str(message.get("m", "")))

    def _group_commit(self, writes: list[list[Any]], member: str) -> Deferred:
        """Queue a request's writes for the next batch; lead that batch if nobody does. Answered later.

        The handler thread that finds nobody applying leads one batch (a lone writer
        waits for no other thread); writes arriving meanwhile only queue, and their
        handler threads go back to reading. What is queued after that batch is the
        committer thread's, which goes on while writes keep coming.
        """
        mine = _Queued(writes, member)
        with self._queue_lock:
            self._queue.append(mine)
            lead, self._leading = not self._leading, True
        if lead:
            self._commit_queued()
            with self._queue_lock:
                if self._queue:
                    self._hand_over_queue()
                else:
                    self._leading = False
        return mine.answer

    def _hand_over_queue(self) -> None:
        """Wake the committer thread, starting it first if needed (call with _queue_lock)."""
        self._commit_due = True
        if self._committer is None:
            self._committer = threading.Thread(
                target=self._run_committer, name=f"ipchannel-commit:{self._name}", daemon=True
            )
            self._committer.start()
        self._queue_cond.notify()

    def _run_committer(self) -> None:
        _platform.leave_signals_to_the_application()
        while True:
            with self._queue_lock:
                while not self._commit_due:
                    if self._closed:
                        return
                    self._queue_cond.wait()
            try:
                self._commit_queued()
            except Exception:
                _LOGGER.exception("shared dict %r: the committer thread failed", self._name)
            finally:
                with self._queue_lock:
                    if not self._queue:
                        self._commit_due = self._leading = False

    def _commit_queued(self) -> None:
        """Apply every queued request as one batch, publish its changes as one message, and answer each."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            answers = self.commit(batch)
        except ChannelClosed:
            # Not ours to answer any more (closing, handing over, a term that ended), maybe applied:
            # sent again, the next host (or our next term) answers "dup" if it holds it.
            answers = [
                {"g": 0, "r": [["retry", "the host is handing over"]] * len(item.writes)} for item in batch
            ]
        except Exception as exc:  # noqa: BLE001 - every writer of the batch gets it (the host is leaving)
            for item in batch:
                item.answer.fail(exc)
            return
        for item, answer in zip(batch, answers, strict=True):
            item.answer.resolve(answer)

    def commit(self, batch: list[_Queued]) -> list[dict[str, Any]]:
        """Apply a batch of requests to the store, publish its changes as one message; return the answers.

        A durable dict journals the batch's prepared writes first: if that fails, the batch
        is applied nowhere and each of its writes is refused (``["journal", ...]``). A term
        whose members cannot be recorded yet applies nothing either: ``["retry", why]``.
        """
        changes: list[list[Any]] = []
        with self._store_lock:
            refused = self._refused(batch)
            if refused is not None:
                return refused
            generation = self._term
            first = self._seq + 1
            prepared, outcomes = history.prepare([item.writes for item in batch], self._applied)
            refusal = self._journal_batch(generation, prepared)
            if _hooks.pause is not None and refusal is None and self._journal is not None and prepared:
                _hooks.pause("shareddict.journaled", [write.record() for write in prepared])
            for write in prepared:
                if refusal is not None:
                    outcome = refusal
                else:
                    self._seq, outcome = history.apply(self._store, self._applied, self._seq, write.record())
                    if outcome[0] == "ok":
                        changes.append(write.record())  # no result: every replica gets it by applying op
                        if write.rewritten:
                            outcome.append(write.op)  # the writer applies this op, not the one it sent
                outcomes[write.slot[0]][write.slot[1]] = outcome
            last = self._seq
            if changes and self._journal is not None:
                self._journal.compact_if_due(self._store, self._applied, (generation, last))
        self._acknowledge(batch, generation, (first, last), changes, outcomes)
        return [{"g": generation, "r": outcome} for outcome in outcomes]

    def _acknowledge(
        self,
        batch: list[_Queued],
        generation: int,
        span: tuple[int, int],
        changes: list[list[Any]],
        outcomes: list[list[Any]],
    ) -> None:
        """Publish a batch's changes, outside the store lock; return once every member holds them.

        A batch of one process's writes does not wait for that process (named as "x": it alone
        confirms nothing, ``Writes.applied``): its writes return once its own replica has them.
        A batch of "dup" answers waits too: a member carried into this term may lack such a write
        (applied by the previous host, never acknowledged) until it confirmed a position of it.
        """
        exempt = _lone_writer(batch)
        if changes:
            # outside the store lock: snapshots never wait for a fan-out (a replica skips what it holds)
            published = {"v": PROTOCOL, "g": generation, "s": span[0], "ch": changes, "x": exempt}
            self._publish_split(published)
            if _hooks.pause is not None:
                _hooks.pause("shareddict.published", published)
        elif not any(outcome is not None and outcome[0] == "dup" for each in outcomes for outcome in each):
            return
        self._members.wait(generation, span[1], exempt=exempt)

    def _refused(self, batch: list[_Queued]) -> list[dict[str, Any]] | None:
        """Start the term at its first batch (call with the store lock), else say how each write is refused.

        Either way nothing is applied, and the next batch tries again: a journal that cannot
        be replayed refuses (``["journal", ...]``); members that cannot be recorded yet (a full
        disk, an engine that does not answer) ask the writers to send again (``["retry", why]``),
        so that a write the previous host applied is answered "dup" once the term starts.
        """
        try:
            self._start_term()
        except JournalError as exc:
            # not applied here; but a write sent again after its host died may have been there
            outcome = _refusal(exc, _NOT_STARTED)
        except ChannelClosed:  # no longer hosting: nobody answers, and the writers ask the next host
            raise
        except (OSError, ChannelError) as exc:  # the engine's errors are ChannelErrors
            why = f"{type(exc).__name__}: {exc}"
            level = logging.DEBUG if why == self._retrying else logging.WARNING  # each retry fails alike
            _LOGGER.log(level, "shared dict %r: no host term yet (%s): writers retry", self._name, why)
            self._retrying, outcome = why, ["retry", why]
        else:
            self._retrying = ""
            return None
        return [{"g": 0, "r": [outcome] * len(item.writes)} for item in batch]

    def _journal_batch(self, generation: int, prepared: list[history.Prepared]) -> list[Any] | None:
        """Journal the prepared writes (durable dicts); return the refusal every write gets if it failed."""
        if self._journal is None or not prepared:
            return None
        try:
            self._journal.append(generation, self._seq, [write.record() for write in prepared])
        except JournalError as exc:
            _LOGGER.error("shared dict %r: %s", self._name, exc)  # noqa: TRY400 - the message says it all
            return _refusal(exc)
        return None

    def _publish_split(self, message: dict[str, Any]) -> None:
        """Publish a batch of changes; one too large for a message goes as several, in order.

        This process's replica takes it as it is fanned out, not from its own subscription
        (``Replica.take``): no frame to itself, nothing to decode.
        """
        try:
            self._publish(message, lambda: self._replica.take(message))
        except ValueError:  # over max_message_size (each change alone fits: no larger than its request)
            changes = message["ch"]
            if len(changes) == 1:
                raise
            half = len(changes) // 2
            self._publish_split({**message, "ch": changes[:half]})
            self._publish_split({**message, "s": message["s"] + half, "ch": changes[half:]})

    def _start_term(self) -> None:
        """On the first request of a new term: start from the replica, once it has caught up.

        A durable dict starts from its journal instead, unless the replica is ahead of it.
        """
        generation = self._generation()
        if generation is None:  # stopped hosting while this request was on its way: answered by nobody
            raise ChannelClosed(self._name, "SharedDict")
        if self._term == generation:
            return
        deadline = time.monotonic() + _TERM_WAIT
        while self._subscribed() != generation and time.monotonic() < deadline:
            time.sleep(0.001)  # our subscriber is still reading what the old host sent
        if self._subscribed() != generation:
            _LOGGER.warning(
                "shared dict %r: starting host term %d before the replica caught up", self._name, generation
            )
        store, applied, position = self._replica.snapshot()
        if self._journal is not None:
            self._journal.close()  # a term of ours that ended without our noticing (say, a step down)
            store, applied = self._journal.start(store, applied, position, generation)
        # the members' term first: if it cannot be recorded, the term is not ours yet, and the next
        # request tries again (taken anyway, its writes were acknowledged without waiting for anyone)
        self._members.start_term(generation)
        self._store, self._applied = store, applied
        self._term, self._seq = generation, 0
        _LOGGER.info(
            "shared dict %r: host term %d starts with %d keys", self._name, generation, len(self._store)
        )

    def end_term(self, _generation: int = 0) -> None:
        """Sync and let go of a durable dict's journal: this process stops hosting (``on_demoted``)."""
        if self._journal is not None:
            self._journal.close()

    def durability(self) -> list[str] | None:
        """Return what a snapshot tells replicas of this dict's journal: [appendfsync, directory], or None."""
        journal = self._journal
        return None if journal is None else [journal.policy, str(journal.path)]

    def close(self) -> None:
        """Stop the committer thread and wait for it (the dict closes)."""
        with self._queue_lock:
            self._closed = True
            committer = self._committer
            self._queue_cond.notify_all()
        if committer is not None and committer is not threading.current_thread():
            committer.join(_JOIN_TIMEOUT)
        self.end_term()


def _refusal(exc: JournalError, then: str = "") -> list[Any]:
    """Return how a write refused for ``exc`` is answered: the writer raises JournalError (``then`` added)."""
    return ["journal", exc.path, exc.problem + then, exc.hint, exc.errno]


def _lone_writer(batch: list[_Queued]) -> str:
    """Return the member whose requests are all of ``batch`` ("" if several, or one with no name)."""
    writers = {item.member for item in batch}
    return writers.pop() if len(writers) == 1 else ""
