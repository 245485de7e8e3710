"""SharedDict: a dict every process that opens it shares, with a full local replica in each.

Built on ``RequestChannel``. Writes go to the host, which applies them in one
order, numbers them (generation, sequence) and publishes each change before it
answers; every process applies the changes to its own replica, so reads never
touch the socket. The host's store *is* the state, and every replica holds a
copy of it::

    writer --request(op)--> host: apply, seq += 1, publish change, reply
    every replica <--change (gen, seq)-- host, applied strictly in order

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
applies writes in the handler thread of the writer's connection.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from . import _fork, _hooks, _platform
from ._codecs import is_builtin, resolve_codec
from ._errors import ChannelClosed, ChannelError, ChannelTimeout
from ._requests import RequestChannel
from ._timing import Deadline, validate_timeout

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from ._codecs import Codec

__all__ = ["SharedDict"]

_LOGGER = logging.getLogger("ipchannel")
_MISSING = object()
_TERM_WAIT = 2.0  # how long a new host waits for its replica to catch up before starting anyway
_ALONE_GRACE = 0.05  # with no host record, how long to wait for a host before becoming the first
_SURVIVOR_GRACE = 0.5  # with a dead host's record, how long to give survivors to elect one of them
_DUP_GRACE = 0.05  # how long a write answered as applied before a failover waits for the stream
_RETRY_PAUSE = 0.05  # between two snapshots that still lack such a write


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
        )
        self._channel._kind = "SharedDict"  # noqa: SLF001 - errors name the class the user holds
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
        # the host's side (used only while this process hosts)
        self._store_lock = threading.Lock()
        self._order = threading.Condition()
        self._term = 0
        self._store: dict[Any, Any] = {}
        self._store_applied: dict[str, list[Any]] = {}
        self._store_seq = self._published = 0

    def _join(self, name: str) -> None:
        """Subscribe to the live host; if there is none and none comes, we are alone: host ourselves."""
        # No record: nobody hosts now, and a host that just closed is replaced within milliseconds.
        # A dead host's record: survivors, if any, elect one of themselves within a tick or two.
        # A live host's: connecting to it is immediate.
        recorded = self._channel.channel._recorded_host()  # noqa: SLF001 - the coordinator's view
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
        # one write in flight per thread, so (process, thread) is what the host deduplicates by
        client = f"{self._client}-{threading.get_ident():x}"
        number = next(self._numbers)
        answer = self._channel.request({"op": op, "c": client, "n": number}, timeout=self._timeout)
        if answer.get("dup"):  # applied before a failover, and answered now: make sure we have it
            self._wait_applied(client, number)
            return answer["r"]
        with self._cond:  # usually our replica is just one change behind: apply it here, now
            op = answer.get("op", op)  # as the host applied it, if the host rewrote it (see _PREPARE)
            change = {"g": answer["g"], "s": answer["s"], "op": op, "c": client, "n": number}
            if (
                self._local_apply
                and self._synced
                and (answer["g"], answer["s"]) == (self._gen, self._seq + 1)
            ):
                self._apply_in_order({**change, "r": answer["r"]})
        self._wait_for((answer["g"], answer["s"]))  # else the stream brings it, and earlier ones
        return answer["r"]

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
        return self._channel.channel._timeout_error(  # noqa: SLF001 - one place words timeouts
            deadline, "the write was acknowledged but this replica did not receive it in time"
        )

    # -- the replica: the change stream ---------------------------------------------------------

    def _on_change(self, change: dict[str, Any]) -> None:
        """Apply one published change (runs on ``ipchannel-subscriber:NAME``)."""
        with self._cond:
            if self._closed:
                return
            if self._synced and self._apply_in_order(change):
                return
            self._pending.append(change)  # applied after the snapshot, if it is newer than that
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

    def _apply_in_order(self, change: dict[str, Any]) -> bool:
        """Apply ``change`` if it is the next one; True if applied or already seen (call with _cond)."""
        gen, seq = change["g"], change["s"]
        if gen == self._gen and seq <= self._seq:
            return True  # a replay of what we have
        if gen != self._gen or seq != self._seq + 1:
            return False
        _apply(self._data, change["op"])
        self._applied[change["c"]] = [change["n"], change["r"], seq]
        self._seq = seq
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
                snapshot = self._channel.request({"op": "snapshot"}, timeout=self._timeout)
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
        """Apply a write or answer a snapshot (runs in the host, in a handler thread)."""
        with self._store_lock:
            self._start_term()
            if message["op"] == "snapshot":
                return {
                    "g": self._term,
                    "s": self._store_seq,
                    "items": [[key, value] for key, value in self._store.items()],
                    "applied": self._store_applied,
                }
            client, number = message["c"], message["n"]
            last = self._store_applied.get(client)
            if last is not None and last[0] == number:  # sent again after a failover: already applied
                return {"r": last[1], "dup": True}  # at a position of an earlier term: see _wait_applied
            op, prepare = message["op"], _PREPARE.get(message["op"][0])
            if prepare is not None:  # stamped here, once: every replica applies the op as rewritten
                op = prepare(op)
            result = _apply(self._store, op)
            self._store_seq += 1
            seq = self._store_seq
            self._store_applied[client] = [number, result, seq]
            change = {"g": self._term, "s": seq, "op": op, "c": client, "n": number, "r": result}
        with self._order:  # publish in sequence order, outside the store lock (snapshots never wait)
            while self._published != seq - 1 and self._term == change["g"]:
                self._order.wait(0.05)
        try:
            self._channel.publish(change, timeout=self._timeout)
        finally:
            with self._order:
                self._published = max(self._published, seq)
                self._order.notify_all()
        if _hooks.pause is not None:
            _hooks.pause("shareddict.published", change)
        answer = {"r": result, "g": change["g"], "s": seq}
        if prepare is not None:
            answer["op"] = op  # the writer applies the rewritten op, never the one it sent
        return answer

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
        with self._order:
            self._term, self._store_seq, self._published = generation, 0, 0
            self._order.notify_all()
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


class _ClosedReplica(dict[Any, Any]):
    """What a closed SharedDict reads from: every access raises ChannelClosed."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def _closed(self, *_args: object) -> Any:
        raise ChannelClosed(self._name, "SharedDict")

    __getitem__ = __contains__ = __len__ = __iter__ = get = copy = _closed


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
