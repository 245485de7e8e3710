"""The seams: what the core asks of a backend, and the capabilities only some backends have.

A backend is a ``Backend``: a ``Coordinator`` (who hosts and where; what state the
recorded host is in; may this process serve) and a ``Transport`` (listen; connect
and verify the peer), plus the optional capabilities it has: a ``Standby`` (a process
ready to host next; one machine) and ``ExitNotices`` (a descriptor that turns readable
when the host exits; Linux). The core asks for a capability once and finds None where
a backend lacks it: no backend has a method that does nothing.

Two questions are answered by the coordinator alone:

- ``assess(record)``: what state is the recorded host in (``HostState``), and so
  what to do about it; "cannot tell" is decided there too (``HostState.UNKNOWN``);
- ``fence(record)``: may this process still serve as ``record``'s host ("" yes, else why not).
"""

from __future__ import annotations

import enum
import socket as _socket_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from _typeshed import ReadableBuffer, WriteableBuffer

    from .._timing import Deadline
    from .record import HostRecord, Recorded

__all__ = [
    "Backend",
    "Connection",
    "Coordinator",
    "Evidence",
    "ExitNotices",
    "HostState",
    "Listener",
    "LostClaim",
    "Membership",
    "Session",
    "SocketMaker",
    "Standby",
    "StandbyPost",
    "Transport",
    "plain_socket",
]


class LostClaim(Exception):
    """Becoming host failed: another process claimed the channel first, or the engine did not answer."""


class HostState(enum.Enum):
    """What the coordinator knows of a recorded host, and so what the core does about it."""

    #: the recorded host, and it runs: keep using it
    SERVING = "serving"
    #: it runs, but is no longer the recorded host: it handed over (no standby is told of that)
    RETIRED = "retired"
    #: dying, or not answering: its hold on the channel (lock, claim) lapses within moments
    FAILING = "failing"
    #: gone, and its hold on the channel with it
    GONE = "gone"
    #: whether it runs cannot be seen (no permission): keep it; the lock or claim decides, by election
    UNKNOWN = "unknown"

    @property
    def serving(self) -> bool:
        """True if the host serves: an EOF from it was its handler's, and it stays the known host."""
        return self is HostState.SERVING

    @property
    def forget(self) -> bool:
        """True if the process should stop treating it as the host (all but SERVING and UNKNOWN)."""
        return self not in (HostState.SERVING, HostState.UNKNOWN)

    @property
    def lives_on(self) -> bool:
        """True if it still runs (a handover): nothing tells a standby, so nobody waits at one."""
        return self in (HostState.SERVING, HostState.RETIRED)

    @property
    def dead(self) -> bool:
        """True if it died or is dying (the standby takes over; survivors elect one of themselves)."""
        return self in (HostState.FAILING, HostState.GONE)


#: What prompted ``Coordinator.assess``: a routine look (a cached copy may do), a connection to the
#: host that ended (ask the source, and tell a handler that closed it from a crash), or a connection
#: attempt it refused (ask the source).
Evidence = Literal["look", "eof", "refused"]


class Coordinator(Protocol):
    """Who hosts a channel and where; what state the recorded host is in; may this process serve."""

    @property
    def runtime_dir(self) -> Path:
        """Return where this process keeps the channel's local files."""

    @property
    def location(self) -> str:
        """Return where the election happens, for messages: the runtime directory, or the engine's URL."""

    def read(self) -> HostRecord | None:
        """Return the current host record, or None."""

    def assess(self, record: HostRecord, *, after: Evidence = "look") -> HostState:
        """Say what state ``record``'s host is in. The one place that decides it."""

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:
        """Return a predicate that turns True once the election can move on from now."""

    def try_acquire(self) -> bool:
        """Try, without waiting, to become the one allowed to host; True if we now are."""

    def new_record(self, address: str, previous: HostRecord | None, *, auth: bool) -> HostRecord:
        """Return the record of a new term of this process at ``address``, numbered above any seen."""

    def publish(self, record: HostRecord) -> HostRecord:
        """Make ``record`` the current host record; return it as published (an engine numbers it).

        May raise ``LostClaim`` (an engine: another process claimed the channel first).
        """

    def retract(self, record: HostRecord) -> None:
        """Remove the current record if it is still ``record`` (never another host's)."""

    def release(self) -> None:
        """Give up the right to host (idempotent)."""

    def fence(self, record: HostRecord, *, thorough: bool = False) -> str:
        """As ``record``'s host: "" while this process may serve, else why not. The one place that decides it.

        Asked before every answer (cheap: memory only); ``thorough`` (the monitor, each tick) also
        checks what can be taken away from outside (a lock file, the record, the claim's key).
        """

    def holding_off(self, record: HostRecord) -> float:
        """As ``record``'s new host: seconds before it may first answer (0: now); not a reason to step down.

        An election whose memory was reset (an engine's data lost) cannot tell whether an
        earlier host still serves: its new host waits until that one must have stopped.
        """

    def unreachable(self) -> str:
        """Say why the coordinator does not answer ("" if it does, or cannot fail to: a local one)."""

    def blocker(self) -> str:
        """Say what keeps a host from being elected though none serves ("" if nothing is known)."""

    def warm_up(self) -> None:
        """Compute ahead of time what becoming host needs (off the failover path)."""

    def after_fork(self) -> None:
        """In a forked child: forget the parent's hold, without touching the parent's."""

    def close(self) -> None:
        """Stop background work and tidy what dead processes left behind (the channel closes)."""


