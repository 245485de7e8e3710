"""SharedDict: a dict every process that opens it shares, with a full local replica in each.

Built on ``RequestChannel``. Writes go to the host, which applies them in one
order, numbers them (generation, sequence) and publishes each change before it
answers; every process applies the changes to its own replica, so reads never
touch the socket. The host's store *is* the state, and every replica holds a
copy of it::

    writer --request(ops)--> host: apply the batch, seq += 1 each, publish it, answer each
    every replica <--batch (gen, first seq, changes)-- host, applied strictly in order

- Group commit. Writes that reach the host while a batch is being applied wait
  and form the next batch: one fan-out per batch, not per write. Threads of one
  process share requests too (at most ``_SENDERS`` out at once).

- Failover. A new host waits until its own subscription has moved to its
  generation (everything the old host sent it has been applied), then starts
  from its replica. The old host published every change before acknowledging
  it, so every acknowledged write is in that replica.
- Late joiners and gaps. A replica that opens, sees a gap in the sequence or a
  new generation fetches a snapshot from the host and goes on from there.
- At-least-once, made exactly-once. Each write carries (writer, number), the
  writer being a thread of a process (one write in flight each); the host
  remembers the last one of each writer, in the replicated state, so a write
  resent after a failover is answered, not applied twice. (That table keeps an
  entry per writing thread ever seen: small, unless threads come and go by the
  million.)
- Read your writes. A write returns once this process's replica has applied it
  (itself, from the answer, when it is the next change; else from the stream).

Keys and values go through the channel's codec (JSON by default: keys may be
str, int, float, bool or None; a change is a list, so an int key stays an int).

Threads: the replica is updated on ``ipchannel-subscriber:NAME``; the host
applies a batch in the handler thread that found nobody applying, or, while
writes keep coming, on ``ipchannel-commit:NAME``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import _fork, _hooks, _platform
from .._codecs import is_builtin, resolve_codec
from .._core.channel import port_of
from .._errors import ChannelClosed, ChannelError, ChannelTimeout, RemoteError
from .._requests.channel import RequestChannel
from .._requests.host import Deferred
from .._timing import Deadline, validate_timeout

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from .._codecs import Codec
    from .._options import Options

__all__ = ["SharedDict"]

_LOGGER = logging.getLogger("ipchannel")
_MISSING = object()
_TERM_WAIT = 2.0  # how long a new host waits for its replica to catch up before starting anyway
_ALONE_GRACE = 0.05  # with no host record, how long to wait for a host before becoming the first
_SURVIVOR_GRACE = 0.5  # with a dead host's record, how long to give survivors to elect one of them
_DUP_GRACE = 0.05  # how long a write answered as applied before a failover waits for the stream
_RETRY_PAUSE = 0.05  # between two snapshots that still lack such a write
_JOIN_TIMEOUT = 2.0
#: Requests of writes one process has out at once; more writes wait, and share the next request.
_SENDERS = 2
#: The format of requests and published batches; peers must agree (all run the same version).
_PROTOCOL = 2


class SharedDict(MutableMapping[Any, Any]):
    """A dict shared by every process that opens it: local reads, writes through the host.

    ::

        counters = SharedDict("counters")
        counters.incr("hits")          # atomic across processes; returns the new value
        counters["mode"] = "fast"      # every process sees it (reads are local)
        counters.get("mode")

    :param name: the channel name (same rule as ``Channel``).
    :param codec: as for ``RequestChannel``.
    :param runtime_dir: as for ``Channel``.
    :param authkey: as for ``Channel``.
    :param timeout: seconds a write (and opening) may wait for a host; None waits forever.
    :param coordinator, listen, advertise, ttl, ssl_context: as for ``Channel``: across machines.
    :raises TypeError: (from a write) a key or value the codec would not bring back equal.
    :raises ChannelClosed: any read or write after ``close()``.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, as Channel has
        self,
        name: str,
        *,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        authkey: bytes | None = None,
        timeout: float | None = 5.0,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        _options: Options | None = None,
    ) -> None:
        self._timeout = validate_timeout(timeout)
        self._codec = resolve_codec(codec)
        self._local_apply = is_builtin(self._codec)  # a write applies itself: only if it comes back equal
        # a custom codec may have neither: then nothing is checked in the caller
        self._check_key: Callable[[Any], None] | None = getattr(self._codec, "check_key", None)
        self._check_value: Callable[[Any], None] | None = getattr(self._codec, "check_value", None)
        self._new_identity()
        self._reset_state()
        # Out of elections until the replica holds the state: a newcomer elected with an empty
        # replica while others hold the data would make everyone resync to nothing.
        self._channel = RequestChannel(
            name,
            self._on_request,
            codec=self._codec,
            runtime_dir=runtime_dir,
            authkey=authkey,
            may_host=False,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            _options=_options,
            _kind="SharedDict",  # errors name the class the user holds
        )
        self._port = port_of(self._channel.channel)
        try:
            self._join(name)
            self._first_sync(name)
        except BaseException:
            self._channel.close()
            raise
        self._channel.channel.may_host = True
        _fork.register(self)

    def _new_identity(self) -> None:
        """Who this process's writes come from: fresh per process, so a forked child is not its parent."""
        self._client = f"{os.getpid()}-{id(self):x}-{time.monotonic_ns():x}"
        self._numbers = itertools.count(1)

    def _reset_state(self) -> None:
        """Make the replica and the host's side empty, with new locks (none may be held by a lost thread)."""
        # the replica
        self._cond = threading.Condition()
        self._data: dict[Any, Any] = {}
        self._gen = self._seq = 0
        self._applied: dict[str, list[Any]] = {}  # client -> [number, result, seq] of its last write
        self._synced = self._closed = False
        self._pending: list[dict[str, Any]] = []
        self._resync_lock = threading.Lock()
        # this process's writes on their way (one request at a time, for every thread)
        self._outbox_lock = threading.Lock()
        self._outbox: list[_Write] = []
        self._senders = 0  # requests of this process's writes out now
        # the host's side (used only while this process hosts)
        self._store_lock = threading.Lock()
        self._term = 0
        self._store: dict[Any, Any] = {}
        self._store_applied: dict[str, list[Any]] = {}
        self._store_seq = 0
        self._queue_lock = threading.Lock()
        self._queue_cond = threading.Condition(self._queue_lock)
        self._queue: list[_Queued] = []  # requests waiting for the next batch
        self._leading = False  # a thread is applying a batch, and will see to what is queued
        self._commit_due = False  # the committer thread has the queue
        self._committer: threading.Thread | None = None

    def _join(self, name: str) -> None:
        """Subscribe to the live host; if there is none and none comes, we are alone: host ourselves."""
        # No record: nobody hosts now, and a host that just closed is replaced within milliseconds.
        # A dead host's record: survivors, if any, elect one of themselves within a tick or two.
        # A live host's: connecting to it is immediate.
        recorded = self._port.recorded_host()  # the coordinator's view
        wait = {"none": _ALONE_GRACE, "dead": _SURVIVOR_GRACE}.get(recorded, self._timeout)
        try:
            self._channel.subscribe(self._on_change, timeout=wait)
        except ChannelTimeout:
            _LOGGER.info("shared dict %r: no host within %.2f s; opening as the first", name, wait)
            self._channel.channel.may_host = True
            self._channel.subscribe(self._on_change, timeout=self._timeout)

    def _first_sync(self, name: str) -> None:
        """Take the first snapshot; if its host went away and nobody took over in time, we are alone."""
        try:
            self._resync()
        except ChannelTimeout:
            # Survivors holding the data elect one of themselves within milliseconds; a whole
            # timeout without a host means there are none (say, every other process is exiting).
            _LOGGER.info(
                "shared dict %r: the host left while this replica opened; opening as the first", name
            )
            self._channel.channel.may_host = True
            self._resync()

    # -- reads: the local replica ----------------------------------------------------------

    # Lock-free: the replica is a plain dict, replaced whole on a resync and changed in place by one
    # thread, and a single dict operation is atomic under the GIL. Once closed, it is a _ClosedReplica,
    # which raises ChannelClosed: reads need no check of their own.

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._data))

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` from the local replica, or ``default``."""
        return self._data.get(key, default)

    def copy(self) -> dict[Any, Any]:
        """Return a plain dict copy of the local replica."""
        with self._cond:
            return self._data.copy()

    @property
    def position(self) -> tuple[int, int]:
        """(generation, sequence) of the last change the local replica applied."""
        with self._cond:
            return self._gen, self._seq

    # -- writes: through the host ---------------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self._write(["set", self._key(key), self._value(value)])

    def __delitem__(self, key: Any) -> None:
        if not self._write(["del", self._key(key)]):
            raise KeyError(key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one change (one write, one sequence number)."""
        items = list(other.items() if hasattr(other, "items") else other) + list(kwargs.items())
        self._write(["update", [[self._key(key), self._value(value)] for key, value in items]])

    def incr(self, key: Any, amount: float = 1) -> Any:
        """Add ``amount`` to ``key`` (missing counts as 0) atomically across processes; return the result."""
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"amount must be an int or a float, not {type(amount).__name__}")
        return self._write(["incr", self._key(key), amount])

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Set ``key`` to ``default`` unless present, atomically; return its value."""
        return self._write(["setdefault", self._key(key), self._value(default)])

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        found, value = self._write(["pop", self._key(key)])
        if found:
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def clear(self) -> None:
        """Remove every key, in one change."""
        self._write(["clear"])

    def _key(self, key: Any) -> Any:
        """Refuse, here and not in the host, a key the codec would not bring back as an equal key."""
        if self._check_key is not None:
            self._check_key(key)
        return key

    def _value(self, value: Any) -> Any:
        """Refuse a value the codec would hand the other processes changed."""
        if self._check_value is not None:
            self._check_value(value)
        return value

    def _write(self, op: list[Any]) -> Any:
        """Send one write through the host and return its result once the local replica holds it.

        Threads of this process share round trips: a write made while ``_SENDERS``
        requests are out waits in ``_outbox``, and every write waiting there goes
        with the next request.
        """
        # one write in flight per thread, so (process, thread) is what the host deduplicates by
        mine = _Write(op, f"{self._client}-{threading.get_ident():x}", next(self._numbers))
        with self._outbox_lock:
            if self._senders < _SENDERS:
                self._senders += 1
                mine.to_send = [mine]
            else:
                self._outbox.append(mine)
        if mine.to_send is None:
            self._wait_for_sender(mine)
        if mine.to_send is not None:
            self._send(mine, mine.to_send)
        if mine.error is not None:
            raise mine.error
        return self._settle(mine)

    def _wait_for_sender(self, mine: _Write) -> None:
        """Wait until ``mine`` was answered, or given writes to send; give up only if still in the outbox."""
        deadline = Deadline(self._timeout)
        if mine.wake.acquire(timeout=-1 if self._timeout is None else self._timeout):
            return
        with self._outbox_lock:
            if mine in self._outbox:  # never sent: it cannot be applied
                self._outbox.remove(mine)
                raise self._port.timeout_error(
                    deadline, "the writes of other threads of this process were still on their way"
                )
        mine.wake.acquire()  # on its way: the sender's request has a timeout of its own

    def _send(self, mine: _Write, batch: list[_Write]) -> None:
        """Send ``batch`` in one request and settle it; wake its writes; hand what waits to one of them."""
        try:
            self._request_writes(batch)
        finally:
            for write in batch:
                if write.outcome is None and write.error is None:  # the answer was not one we can read
                    write.error = ChannelError(
                        f"shared dict {self._channel.channel.name!r}: the host's answer left this write out"
                    )
            with self._outbox_lock:
                waiting, self._outbox = self._outbox, []
                if waiting:
                    waiting[0].to_send = waiting  # it sends them all, in our place
                else:
                    self._senders -= 1
            for write in batch:
                if write is not mine:
                    write.wake.release()
            if waiting:
                waiting[0].wake.release()

    def _request_writes(self, batch: list[_Write]) -> None:
        """One request for ``batch``; each write gets its outcome (or the error), applied locally if next."""
        try:
            answer = self._channel.request(
                {"v": _PROTOCOL, "w": [[w.op, w.client, w.number] for w in batch]}, timeout=self._timeout
            )
        except (TypeError, ValueError):
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
                return
            for write in batch:  # one of them cannot be encoded, or together they are too large: alone
                self._request_writes([write])
            return
        except BaseException as exc:  # noqa: BLE001 - raised in each writer's own thread
            for write in batch:
                write.error = exc
            return
        generation = answer["g"]
        with self._cond:  # usually our replica is just behind these: apply them here, now
            for write, outcome in zip(batch, answer["r"], strict=True):
                write.generation, write.outcome = generation, outcome
                if (
                    outcome[0] == "ok"
                    and self._local_apply
                    and self._synced
                    and (generation, outcome[2]) == (self._gen, self._seq + 1)
                ):
                    _apply(self._data, outcome[3] if outcome[3:] else write.op)  # as the host applied it
                    self._applied[write.client] = [write.number, outcome[1], outcome[2]]
                    self._seq = outcome[2]
            self._cond.notify_all()

    def _settle(self, write: _Write) -> Any:
        """Return the result of a write the host answered, once the local replica holds it."""
        outcome = write.outcome
        assert outcome is not None
        kind = outcome[0]
        if kind == "err":
            info = outcome[1]
            name = self._channel.channel.name
            raise RemoteError(name, info["type"], info["message"], info["traceback"], info.get("pid"))
        if kind == "dup":  # applied before a failover, and answered now: make sure we have it
            self._wait_applied(write.client, write.number)
            return outcome[1]
        self._wait_for((write.generation, outcome[2]))  # else the stream brings it, and earlier ones
        return outcome[1]

    def _wait_applied(self, client: str, number: int) -> None:
        """Return once the local replica holds write ``number`` of ``client`` (from the stream or a snapshot).

        The host recognised it as applied in an earlier term. The stream usually
        still brings it; if not within ``_DUP_GRACE``, a snapshot of the current
        host has it (the host said so), and we take snapshots until one does.
        """
        deadline = Deadline(self._timeout)

        def held() -> bool:
            return bool(self._applied.get(client, (0,))[0] >= number)

        self._wait(held, deadline, _DUP_GRACE)
        while not held():
            self._resync()
            self._wait(held, deadline, _RETRY_PAUSE)

    def _wait_for(self, position: tuple[int, int]) -> None:
        """Return once the local replica has applied the change at ``position`` (read your writes)."""
        deadline = Deadline(self._timeout)
        if not self._wait(lambda: (self._gen, self._seq) >= position, deadline):
            raise self._late(deadline)

    def _wait(self, condition: Callable[[], bool], deadline: Deadline, most: float | None = None) -> bool:
        """Wait (at most ``most`` seconds) for ``condition``; raise at the deadline or if closed."""
        limit = deadline.remaining() if most is None else min(most, deadline.remaining())
        with self._cond:
            met = self._cond.wait_for(
                lambda: self._closed or condition(), None if math.isinf(limit) else limit
            )
            if self._closed:
                raise self._closed_error()
        if not met and deadline.remaining() <= 0:
            raise self._late(deadline)
        return bool(met)

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(self._channel.channel.name, "SharedDict")

    def _late(self, deadline: Deadline) -> ChannelTimeout:
        return self._port.timeout_error(
            deadline, "the write was acknowledged but this replica did not receive it in time"
        )

    # -- the replica: the change stream ---------------------------------------------------------

    def _on_change(self, batch: dict[str, Any]) -> None:
        """Apply one published batch of changes (runs on ``ipchannel-subscriber:NAME``)."""
        if not isinstance(batch, dict) or batch.get("v") != _PROTOCOL:
            _LOGGER.error(
                "shared dict %r: dropping a change this process cannot read (protocol %r, ours %d):"
                " every process must run the same ipchannel version",
                self._channel.channel.name,
                batch.get("v") if isinstance(batch, dict) else None,
                _PROTOCOL,
            )
            return
        with self._cond:
            if self._closed:
                return
            if self._synced and self._apply_in_order(batch):
                return
            self._pending.append(batch)  # applied after the snapshot, if it is newer than that
        if not self._resync_lock.locked():  # else the resync under way picks it up
            try:
                self._resync()  # a gap, a new host, or a failed resync: start again from a snapshot
            except ChannelClosed:
                return  # closed meanwhile: this replica has nothing left to catch up with
            except ChannelTimeout as exc:  # no host for now (say, every other process is exiting)
                _LOGGER.warning(
                    "shared dict %r: cannot catch up with the host for now (%s); the next change tries again",
                    self._channel.channel.name,
                    exc,
                )

    def _apply_in_order(self, batch: dict[str, Any]) -> bool:
        """Apply a published batch if it comes next; True if applied or already held (call with _cond).

        A batch that starts inside what the replica holds (a snapshot taken while it
        was being published) is applied from the first change the replica lacks.
        """
        gen, first, changes = batch["g"], batch["s"], batch["ch"]
        if gen != self._gen or first > self._seq + 1:
            return False  # a new host, or a gap: resync
        data, applied = self._data, self._applied
        for seq, (op, client, number, result) in enumerate(changes, first):
            if seq > self._seq:
                _apply(data, op)
                applied[client] = [number, result, seq]
        self._seq = max(self._seq, first + len(changes) - 1)
        self._cond.notify_all()
        return True

    def _resync(self) -> None:
        """Replace the replica by the host's snapshot, then apply what arrived meanwhile, in order."""
        with self._resync_lock:
            for _attempt in range(3):
                with self._cond:
                    self._synced = False
                if _hooks.pause is not None:
                    _hooks.pause("shareddict.resyncing", self._channel.channel.name)
                snapshot = self._channel.request({"v": _PROTOCOL, "op": "snapshot"}, timeout=self._timeout)
                _check_protocol(snapshot, self._channel.channel.name)
                with self._cond:
                    if self._closed:
                        raise self._closed_error()
                    self._data = dict(snapshot["items"])
                    self._applied = snapshot["applied"]
                    self._gen, self._seq = snapshot["g"], snapshot["s"]
                    pending, self._pending = self._pending, []
                    if all(self._apply_in_order(change) for change in pending):
                        self._synced = True
                        self._cond.notify_all()
                        return
            raise ChannelError(
                f"shared dict {self._channel.channel.name!r}: could not catch up with the host"
            )

    # -- the host ----------------------------------------------------------------------------------

    def _on_request(self, message: dict[str, Any]) -> Any:
        """Apply writes or answer a snapshot (runs in the host, in a handler thread)."""
        if message.get("v") != _PROTOCOL:
            raise ValueError(
                f"this host speaks shared dict protocol {_PROTOCOL}, the request {message.get('v')!r}:"
                " every process must run the same ipchannel version"
            )
        if message.get("op") == "snapshot":
            with self._store_lock:
                self._start_term()
                return {
                    "v": _PROTOCOL,
                    "g": self._term,
                    "s": self._store_seq,
                    "items": [[key, value] for key, value in self._store.items()],
                    "applied": self._store_applied,
                }
        return self._group_commit(message["w"])

    def _group_commit(self, writes: list[list[Any]]) -> Deferred:
        """Queue a request's writes for the next batch; lead that batch if nobody does. Answered later.

        The handler thread that finds nobody applying leads one batch (a lone writer
        waits for no other thread); writes arriving meanwhile only queue, and their
        handler threads go back to reading. What is queued after that batch is the
        committer thread's (``ipchannel-commit:NAME``), which goes on while writes keep coming.
        """
        mine = _Queued(writes)
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
                target=self._run_committer, name=f"ipchannel-commit:{self._channel.channel.name}", daemon=True
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
                _LOGGER.exception("shared dict %r: the committer thread failed", self._channel.channel.name)
            finally:
                with self._queue_lock:
                    if not self._queue:
                        self._commit_due = self._leading = False

    def _commit_queued(self) -> None:
        """Apply every queued request as one batch, publish its changes as one message, and answer each."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            answers = self._commit(batch)
        except Exception as exc:  # noqa: BLE001 - every writer of the batch gets it (the host is leaving)
            for item in batch:
                item.answer.fail(exc)
            return
        for item, answer in zip(batch, answers, strict=True):
            item.answer.resolve(answer)

    def _commit(self, batch: list[_Queued]) -> list[dict[str, Any]]:
        """Apply a batch of requests to the store, publish its changes as one message; return the answers."""
        changes: list[list[Any]] = []
        with self._store_lock:
            self._start_term()
            generation, first = self._term, self._store_seq + 1
            answers = [
                {"g": generation, "r": [self._apply_write(write, changes) for write in item.writes]}
                for item in batch
            ]
        if changes:
            # outside the store lock: snapshots never wait for a fan-out (a replica skips what it holds)
            published = {"v": _PROTOCOL, "g": generation, "s": first, "ch": changes}
            self._channel.publish(published, timeout=self._timeout)
            if _hooks.pause is not None:
                _hooks.pause("shareddict.published", published)
        return answers

    def _apply_write(self, write: list[Any], changes: list[list[Any]]) -> list[Any]:
        """Apply one write to the store (call with _store_lock); return its outcome for the writer.

        ``["ok", result, seq]`` (``["ok", result, seq, op]`` if ``_PREPARE`` rewrote the op),
        ``["dup", result]`` (applied before, maybe in an earlier term) or ``["err", info]``
        (``_apply`` refused it; nothing changed).
        """
        op, client, number = write
        last = self._store_applied.get(client)
        if last is not None and number <= last[0]:  # sent again after a failover: already applied
            return ["dup", last[1] if number == last[0] else None]  # older: its writer gave up on it
        try:
            prepare = _PREPARE.get(op[0])
            if prepare is not None:  # stamped here, once: every replica applies the op as rewritten
                op = prepare(op)
            result = _apply(self._store, op)
        except Exception as exc:  # noqa: BLE001 - the writer gets it as RemoteError
            return ["err", json.loads(RemoteError.encode(exc))]
        self._store_seq += 1
        self._store_applied[client] = [number, result, self._store_seq]
        changes.append([op, client, number, result])
        if prepare is not None:
            return ["ok", result, self._store_seq, op]  # the writer applies this op, not the one it sent
        return ["ok", result, self._store_seq]

    def _start_term(self) -> None:
        """On the first request of a new term: start from the replica, once it has caught up."""
        generation = self._channel.channel.generation
        if generation is None:  # stopped hosting while this request was on its way: answered by nobody
            raise self._closed_error()
        if self._term == generation:
            return
        deadline = time.monotonic() + _TERM_WAIT
        while self._channel.subscribed_generation != generation and time.monotonic() < deadline:
            time.sleep(0.001)  # our subscriber is still reading what the old host sent
        if self._channel.subscribed_generation != generation:
            _LOGGER.warning(
                "shared dict %r: starting host term %d before the replica caught up",
                self._channel.channel.name,
                generation,
            )
        with self._cond:
            self._store = dict(self._data)
            self._store_applied = {client: list(last) for client, last in self._applied.items()}
        self._term, self._store_seq = generation, 0
        name, keys = self._channel.channel.name, len(self._store)
        _LOGGER.info("shared dict %r: host term %d starts with %d keys", name, generation, keys)

    # -- lifetime ------------------------------------------------------------------------------------

    @property
    def channel(self) -> RequestChannel:
        """The underlying RequestChannel."""
        return self._channel

    def close(self) -> None:
        """Stop sharing, handing hosting over; from then on reads and writes raise ChannelClosed."""
        self._channel.close()  # first: while it hands over, the host's side still reads the replica
        with self._cond:
            self._closed = True
            self._data = _ClosedReplica(self._channel.channel.name)
            self._cond.notify_all()  # a write waiting for its change raises ChannelClosed
        with self._queue_lock:
            committer = self._committer
            self._queue_cond.notify_all()
        if committer is not None and committer is not threading.current_thread():
            committer.join(_JOIN_TIMEOUT)

    def __enter__(self) -> SharedDict:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._cond:
            keys = "closed" if self._closed else f"{len(self._data)} keys"
            return f"<SharedDict {self._channel.channel.name!r} {keys} at {self._gen}:{self._seq}>"

    def _reset_after_fork(self) -> None:
        """In a forked child: a writer of its own, fresh locks, and a replica that syncs again.

        Until the background resync is done, reads see the replica as it was at fork time.
        """
        data, position, closed = self._data, (self._gen, self._seq), self._closed
        self._new_identity()
        self._reset_state()
        self._data, (self._gen, self._seq) = data, position
        self._closed = closed

    def _resume_after_fork(self) -> None:
        """In a forked child, once everything is reset: sync the replica again in the background."""
        if not self._closed:
            threading.Thread(
                target=self._resync_after_fork,
                name=f"ipchannel-resync:{self._channel.channel.name}",
                daemon=True,
            ).start()

    def _resync_after_fork(self) -> None:
        _platform.leave_signals_to_the_application()
        while not self._closed:
            try:
                self._resync()
            except ChannelClosed:
                return
            except ChannelTimeout:  # no host yet: keep waiting, one timeout (and a pause) at a time
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, _RETRY_PAUSE)
                continue
            except Exception:
                _LOGGER.exception("shared dict %r: cannot sync after fork", self._channel.channel.name)
                return
            return


class _Write:
    """One write of this process, from its call to its answer; ``wake`` is released to answer or to send."""

    __slots__ = ("client", "error", "generation", "number", "op", "outcome", "to_send", "wake")

    def __init__(self, op: list[Any], client: str, number: int) -> None:
        self.op, self.client, self.number = op, client, number
        self.to_send: list[_Write] | None = None  # the writes this one's thread is to send
        self.generation = 0
        self.outcome: list[Any] | None = None  # see SharedDict._apply_write
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class _Queued:
    """The writes of one request, waiting in the host for a batch, and the answer it promised."""

    __slots__ = ("answer", "writes")

    def __init__(self, writes: list[list[Any]]) -> None:
        self.writes = writes
        self.answer = Deferred()


class _ClosedReplica(dict[Any, Any]):
    """What a closed SharedDict reads from: every access raises ChannelClosed."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def _closed(self, *_args: object) -> Any:
        raise ChannelClosed(self._name, "SharedDict")

    __getitem__ = __contains__ = __len__ = __iter__ = get = copy = _closed


def _check_protocol(answer: Any, name: str) -> None:
    """Raise ChannelError unless the host's answer is in our protocol (it runs another version)."""
    if not isinstance(answer, dict) or answer.get("v") != _PROTOCOL:
        version = answer.get("v") if isinstance(answer, dict) else None
        raise ChannelError(
            f"shared dict {name!r}: the host speaks shared dict protocol {version!r}, this process"
            f" {_PROTOCOL}: every process must run the same ipchannel version"
        )


def _pop(data: dict[Any, Any], key: Any) -> list[Any]:
    value = data.pop(key, _MISSING)
    return [False, None] if value is _MISSING else [True, value]


def _incr(data: dict[Any, Any], key: Any, amount: float) -> Any:
    data[key] = data.get(key, 0) + amount
    return data[key]


_OPERATIONS: dict[str, Callable[..., Any]] = {
    "set": lambda data, key, value: data.__setitem__(key, value),
    "del": lambda data, key: data.pop(key, _MISSING) is not _MISSING,
    "pop": _pop,
    "update": lambda data, items: data.update((key, value) for key, value in items),
    "incr": _incr,
    "setdefault": lambda data, key, default: data.setdefault(key, default),
    "clear": lambda data: data.clear(),
}


#: Host-side steps by operation name: rewrite an op before the host applies and publishes it (say, a
#: relative timeout into an absolute expiry on the host's clock). Only the host runs them, so the op
#: every replica applies, in order, is the rewritten one, and deterministic.
_PREPARE: dict[str, Callable[[list[Any]], list[Any]]] = {}


def _register_operation(
    name: str, operation: Callable[..., Any], prepare: Callable[[list[Any]], list[Any]] | None = None
) -> None:
    """Add an operation beside the built-in ones (the private extension point of ``ipchannel.contrib``).

    ``operation(data, *args)`` must be deterministic and must not raise once the host accepted the
    op: every replica runs it on its own copy. Every process of the dict must register it.
    """
    if _OPERATIONS.get(name, operation) is not operation:
        raise ValueError(f"shared dict operation {name!r} is already registered")
    _OPERATIONS[name] = operation
    if prepare is not None:
        _PREPARE[name] = prepare


def _apply(data: dict[Any, Any], op: list[Any]) -> Any:
    """Apply one change to ``data`` and return its result (the same in the host and every replica)."""
    try:
        operation = _OPERATIONS[op[0]]
    except KeyError:
        raise ValueError(f"unknown shared dict operation {op[0]!r}") from None
    return operation(data, *op[1:])
