"""An in-memory backend for unit tests of the core's failover policy: no processes, no files.

``Cluster`` is what the engine would know: who holds the right to host, the record, and
what each simulated process is (alive, dead, dying, unseen), plus fence problems a test
injects. Each simulated process gets its own ``MemoryCoordinator`` (its pid is a number
the cluster hands out) and ``MemoryTransport`` (Unix sockets in Linux's abstract
namespace: nothing on disk). The core runs on them as on a real backend; the tests drive
it step by step (``Monitor.tick``, ``Connector.elect``) instead of from threads.
"""

from __future__ import annotations

import itertools
import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ipchannel._seams.base import Backend, Connection, HostState, plain_socket
from ipchannel._seams.record import HostRecord

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ipchannel._seams.base import Evidence, SocketMaker


@dataclass
class Cluster:
    """The shared truth of one simulated deployment."""

    holder: int | None = None  # the pid holding the right to host
    record: HostRecord | None = None
    version: int = 0  # bumped by every change of the record
    states: dict[int, HostState] = field(default_factory=dict)  # a pid's own state; default SERVING
    fence_problems: dict[int, str] = field(default_factory=dict)  # what fence() says to a pid
    thorough_problems: dict[int, str] = field(default_factory=dict)  # ... when asked thoroughly
    assessed: list[tuple[int, str]] = field(default_factory=list)  # (pid, evidence) of every assess
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def new_pid(self) -> int:
        return next(self._pids)

    def kill(self, pid: int) -> None:
        """As SIGKILL: the process is gone, and with it its hold on the channel."""
        self.states[pid] = HostState.GONE
        if self.holder == pid:
            self.holder = None


class MemoryCoordinator:
    """The ``Coordinator`` seam of one simulated process, on a ``Cluster``."""

    def __init__(self, cluster: Cluster, pid: int, runtime_dir: Path) -> None:
        self._cluster, self.pid, self._runtime_dir = cluster, pid, runtime_dir
        self._seen = 0

    @property
    def runtime_dir(self) -> Path:
        return self._runtime_dir

    @property
    def location(self) -> str:
        return "memory"

    def read(self) -> HostRecord | None:
        record = self._cluster.record
        if record is not None:
            self._seen = max(self._seen, record.generation)
        return record

    def assess(self, record: HostRecord, *, after: Evidence = "look") -> HostState:
        self._cluster.assessed.append((self.pid, after))
        own = self._cluster.states.get(record.pid, HostState.SERVING)
        if own is not HostState.SERVING:
            return own
        return HostState.SERVING if self._cluster.record == record else HostState.RETIRED

    def watch(self, dead: HostRecord | None) -> Callable[[], bool]:  # noqa: ARG002 - the version says it all
        version = self._cluster.version
        return lambda: self._cluster.version != version

    def try_acquire(self) -> bool:
        if self._cluster.holder in (None, self.pid):
            self._cluster.holder = self.pid
            return True
        return False

    def new_record(self, address: str, previous: HostRecord | None, *, auth: bool) -> HostRecord:
        generation = max(previous.generation if previous else 0, self._seen) + 1
        return HostRecord(self.pid, 0.0, address, generation, 0.0, auth)

    def publish(self, record: HostRecord) -> HostRecord:
        self._cluster.record = record
        self._cluster.version += 1
        self._seen = record.generation
        return record

    def retract(self, record: HostRecord) -> None:
        if self._cluster.record == record:
            self._cluster.record = None
            self._cluster.version += 1

    def release(self) -> None:
        if self._cluster.holder == self.pid:
            self._cluster.holder = None

    def fence(self, record: HostRecord, *, thorough: bool = False) -> str:  # noqa: ARG002 - as the cluster says
        problem = self._cluster.fence_problems.get(self.pid, "")
        return problem or (self._cluster.thorough_problems.get(self.pid, "") if thorough else "")

    def holding_off(self, record: HostRecord) -> float:  # noqa: ARG002 - the cluster is never reset
        return 0.0

    def unreachable(self) -> str:
        return ""

    def blocker(self) -> str:
        return ""

    def warm_up(self) -> None:
        """Nothing to compute ahead here."""

    def after_fork(self) -> None:
        """Never forked: the tests run in one process."""

    def close(self) -> None:
        """Nothing runs in the background here."""


class MemoryListener:
    """A listening socket in the abstract namespace (Linux): an address, and no file."""

    def __init__(self) -> None:
        self._address = f"\0ipchannel-memory-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self._address)
        self.sock.listen(16)

    @property
    def address(self) -> str:
        return self._address

    def verify(self, conn: socket.socket) -> bool:  # noqa: ARG002 - everyone here is us
        return True

    def admit(self, conn: socket.socket, track: Callable[[socket.socket], None]) -> socket.socket:  # noqa: ARG002
        return conn

    def publish(self, record: HostRecord) -> None:
        """The address is in the record: nothing to move."""

    def still_published(self) -> bool:
        return self.sock.fileno() >= 0

    def wake(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()

    def abandon_after_fork(self) -> None:
        self.sock.close()


class MemoryTransport:
    """The ``Transport`` seam on abstract-namespace sockets."""

    def listen(self, gate: Callable[[], bool]) -> MemoryListener:  # noqa: ARG002 - no hello here
        return MemoryListener()

    def connect(self, record: HostRecord, make: SocketMaker = plain_socket) -> Connection | None:
        sock = make(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(record.sock)
        except OSError:
            sock.close()
            return None
        return sock, None


def backend(cluster: Cluster, pid: int, runtime_dir: Path) -> Backend:
    """The backend of one simulated process: no standby, no exit notices (capabilities absent)."""
    return Backend(MemoryCoordinator(cluster, pid, runtime_dir), MemoryTransport())


def no_op(*_args: Any) -> None:
    """A hook that does nothing (the monitor is not started: the tests tick it)."""