class Session(Protocol):
    """The per-connection state of a client connection whose bytes are transformed on the way (TLS, records).

    It is not tied to a descriptor: the socket that owns the connection now reads the wire
    and ``feed``-s the session, so a connection moved onto another socket object's descriptor
    (``dup2``) takes its session along, and bytes read after the move reach the new one.
    """

    def read_into(self, buffer: WriteableBuffer, nbytes: int, flags: int) -> int | None:
        """Decode into ``buffer`` what was fed: a count (0: the host closed it), or None for more bytes.

        Raises ``ConnectionAbortedError`` if it refuses what was fed (the socket ends the connection).
        """

    def feed(self, data: bytes) -> None:
        """Take ``data`` received from the wire."""

    def flush(self, sock: socket.socket) -> None:
        """Send what the session has to say on its own (handshake records, alerts) through ``sock``."""

    def sendall(self, sock: socket.socket, data: ReadableBuffer, flags: int) -> None:
        """Encode all of ``data`` and send it through ``sock``."""

    def pending(self) -> int:
        """Return how many bytes were received and decoded but not read yet."""


class SocketMaker(Protocol):
    """Builds the socket object of a new connection (``Transport.connect``), so it is never copied.

    The core passes one that makes its own ``ChannelSocket``; ``plain_socket`` makes a plain one.
    """

    def __call__(
        self,
        family: int,
        type: int,
        proto: int = ...,
        fileno: int | None = ...,
        session: Session | None = ...,
    ) -> socket.socket: ...


def plain_socket(
    family: int, type: int, proto: int = 0, fileno: int | None = None, session: Session | None = None
) -> socket.socket:
    """Make a plain ``socket.socket`` (a connection that is taken over by another socket's descriptor)."""
    del session
    return _socket_module.socket(family, type, proto, fileno)


#: A connection to the host, verified and authenticated: the socket and its session (None: plain).
#: A plain tuple, not a NamedTuple: one is made on every connect.
Connection = tuple["socket.socket", "Session | None"]


class Listener(Protocol):
    """A host's listening endpoint (the transport's); the core's server accepts and serves on it."""

    @property
    def address(self) -> str:
        """What clients dial, written in the host record."""

    @property
    def sock(self) -> socket.socket:
        """The listening socket (a handler sees it as ``self.server.socket``, as socketserver has it)."""

    def verify(self, conn: socket.socket) -> bool:
        """In the accepting thread, cheaply: True if ``conn`` may be served (say, its uid is ours)."""

    def admit(self, conn: socket.socket, track: Callable[[socket.socket], None]) -> socket.socket | None:
        """In the connection's handler thread: TLS, the authkey handshake, the host's hello.

        Returns the socket the handler gets, or None to refuse. ``track(new)`` replaces
        ``conn`` by ``new`` (a TLS socket) as what ending the term shuts down.
        """

    def publish(self, record: HostRecord) -> None:
        """Open to clients as ``record``'s host (Unix: take the published path, replacing a dead host's)."""

    def still_published(self) -> bool:
        """Tell whether this listener still answers at the published address (a file may be removed)."""

    def wake(self) -> None:
        """Stop accepting now: a select() on ``fileno()`` wakes (where the system allows)."""

    def close(self) -> None:
        """Close it; remove its address if it is still ours."""

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copy of the descriptor, touching nothing shared."""


class Transport(Protocol):
    """How a channel's processes reach its host."""

    def listen(self, gate: Callable[[], bool]) -> Listener:
        """Listen on a private address until ``publish()``.

        ``gate()`` says whether this process may serve right now; a transport whose peers
        cannot tell a lapsed host by other means asks it per connection (TCP's hello).
        """

    def connect(self, record: HostRecord, make: SocketMaker = plain_socket) -> Connection | None:
        """Connect to the host ``record`` names; None if nobody (or another host) answers there.

        The connection's socket is built by ``make`` (with its session, if any).
        """


