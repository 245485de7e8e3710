"""SharedDict: a dict every process that opens it shares, with a full local replica in each.

Built on ``RequestChannel``. Writes go to the host, which applies them in one order,
numbers them (generation, sequence) and publishes each change before it answers; every
process applies the changes to its own replica, so reads never touch the socket. The
host's store *is* the state, and every replica holds a copy of it::

    writer --request(ops)--> host: apply the batch, seq += 1 each, publish it, answer each
    every replica <--batch (gen, first seq, changes)-- host, applied strictly in order

The parts, one module each: ``replica`` (the local copy and its change stream),
``writes`` (this process's writes on their way, and read-your-writes), ``store`` (the
host's side: group commit, a new term's start), ``ops`` (the operations, and the
registry ``ipchannel.contrib`` extends). This facade opens the dict and routes calls.

Keys and values go through the channel's codec (JSON by default: keys may be str, int,
float, bool or None; a change is a list, so an int key stays an int).
"""

from __future__ import annotations

import atexit
import functools
import logging
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import _fork
from .._codecs import is_builtin, resolve_codec
from .._core.port import port_of
from .._framing import DEFAULT_MAX_SIZE
from .._options import Options
from .._requests.channel import RequestChannel, publish_changes
from .._requests.confirm import Confirmations
from .._requests.outbox import DEFAULT_LIMITS
from .._timing import Deadline, validate_timeout
from . import ops
from .durability import durable_journal
from .members import Members
from .replica import Replica
from .store import Store
from .sync import Sync
from .views import SnapshotViews
from .writes import Writes

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import Callable

    from .._codecs import Codec
    from .._core.channel import Channel
    from .._seams.base import Membership

__all__ = ["SharedDict", "membership_of", "wait_for"]

_LOGGER = logging.getLogger("ipchannel")


