"""A SharedDict's writes on their way: this process's pipeline to the host, and read-your-writes.

Each write carries (writer, number), the writer being a thread of a process (one write
in flight each), so the host can tell a write resent after a failover from a new one.
Threads of one process share round trips: a write made while ``SENDERS`` requests are
out waits in the outbox, and every write waiting there goes with the next request.
A thread that leaves by an interrupt (KeyboardInterrupt, or SystemExit from a signal
handler) hands on the writes it carries, to be sent again: the host knows those it applied.
A write returns once this process's replica has applied it (itself, from the answer,
when it is the next change; else from the stream, or a snapshot).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .._errors import ChannelError, ChannelTimeout, JournalError, RemoteError
from .._timing import Deadline
from .ops import PROTOCOL

if TYPE_CHECKING:
    from collections.abc import Callable

    from .replica import Replica

__all__ = ["SENDERS", "Writes"]

#: Requests of writes one process has out at once; more writes wait, and share the next request.
SENDERS = 2
#: Seconds between two looks at a waiting write's state: a thread interrupted after it settled or
#: handed on a write, before it woke it (``Writes._leave``), never wakes it.
_RECHECK = 0.5
#: Seconds before a write the host asked to retry goes again, doubling up to ``_RETRY_MAX``.
_RETRY_FIRST, _RETRY_MAX = 0.005, 0.1


class _Write:
    """One write of this process, from its call to its answer; ``wake`` is released to answer or to send."""

    __slots__ = ("client", "error", "generation", "number", "op", "outcome", "to_send", "wake")

    def __init__(self, op: list[Any], client: str, number: int) -> None:
        self.op, self.client, self.number = op, client, number
        self.to_send: list[_Write] | None = None  # the writes this one's thread is to send
        self.generation = 0
        self.outcome: list[Any] | None = None  # see store.Store.apply_write
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()

    def called(self) -> bool:
        """Tell whether this write was answered (or failed), or given writes to send."""
        return self.to_send is not None or self.outcome is not None or self.error is not None


class Writes:
    """The writes of one process to one SharedDict: the outbox, the requests, waiting for the replica."""

    def __init__(  # noqa: PLR0913 - made in one place, by SharedDict
        self,
        name: str,
        request: Callable[[Any, float | None], Any],
        replica: Replica,
        timeout: float | None,
        timeout_error: Callable[[Deadline, str], ChannelTimeout],
        *,
        local_apply: bool,
    ) -> None:
        self._name, self._request, self._replica, self._timeout = name, request, replica, timeout
        self._timeout_error, self._local_apply = timeout_error, local_apply
        self.after_fork()

    def after_fork(self) -> None:
        """Take a writer identity of this process (a forked child is not its parent); empty the outbox."""
        self._client = f"{os.getpid()}-{id(self):x}-{time.monotonic_ns():x}"
        self._numbers = itertools.count(1)
        self._outbox_lock = threading.Lock()
        self._outbox: list[_Write] = []
        self._senders = 0  # requests of this process's writes out now
        # the host did not wait for this process on the last batch applied (a child is not its parent)
        self.last_batch_ours = False

    def applied(self, batch: Any, member: str) -> None:
        """Note whether the host acknowledges a batch just applied without waiting for ``member`` (us).

        It says so in the batch ("x"): one process's writes alone, sent under that member name.
        Decided by the host alone, so both sides agree (the writes' own client ids do not say
        which requests the host counted: a write sent again after a host change is one too).
        """
        self.last_batch_ours = bool(member) and isinstance(batch, dict) and batch.get("x") == member

    def write(self, op: list[Any], resync: Callable[[], None]) -> Any:
        """Send one write through the host and return its result once the local replica holds it."""
        # one write in flight per thread, so (process, thread) is what the host deduplicates by
        mine = _Write(op, f"{self._client}-{threading.get_ident():x}", next(self._numbers))
        try:
            self._post(mine)
            if mine.to_send is None:
                self._wait_for_sender(mine)
            if mine.to_send is not None:
                self._request_writes(mine.to_send)
                self._leave(mine, interrupted=False)
        except BaseException as exc:  # also if _leave itself was interrupted: what it did is not redone
            self._leave(mine, interrupted=not isinstance(exc, Exception))
            raise
        if mine.error is not None:
            raise mine.error
        return self._settle(mine, resync)

    def _post(self, mine: _Write) -> None:
        """Make ``mine``'s thread a sender if fewer than ``SENDERS`` are out, else queue ``mine``."""
        with self._outbox_lock:
            if self._senders < SENDERS:
                self._senders += 1
                mine.to_send = [mine]
            else:
                self._outbox.append(mine)

    def _wait_for_sender(self, mine: _Write) -> None:
        """Wait until ``mine`` was answered, or given writes to send; give up only if still in the outbox."""
        deadline = Deadline(self._timeout)
        while not mine.called():
            remaining = deadline.remaining()
            if remaining <= 0:
                with self._outbox_lock:
                    if mine in self._outbox:  # never sent: it cannot be applied
                        self._outbox.remove(mine)
                        raise self._timeout_error(
                            deadline, "the writes of other threads of this process were still on their way"
                        )
                remaining = _RECHECK  # on its way: the sender's request has a timeout of its own
            mine.wake.acquire(timeout=min(remaining, _RECHECK))

    def _leave(self, mine: _Write, *, interrupted: bool) -> None:
        """Hand on what ``mine``'s thread carries as its call returns or raises; wake the writes it settled.

        The writes it sent that got no answer go with the next request if it was
        interrupted, else they fail. Its own write, if still queued, is taken out.
        Nothing is handed on before the last statements under the lock, where CPython
        runs no signal handler (no call, no loop): an interrupt that lands before them
        leaves the whole of it to the caller's ``except``.
        """
        with self._outbox_lock:
            batch = mine.to_send
            if batch is None:
                if mine in self._outbox:  # interrupted while it waited: never sent
                    self._outbox.remove(mine)
                return
            unanswered = [w for w in batch if w is not mine and w.outcome is None and w.error is None]
            if not interrupted:
                for write in unanswered:  # the answer was not one we can read
                    write.error = ChannelError(
                        f"shared dict {self._name!r}: the host's answer left this write out"
                    )
                unanswered = []
            waiting = unanswered + self._outbox
            self._outbox = []
            if waiting:
                waiting[0].to_send = waiting  # it sends them all, in our place
            else:
                self._senders -= 1
            mine.to_send = None
        for write in batch:
            if write is not mine and write not in unanswered:
                write.wake.release()
        if waiting:
            waiting[0].wake.release()

    def _request_writes(self, batch: list[_Write]) -> None:
        """Request ``batch``; each write gets its outcome (or the error), applied locally if next.

        A host that cannot start its term yet (nothing applied), or that can no longer answer
        (closing, handing over), answers "retry": the writes go again, the same (writer,
        number), until the timeout. One applied already is then answered "dup": never applied
        twice, never reported failed.
        """
        deadline, pause = Deadline(self._timeout), _RETRY_FIRST
        while True:
            retry = self._request_once(batch, None if self._timeout is None else deadline.remaining())
            if not retry:
                return
            batch = [write for write, _why in retry]
            if deadline.remaining() <= pause:
                why = retry[0][1]
                for write in batch:
                    write.error = self._timeout_error(deadline, f"the host asked to send it again: {why}")
                return
            time.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)

    def _request_once(self, batch: list[_Write], timeout: float | None) -> list[tuple[_Write, str]]:
        """One request for ``batch``; return the writes the host asked to send again, and why."""
        try:
            answer = self._request({"v": PROTOCOL, "w": [[w.op, w.client, w.number] for w in batch]}, timeout)
        except (TypeError, ValueError):
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
                return []
            for write in batch:  # one of them cannot be encoded, or together they are too large: alone
                self._request_writes([write])
            return []
        except Exception as exc:  # noqa: BLE001 - raised in each writer's own thread
            for write in batch:
                write.error = exc
            return []
        generation, replica, retry = answer["g"], self._replica, []
        with replica.lock:  # usually our replica is just behind these: apply them here, now
            for write, outcome in zip(batch, answer["r"], strict=True):
                if outcome[0] == "retry":  # applied nowhere: unanswered, as if not yet sent
                    retry.append((write, str(outcome[1])))
                    continue
                write.generation, write.outcome = generation, outcome
                if outcome[0] == "ok" and self._local_apply:
                    replica.apply_own(generation, write.op, write.client, write.number, outcome)
            replica.cond.notify_all()
        return retry

    def _settle(self, write: _Write, resync: Callable[[], None]) -> Any:
        """Return the result of a write the host answered, once the local replica holds it."""
        outcome = write.outcome
        assert outcome is not None
        kind = outcome[0]
        if kind == "err":
            info = outcome[1]
            raise RemoteError(self._name, info["type"], info["message"], info["traceback"], info.get("pid"))
        if kind == "journal":  # a durable dict's host could not journal it: applied nowhere
            raise JournalError(*outcome[1:])
        deadline = Deadline(self._timeout)
        replica = self._replica
        if kind == "dup":  # applied before a failover, and answered now: make sure we have it
            if not replica.wait_applied(write.client, write.number, deadline, resync):
                raise self._late(deadline)
            return outcome[1]
        position = (write.generation, outcome[2])  # else the stream brings it, and earlier ones
        if not replica.wait(lambda: (replica.gen, replica.seq) >= position, deadline):
            raise self._late(deadline)
        return outcome[1]

    def _late(self, deadline: Deadline) -> ChannelTimeout:
        return self._timeout_error(
            deadline, "the write was acknowledged but this replica did not receive it in time"
        )
