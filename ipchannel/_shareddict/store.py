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

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _hooks, _platform
from .._errors import ChannelClosed, RemoteError
from .._requests.host import Deferred
from .ops import PROTOCOL, apply, prepare

if TYPE_CHECKING:
    from collections.abc import Callable

    from .members import Members
    from .replica import Replica

__all__ = ["Store"]

_LOGGER = logging.getLogger("ipchannel")
_TERM_WAIT = 2.0  # how long a new host waits for its replica to catch up before starting anyway
_JOIN_TIMEOUT = 2.0


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
        publish: Callable[[Any], None],
        members: Members,
    ) -> None:
        self._name, self._replica = name, replica
        self._generation, self._subscribed, self._publish = generation, subscribed, publish
        self._members = members
        self.after_fork()

    def after_fork(self) -> None:
        """Empty, with new locks and no committer thread (also in a forked child: none is ours)."""
        self._store_lock = threading.Lock()
        self._term = 0
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
                self._start_term()
                return {
                    "v": PROTOCOL,
                    "g": self._term,
                    "s": self._seq,
                    "items": [[key, value] for key, value in self._store.items()],
                    # a copy: the answer is encoded after the lock is released, and must not hold
                    # a later write's entry without that write's data
                    "applied": {client: list(last) for client, last in self._applied.items()},
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
        except Exception as exc:  # noqa: BLE001 - every writer of the batch gets it (the host is leaving)
            for item in batch:
                item.answer.fail(exc)
            return
        for item, answer in zip(batch, answers, strict=True):
            item.answer.resolve(answer)

    def commit(self, batch: list[_Queued]) -> list[dict[str, Any]]:
        """Apply a batch of requests to the store, publish its changes as one message; return the answers."""
        changes: list[list[Any]] = []
        with self._store_lock:
            self._start_term()
            generation = self._term
            first = self._seq + 1
            answers = [
                {"g": generation, "r": [self._apply_write(write, changes) for write in item.writes]}
                for item in batch
            ]
            last = self._seq
        if changes:
            # outside the store lock: snapshots never wait for a fan-out (a replica skips what it holds)
            published = {"v": PROTOCOL, "g": generation, "s": first, "ch": changes}
            self._publish_split(published)
            if _hooks.pause is not None:
                _hooks.pause("shareddict.published", published)
            # Acknowledged once every member applied it. A batch of one process's writes does not
            # wait for that process: its writes return only once its own replica has them.
            writers = {item.member for item in batch}
            self._members.wait(generation, last, exempt=writers.pop() if len(writers) == 1 else "")
        return answers

    def _publish_split(self, message: dict[str, Any]) -> None:
        """Publish a batch of changes; one too large for a message goes as several, in order."""
        try:
            self._publish(message)
        except ValueError:  # over max_message_size (each change alone fits: no larger than its request)
            changes = message["ch"]
            if len(changes) == 1:
                raise
            half = len(changes) // 2
            self._publish_split({**message, "ch": changes[:half]})
            self._publish_split({**message, "s": message["s"] + half, "ch": changes[half:]})

    def _apply_write(self, write: list[Any], changes: list[list[Any]]) -> list[Any]:
        """Apply one write to the store (call with _store_lock); return its outcome for the writer.

        ``["ok", result, seq]`` (``["ok", result, seq, op]`` if its operation's prepare step
        rewrote the op), ``["dup", result]`` (applied before, maybe in an earlier term) or
        ``["err", info]`` (the operation refused it; nothing changed).
        """
        try:
            op, client, number = write
            last = self._applied.get(client)
            if last is not None and number <= last[0]:  # sent again after a failover: already applied
                return ["dup", last[1] if number == last[0] else None]  # older: its writer gave up on it
            rewritten = prepare(op)  # stamped here, once: every replica applies the op as rewritten
            if rewritten is not None:
                op = rewritten
            result = apply(self._store, op)
        except Exception as exc:  # noqa: BLE001 - the writer gets it as RemoteError; the batch goes on
            return ["err", json.loads(RemoteError.encode(exc))]
        self._seq += 1
        self._applied[client] = [number, result, self._seq]
        changes.append([op, client, number])  # no result: every replica gets it by applying op
        if rewritten is not None:
            return ["ok", result, self._seq, op]  # the writer applies this op, not the one it sent
        return ["ok", result, self._seq]

    def _start_term(self) -> None:
        """On the first request of a new term: start from the replica, once it has caught up."""
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
        self._store, self._applied = self._replica.snapshot()
        self._term, self._seq = generation, 0
        self._members.start_term(generation)
        _LOGGER.info(
            "shared dict %r: host term %d starts with %d keys", self._name, generation, len(self._store)
        )

    def close(self) -> None:
        """Stop the committer thread and wait for it (the dict closes)."""
        with self._queue_lock:
            self._closed = True
            committer = self._committer
            self._queue_cond.notify_all()
        if committer is not None and committer is not threading.current_thread():
            committer.join(_JOIN_TIMEOUT)