class SharedDict(_fork.ProcessBound, SnapshotViews, MutableMapping[Any, Any]):
    """A dict shared by every process that opens it: local reads, writes through the host.

    ::

        counters = SharedDict("counters")
        counters.incr("hits")          # atomic across processes; returns the new value
        counters["mode"] = "fast"      # every process sees it (reads are local)
        counters.get("mode")

    :param name: the channel name (same rule as ``Channel``).
    :param codec: as for ``RequestChannel``; runtime_dir, authkey: as for ``Channel``.
    :param timeout: seconds a write (and opening) may wait for a host; None waits forever.
    :param max_message_size: as for ``RequestChannel``: the largest encoded write.
    :param max_backlog: as for ``RequestChannel``, and so is ``max_lag``: how far one replica may
        fall behind (stopped, swapped out, cut off) before the host cuts it off; it resyncs once it
        runs.
    :param coordinator: as for ``Channel``: across machines; so are ``listen``, ``advertise``,
        ``ttl``, ``ssl_context``, ``server_hostname`` and ``ssl_verify``.
    :param appendonly: keep the state in a journal that the next host replays, so it outlives every
        process (as Redis's ``appendonly yes``; one machine only).
    :param appendfsync: ``"always"``, ``"everysec"`` (the default) or ``"no"``, as Redis's option.
    :param journal_dir: the journal's directory (default: the runtime directory, emptied at reboot).
    :raises TypeError: (from a write) a key or value the codec would not bring back equal.
    :raises JournalError: (a durable dict's write) the journal cannot take it: not applied (but see
        ``JournalError``: sent again after its host died, it may have been applied by that host).
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
        max_message_size: int = DEFAULT_MAX_SIZE,
        max_backlog: int = DEFAULT_LIMITS.max_backlog,
        max_lag: float = DEFAULT_LIMITS.max_lag,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        server_hostname: str | None = None,
        ssl_verify: bool = True,
        appendonly: bool = False,
        appendfsync: str | None = None,
        journal_dir: str | os.PathLike[str] | None = None,
        _options: Options | None = None,
    ) -> None:
        self._timeout = validate_timeout(timeout)
        self._codec = resolve_codec(codec)
        options = _options or Options.build(
            runtime_dir=runtime_dir,
            authkey=authkey,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            ssl_verify=ssl_verify,
        )
        journal = durable_journal(name, options, self._codec, appendonly, appendfsync, journal_dir)
        # a custom codec may have neither: then nothing is checked in the caller
        self._check_key: Callable[[Any], None] | None = getattr(self._codec, "check_key", None)
        self._check_value: Callable[[Any], None] | None = getattr(self._codec, "check_value", None)
        self._data: dict[Any, Any] = {}
        self._replica = Replica(name, self._show)
        self._members = Members(name, None, max_lag, self._generation, lambda: self.position)
        self._members.durable = journal is not None
        self._store = Store(
            name, self._replica, self._generation, self._subscribed, self._publish, self._members, journal
        )
        self._requests = RequestChannel(
            name,
            self._store.on_request,
            codec=self._codec,
            # Out of elections until the replica holds the state: a newcomer elected with an empty
            # replica while others hold the data would make everyone resync to nothing.
            may_host=False,
            max_message_size=max_message_size,
            max_backlog=max_backlog,
            max_lag=max_lag,
            _options=options,
            _kind="SharedDict",  # errors name the class the user holds
            _confirmations=Confirmations(
                self._confirmation,
                self._members.subscribed,
                self._members.confirmed,
                self._members.gone,
                lambda: self._replica.on_missed(self._resync),  # moved: the old host may have cut us off
                self._members.my_name,
            ),
        )
        self._port = port_of(self._requests.channel)
        self._requests.channel.on_demoted(self._store.end_term)  # before the next host may start
        self._members.membership = self._port.membership
        self._port.set_campaign_gate(self._members.may_campaign)
        synced = functools.partial(self._confirmation, True)  # noqa: FBT003 - regardless
        self._sync = Sync(name, self._requests, self._replica, self._port, self._timeout, synced, self._store)
        self._resync = self._sync.resync
        self._writes = Writes(
            name,
            self._request,
            self._replica,
            self._timeout,
            self._port.timeout_error,
            local_apply=is_builtin(self._codec),  # a write applies itself: only if it comes back equal
        )
        try:
            self._sync.open(self._on_change)
        except BaseException:
            self._requests.close()
            raise
        self._requests.channel.may_host = True
        atexit.register(self._leave)  # before the channel's own close at exit: registered later
        _fork.register(self)

    # -- reads: the local replica, lock-free (see ``replica``) ------------------------------------

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
        return self._replica.copy()

    @property
    def position(self) -> tuple[int, int]:
        """(generation, sequence) of the last change the local replica applied."""
        with self._replica.lock:
            return self._replica.gen, self._replica.seq

    def _show(self, data: dict[Any, Any]) -> None:
        """Read from ``data`` from now on (the replica replaced its dict: a resync, or closing)."""
        self._data = data

    # -- writes: through the host (see ``writes``) -------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self._writes.write(["set", self._key(key), self._value(value)], self._resync)

    def __delitem__(self, key: Any) -> None:
        if not self._writes.write(["del", self._key(key)], self._resync):
            raise KeyError(key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one change (one write, one sequence number)."""
        items = list(other.items() if hasattr(other, "items") else other) + list(kwargs.items())
        self._writes.write(
            ["update", [[self._key(key), self._value(value)] for key, value in items]], self._resync
        )

    def incr(self, key: Any, amount: float = 1) -> Any:
        """Add ``amount`` to ``key`` (missing counts as 0) atomically across processes; return the result."""
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"amount must be an int or a float, not {type(amount).__name__}")
        return self._writes.write(["incr", self._key(key), amount], self._resync)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Set ``key`` to ``default`` unless present, atomically; return its value."""
        return self._writes.write(["setdefault", self._key(key), self._value(default)], self._resync)

    def pop(self, key: Any, default: Any = ops.MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        found, value = self._writes.write(["pop", self._key(key)], self._resync)
        if found:
            return value
        if default is ops.MISSING:
            raise KeyError(key)
        return default

    def clear(self) -> None:
        """Remove every key, in one change."""
        self._writes.write(["clear"], self._resync)

    def perform(self, operation: ops.Operation, *args: Any) -> Any:
        """Apply a registered operation (``ops.register``) through the host, atomically; return its result.

        The extension point of integrations (``ipchannel.contrib``): ``args`` go to the
        operation as they are, through the codec, with no check of their own.
        """
        if not isinstance(operation, ops.Operation):
            raise TypeError(
                f"operation must be a registered shared dict operation, not {type(operation).__name__}"
            )
        return self._writes.write([operation.name, *args], self._resync)

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

    # -- what the parts ask of the request channel ------------------------------------------------

    def _request(self, message: Any, timeout: float | None) -> Any:
        if "w" in message:  # writes say whose they are: the host need not wait for us (``members``)
            message["m"] = self._members.my_name()
        return self._requests.request(message, timeout=timeout)

    def _publish(self, message: dict[str, Any], taken_here: Callable[[], bool]) -> None:
        publish_changes(self._requests, message, self._timeout, taken_here)

    def _generation(self) -> int | None:
        """Return the host term we serve, None once we may not serve (``Store``, ``Members``)."""
        return self._port.serving()

    def _subscribed(self) -> int | None:
        return self._requests.subscribed_generation

    def _on_change(self, batch: dict[str, Any]) -> None:
        """Apply one published batch (runs on ``ipchannel-subscriber:NAME``)."""
        self._replica.on_change(batch, self._resync)
        self._writes.applied(batch, self._members.my_name())  # whether the host waits for us on it

    def _confirmation(self, regardless: bool = False) -> tuple[str, int, int] | None:
        """Return what this replica holds, for the host (``members``; on ``ipchannel-subscriber:NAME``).

        ``regardless`` of the last batch: after a snapshot or on a new connection (it is waited for).
        """
        if self._requests.channel.is_host or (self._writes.last_batch_ours and not regardless):
            return None  # not waited for: nothing to say
        position, member = self._replica.confirmable(), self._members.my_name()
        return (member, *position) if position is not None and member else None

    # -- lifetime ---------------------------------------------------------------------------------

    @property
    def channel(self) -> Channel:
        """The ``Channel`` that elects this dict's host (``is_host``, ``host_pid``, ``generation``, hooks)."""
        return self._requests.channel

    def close(self) -> None:
        """Stop sharing, handing hosting over; from then on reads and writes raise ChannelClosed."""
        atexit.unregister(self._leave)
        self._leave()
        self._requests.close()  # first: while it hands over, the host's side still reads the replica
        self._replica.close()
        self._store.close()

    def __enter__(self) -> SharedDict:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        replica = self._replica
        with replica.lock:
            keys = "closed" if replica.closed else f"{len(self._data)} keys"
            return f"<SharedDict {self.channel.name!r} {keys} at {replica.gen}:{replica.seq}>"

    def _reset_after_fork(self) -> None:
        """In a forked child: a writer of its own, fresh locks, and a replica that syncs again.

        Until the background resync is done, reads see the replica as it was at fork time, and
        this process stays out of elections, as a newcomer does: hosting from that copy while
        another process holds newer writes would make everyone resync to it.
        """
        self._writes.after_fork()
        self._replica.after_fork()
        self._store.after_fork()
        self._members.after_fork()
        self._sync.after_fork()

    def _resume_after_fork(self) -> None:
        """In a forked child, once everything is reset: sync the replica again in the background."""
        self._sync.resume_after_fork()

    def _leave(self) -> None:
        """Out of the members (``Members.leave``): this process stops sharing, or exits."""
        try:
            self._members.leave()
        except Exception as exc:  # noqa: BLE001 - closing goes on; a stale entry only delays elections
            _LOGGER.warning(
                "shared dict %r: cannot take this process out of the members: %s", self.channel.name, exc
            )


def membership_of(shared: SharedDict) -> Membership | None:
    """Return who ``shared``'s processes are and which of them live (``Membership``), for ``contrib``."""
    return shared._members.membership  # noqa: SLF001 - the one door to it for the layers above


def wait_for(shared: SharedDict, predicate: Callable[[], bool], timeout: float | None) -> bool:
    """Wait until ``predicate()``, checked now and after each change ``shared`` applies, is true.

    As ``threading.Condition.wait_for`` (False at the timeout). ``predicate`` runs holding the
    replica's lock: it may read the dict, never write it. ChannelClosed once closed. For ``contrib``.
    """
    return shared._replica.wait(predicate, Deadline(validate_timeout(timeout)))  # noqa: SLF001 - as above