class StandbyPost(Protocol):
    """A standby's side socket, where clients of a dead host wait, from ``Standby.open`` until it closes."""

    def promote(self, record: HostRecord, serve: Callable[[socket.socket], None]) -> int:
        """As host now (record and listener published): greet every waiting client, ``serve`` it.

        Returns how many waited. No client is greeted before this: nobody is served by a standby.
        """

    def close(self) -> None:
        """Stop standing by: waiting clients are reset and look elsewhere; the place is given up."""

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copy of the side socket, touching nothing shared."""


class Standby(Protocol):
    """The process that hosts next, ready before the host dies (a capability of one machine)."""

    def try_stand_by(self) -> bool:
        """Take (or keep) the standby's place without waiting; False: another has it, or ours was lost."""

    def open(self, auth: bool) -> StandbyPost:
        """As the standby: listen on the side socket and say where it is."""

    def find(self, dead: HostRecord) -> HostRecord | None:
        """Return the standby's record if another process than ``dead``'s stands by, else None."""

    def wait(
        self, standby: HostRecord, deadline: Deadline, give_up: Callable[[], bool]
    ) -> tuple[Connection, HostRecord] | None:
        """Wait at ``standby``'s side socket until it hosts: the connection and its host record, or None."""

    def defer(self, dead: HostRecord | None) -> bool:
        """Tell whether to leave the place of the host ``dead`` to a live standby for now."""

    def after_fork(self) -> None:
        """In a forked child: forget the parent's place (a child of the standby is not one)."""


class ExitNotices(Protocol):
    """Descriptors that turn readable when a host exits (a capability of some platforms: pidfd)."""

    def open(self, record: HostRecord) -> int | None:
        """Return a descriptor readable once ``record``'s host has exited, or None; the caller closes it."""


class FileChange(Protocol):
    """A descriptor that polls readable when something may have changed (``TermNotices``)."""

    fd: int

    def touched(self) -> bool:
        """Read what happened; tell whether it concerns what is watched (then look: a tick)."""

    def close(self) -> None:
        """Close the descriptor."""


class TermNotices(Protocol):
    """Notices of changes to what a host's term rests on (a capability: a local host's files, by inotify).

    With one, the host's monitor looks at its term when told (and every ``IDLE_INTERVAL``),
    instead of every tick; without, every ``Channel.monitor_interval``.
    """

    def open(self, record: HostRecord) -> FileChange | None:
        """Return a notice for ``record``'s term, or None (then the monitor looks every tick)."""


class Waiting(Protocol):
    """What a process waiting in the election sleeps on (``ElectionNotices.open``)."""

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True if something that can move the election on happened."""

    def close(self) -> None:
        """Close its descriptors."""


class ElectionNotices(Protocol):
    """Descriptors that wake a process waiting for a host (a capability: local, by inotify and pidfd)."""

    def open(self, dead: HostRecord | None) -> Waiting | None:
        """Return what turns when a host publishes itself, or ``dead``'s host exits; None: poll instead."""


class Membership(Protocol):
    """Who holds every acknowledged write of the host's state (a SharedDict), kept where elections are.

    A member is named by a string this capability makes (``me``) and can tell alive
    (``alive``). The host records the set with its generation before it acknowledges a
    write without a process that left it; a process outside the set may not campaign
    while a member may be alive (``_shareddict.members``).
    """

    def me(self) -> str:
        """Return this process as a member (a new string in a forked child)."""

    def record(self, generation: int, members: Iterable[str]) -> None:
        """Record ``members`` (this process, the host, among them) as holding every acknowledged write."""

    def members(self) -> Recorded | None:
        """Return what is recorded, or None if nothing is."""

    def alive(self, member: str) -> bool:
        """Tell whether ``member`` may still be alive (the same process, not a reused pid)."""

    def leave(self, member: str, alone_in: int | None) -> None:
        """Let ``member`` (closing its dict) keep no one out; ``alone_in``: the term it hosts alone."""


@dataclass(frozen=True)
class Backend:
    """What a channel runs on: the two seams, and the capabilities this backend has (None: absent)."""

    coordinator: Coordinator
    transport: Transport
    standby: Standby | None = None
    exit_notices: ExitNotices | None = None
    term_notices: TermNotices | None = None
    election_notices: ElectionNotices | None = None
    membership: Membership | None = None
