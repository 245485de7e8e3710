"""A SharedDict's local replica: the dict every read comes from, kept in step with the host's changes.

Changes arrive as published batches ``{"g": generation, "s": first sequence, "ch": changes}``,
applied strictly in order on ``ipchannel-subscriber:NAME``. A replica that opens, sees a
gap in the sequence or a new generation fetches a snapshot from the host and goes on
from there (``resync``), applying what arrived meanwhile. Reads are lock-free: the dict
is replaced whole on a resync and changed in place by one thread, and a single dict
operation is atomic under the GIL; the facade reads the dict the replica ``show``-s it.
Once closed, that is a ``ClosedReplica``, which raises ChannelClosed.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from .. import _hooks
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, JournalError
from .ops import PROTOCOL, apply, check_protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._timing import Deadline

__all__ = ["ClosedReplica", "Replica"]

_LOGGER = logging.getLogger("ipchannel")
_DUP_GRACE = 0.05  # how long a write answered as applied before a failover waits for the stream
_RETRY_PAUSE = 0.05  # between two snapshots that still lack a write the host said it applied


class Replica:
    """The local copy, its position (generation, sequence), and each writer's last write applied."""

    def __init__(self, name: str, show: Callable[[dict[Any, Any]], None]) -> None:
        self._name, self._show = name, show
        self.reset()

    def reset(self, data: dict[Any, Any] | None = None, position: tuple[int, int] = (0, 0)) -> None:
        """Start from ``data`` at ``position`` (not synced), with new locks (none held by a lost thread).

        Callers hold ``lock`` with ``with`` and use ``cond`` only to wait and notify: the
        C lock's ``__enter__``/``__exit__`` take and give it with no Python frame around them,
        where ``Condition``'s are Python functions, and an exception a signal handler raises
        there (SIGTERM turned into ``sys.exit`` in the main thread, a KeyboardInterrupt) left
        the lock held for good: every other thread, and so the process's exit, hung on it.
        """
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._data: dict[Any, Any] = {} if data is None else data
        self._show(self._data)
        self.gen, self.seq = position
        self.applied: dict[str, list[Any]] = {}  # client -> [number, result, seq] of its last write
        self.synced = self.closed = False
        self._pending: list[dict[str, Any]] = []
        self._resync_lock = threading.Lock()

    def copy(self) -> dict[Any, Any]:
        with self.lock:
            return self._data.copy()

    def snapshot(self) -> tuple[dict[Any, Any], dict[str, list[Any]], tuple[int, int]]:
        """Return copies of the data and of the writers' last writes, and the position they are at.

        A new host term starts from them (or from a durable dict's journal, if that is ahead).
        """
        with self.lock:
            applied = {client: list(last) for client, last in self.applied.items()}
            return dict(self._data), applied, (self.gen, self.seq)

    def confirmable(self) -> tuple[int, int] | None:
        """Return the position to confirm to the host (``members``): applied, in step; None mid-resync."""
        with self.lock:
            return (self.gen, self.seq) if self.synced and not self.closed else None

    # -- the change stream -----------------------------------------------------------------------

    def on_change(self, batch: dict[str, Any], resync: Callable[[], None]) -> None:
        """Apply one published batch of changes (on ``ipchannel-subscriber:NAME``); resync on a gap."""
        if not isinstance(batch, dict) or batch.get("v") != PROTOCOL:
            _LOGGER.error(
                "shared dict %r: dropping a change this process cannot read (protocol %r, ours %d):"
                " every process must run the same ipchannel version",
                self._name,
                batch.get("v") if isinstance(batch, dict) else None,
                PROTOCOL,
            )
            return
        with self.lock:
            if self.closed:
                return
            if self.synced and self.apply_in_order(batch):
                return
            self._pending.append(batch)  # applied after the snapshot, if it is newer than that
        self._catch_up(resync)

    def on_missed(self, resync: Callable[[], None]) -> None:
        """Resync from a snapshot: the stream lost changes for good (the host cut this process off)."""
        with self.lock:
            if self.closed:
                return
            self.synced = False
        self._catch_up(resync)

    def _catch_up(self, resync: Callable[[], None]) -> None:
        if not self._resync_lock.locked():  # else the resync under way picks it up
            try:
                resync()  # a gap, a new host, or a failed resync: start again from a snapshot
            except ChannelClosed:
                return  # closed meanwhile: this replica has nothing left to catch up with
            except (ChannelTimeout, JournalError) as exc:  # no host for now, or it cannot replay the journal
                _LOGGER.warning(
                    "shared dict %r: cannot catch up with the host for now (%s); the next change tries again",
                    self._name,
                    exc,
                )

    def apply_in_order(self, batch: dict[str, Any]) -> bool:
        """Apply a published batch if it comes next; True if applied or already held (call holding ``lock``).

        A batch that starts inside what the replica holds (a snapshot taken while it
        was being published) is applied from the first change the replica lacks.
        """
        gen, first, changes = batch["g"], batch["s"], batch["ch"]
        if gen != self.gen or first > self.seq + 1:
            return False  # a new host, or a gap: resync
        data, applied = self._data, self.applied
        for seq, (op, client, number) in enumerate(changes, first):
            if seq > self.seq:
                applied[client] = [
                    number,
                    apply(data, op),
                    seq,
                ]  # the result the host got: same op, same data
        self.seq = max(self.seq, first + len(changes) - 1)
        self.cond.notify_all()
        return True

    def take(self, batch: dict[str, Any]) -> bool:
        """In the host, as it fans ``batch`` out: apply it here if it comes next; True if applied.

        Its objects are the host store's own: taken only if every argument is immutable (a
        reader here must not change the host's state through a value); else, or if this replica
        is not in step, the batch comes on the subscription as to every other replica.
        """
        with self.lock:
            if self.closed or not self.synced or (batch["g"], batch["s"]) != (self.gen, self.seq + 1):
                return False
            if not all(_immutable(op) for op, _client, _number in batch["ch"]):
                return False
            return self.apply_in_order(batch)

    def resync(self, request_snapshot: Callable[[], Any]) -> None:
        """Replace the replica by the host's snapshot, then apply what arrived meanwhile, in order."""
        with self._resync_lock:
            for _attempt in range(3):
                with self.lock:
                    self.synced = False
                if _hooks.pause is not None:
                    _hooks.pause("shareddict.resyncing", self._name)
                snapshot = request_snapshot()
                check_protocol(snapshot, self._name)
                with self.lock:
                    if self.closed:
                        raise ChannelClosed(self._name, "SharedDict")
                    self._data = dict(snapshot["items"])
                    self._show(self._data)
                    self.applied = snapshot["applied"]
                    self.gen, self.seq = snapshot["g"], snapshot["s"]
                    pending, self._pending = self._pending, []
                    if all(self.apply_in_order(change) for change in pending):
                        self.synced = True
                        self.cond.notify_all()
                        return
            raise ChannelError(f"shared dict {self._name!r}: could not catch up with the host")

    # -- this process's own writes -----------------------------------------------------------------

    def apply_own(self, generation: int, op: list[Any], client: str, number: int, outcome: list[Any]) -> None:
        """Apply this process's write from the host's answer if it is the next change (call holding ``lock``).

        Usually the replica is just behind it: then it need not wait for the stream.
        """
        if self.synced and (generation, outcome[2]) == (self.gen, self.seq + 1):
            apply(self._data, outcome[3] if outcome[3:] else op)  # as the host applied it
            self.applied[client] = [number, outcome[1], outcome[2]]
            self.seq = outcome[2]

    def holds(self, client: str, number: int) -> bool:
        """Tell whether write ``number`` of ``client`` (or a later one) is applied here."""
        return bool(self.applied.get(client, (0,))[0] >= number)

    def wait(self, condition: Callable[[], bool], deadline: Deadline, most: float | None = None) -> bool:
        """Wait (at most ``most`` seconds) for ``condition``; raise ChannelClosed if closed meanwhile."""
        limit = deadline.remaining() if most is None else min(most, deadline.remaining())
        with self.lock:
            met = self.cond.wait_for(lambda: self.closed or condition(), None if math.isinf(limit) else limit)
            if self.closed:
                raise ChannelClosed(self._name, "SharedDict")
        return bool(met)

    def wait_applied(self, client: str, number: int, deadline: Deadline, resync: Callable[[], None]) -> bool:
        """Wait until write ``number`` of ``client`` is here: from the stream, else from snapshots.

        The host recognised it as applied in an earlier term. The stream usually still
        brings it within ``_DUP_GRACE``; if not, a snapshot of the current host has it (the host
        said so), and we take snapshots until one does. False at the deadline.
        """
        self.wait(lambda: self.holds(client, number), deadline, _DUP_GRACE)
        while not self.holds(client, number):
            if deadline.remaining() <= 0:
                return False
            resync()
            self.wait(lambda: self.holds(client, number), deadline, _RETRY_PAUSE)
        return True

    def close(self) -> None:
        """From now on every read raises ChannelClosed, and so does a write waiting for its change."""
        with self.lock:
            self.closed = True
            self._data = ClosedReplica(self._name)
            self._show(self._data)
            self.cond.notify_all()

    def after_fork(self) -> None:
        """In a forked child: the data as it was at fork time, not synced, fresh locks."""
        closed = self.closed
        self.reset(self._data, (self.gen, self.seq))
        self.closed = closed


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def _immutable(op: list[Any]) -> bool:
    """Tell whether every argument of ``op`` is a str, number, bool, None or bytes (shareable as is)."""
    return all(type(argument) in _SCALARS for argument in op[1:])


class ClosedReplica(dict[Any, Any]):
    """What a closed SharedDict reads from: every access raises ChannelClosed."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def _closed(self, *_args: object) -> Any:
        raise ChannelClosed(self._name, "SharedDict")

    __getitem__ = __contains__ = __len__ = __iter__ = get = copy = _closed
