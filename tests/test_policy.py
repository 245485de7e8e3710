"""The core's failover policy, step by step, on an in-memory coordinator and transport.

No processes and no timing: each simulated process is the core's own parts (``Connector``,
``Hosting``, ``Monitor``) on ``_memory``'s backend; a test changes what the cluster knows
(a host killed, retired, unseen, fenced) and runs one monitor tick or one election step,
then checks the decision. The real-process tests (``test_failover``, ``test_across``) try
the same promises against real kills.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

import pytest
from _memory import Cluster, backend, no_op
from conftest import wait_until

from ipchannel import HostChanged
from ipchannel._core.connect import Connector
from ipchannel._core.monitor import Monitor
from ipchannel._core.server import handler_class
from ipchannel._core.term import Hosting
from ipchannel._seams.base import HostState
from ipchannel._wakeup import Wakeup

if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator
    from pathlib import Path

    from ipchannel._core.socket import ChannelSocket
    from ipchannel._seams.record import HostRecord

pytestmark = [
    pytest.mark.timeout(10),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract-namespace sockets are Linux's"),
]


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(64):
        conn.sendall(data)


class Process:
    """One simulated process: the parts a Channel wires together, with the monitor ticked by hand."""

    def __init__(self, cluster: Cluster, runtime_dir: Path, *, may_host: bool = True) -> None:
        self.pid = cluster.new_pid()
        parts = backend(cluster, self.pid, runtime_dir)
        self.wakeup = Wakeup()
        self.connector = Connector("t", parts, self.wakeup, no_op, auto_reconnect=True, may_host=may_host)
        self.hosting = Hosting("t", parts, handler_class(_echo), self.connector, self.wakeup, auth=False)
        self.connector.hosting = self.hosting
        self.monitor = Monitor(
            "t", self.hosting, self.connector, parts, self.wakeup, 0.1, self.connector.stopping
        )
        self.demoted: list[int] = []
        self.hosting.demoted_callbacks.append(self.demoted.append)

    @property
    def record(self) -> HostRecord | None:
        return self.connector.record

    def connect(self) -> ChannelSocket:
        return self.connector.connect(timeout=2.0)

    def stop(self) -> None:
        """As a SIGKILL ends the process's sockets: its server stops, no record or lock is given up."""
        if self.hosting.term is not None:
            self.hosting.term[0].stop()
            self.hosting.reset()

    def close(self) -> None:
        self.connector.stopping.set()
        self.hosting.close()
        self.connector.close()
        self.wakeup.close()


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def processes(cluster: Cluster, tmp_path: Path) -> Iterator[list[Process]]:
    made = [Process(cluster, tmp_path) for _ in range(3)]
    yield made
    for p in made:
        p.close()


def _elect_a(processes: list[Process]) -> tuple[Process, list[Process]]:
    a, *others = processes
    record = a.connector.elect(None, verify=True)
    assert record is not None
    assert a.hosting.is_host
    for p in others:
        assert p.connector.elect(None, verify=True) == record  # a serving host: they follow it
        p.connector.adopt(record)
    return a, others


# -- the monitor's decisions -----------------------------------------------------------------


def test_the_first_to_campaign_hosts_and_the_others_follow(
    processes: list[Process], cluster: Cluster
) -> None:
    a, others = _elect_a(processes)
    assert cluster.holder == a.pid
    assert a.record is not None
    assert a.record.generation == 1
    for p in others:
        p.monitor.tick()
        assert p.record == a.record  # a serving host is kept
        assert not p.hosting.is_host


def test_a_dead_host_is_forgotten_and_the_next_tick_elects_a_survivor_above_its_generation(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, c) = _elect_a(processes)
    old = a.record
    assert old is not None
    a.stop()
    cluster.kill(a.pid)
    b.monitor.tick()
    assert b.hosting.is_host
    assert b.record is not None
    assert b.record.generation == old.generation + 1  # fencing: numbered above every term seen
    c.monitor.tick()
    assert c.record == b.record  # the other survivor follows the new host


@pytest.mark.parametrize("state", [HostState.FAILING, HostState.GONE, HostState.RETIRED])
def test_a_host_that_no_longer_serves_is_forgotten(
    processes: list[Process], cluster: Cluster, state: HostState
) -> None:
    a, (b, _c) = _elect_a(processes)
    cluster.states[a.pid] = state
    assert b.connector.still_there(a.record) is False  # type: ignore[arg-type]
    assert b.record is None


def test_an_unseen_host_is_kept_and_only_the_lock_can_replace_it(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, _c) = _elect_a(processes)
    cluster.states[a.pid] = HostState.UNKNOWN  # its process cannot be seen (no permission)
    b.monitor.tick()
    assert b.record == a.record  # not forgotten on that evidence
    assert not b.hosting.is_host  # and the lock, still a's, says no
    cluster.holder = None  # a died after all: its lock is free
    b.monitor.tick()
    assert b.hosting.is_host


def test_a_process_kept_out_of_elections_never_takes_the_lock(cluster: Cluster, tmp_path: Path) -> None:
    a, b = Process(cluster, tmp_path), Process(cluster, tmp_path, may_host=False)
    try:
        a.connector.elect(None, verify=True)
        b.connector.adopt(a.record)  # type: ignore[arg-type]
        a.stop()
        cluster.kill(a.pid)
        b.monitor.tick()
        assert not b.hosting.is_host
        assert cluster.holder is None
    finally:
        a.close()
        b.close()


# -- term changes and fencing ----------------------------------------------------------------


def test_a_host_whose_fence_says_no_answers_nothing_and_steps_down_at_its_next_tick(
    processes: list[Process], cluster: Cluster
) -> None:
    a, _others = _elect_a(processes)
    assert a.hosting.may_serve()
    cluster.fence_problems[a.pid] = "its claim lapsed"
    assert not a.hosting.may_serve()  # before every answer: nothing answered from now on
    assert a.wakeup.drain() == b"!"  # the monitor is woken to step down now, not at its next tick
    a.monitor.tick()
    assert not a.hosting.is_host
    assert a.demoted == [1]  # on_demoted ran, before the lock went
    assert cluster.record is None  # its record retracted...
    assert cluster.holder is None  # ...and its right to host given up


def test_what_only_a_thorough_check_finds_steps_a_host_down_at_its_tick(
    processes: list[Process], cluster: Cluster
) -> None:
    a, _others = _elect_a(processes)
    cluster.thorough_problems[a.pid] = "another record replaced its own"
    assert a.hosting.may_serve()  # the cheap check before each answer cannot see it...
    a.monitor.tick()  # ...the monitor's can
    assert not a.hosting.is_host
    assert a.demoted == [1]


def test_a_closing_host_resigns_first_so_another_takes_over_at_once(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, _c) = _elect_a(processes)
    a.close()
    assert cluster.record is None
    assert cluster.holder is None
    b.monitor.tick()
    assert b.hosting.is_host


# -- a socket's recovery ---------------------------------------------------------------------


def test_a_read_whose_host_died_moves_to_the_next_host_and_says_so(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, _c) = _elect_a(processes)
    sock = b.connect()
    sock.sendall(b"hi")
    assert sock.recv(2) == b"hi"
    a.stop()
    cluster.kill(a.pid)
    with pytest.raises(HostChanged) as info:
        sock.recv(2)
    assert (info.value.old_generation, info.value.new_generation) == (1, 2)
    assert b.hosting.is_host  # nobody else hosted: this process took over, through its own socket
    assert (b.pid, "eof") in cluster.assessed  # asked once, as evidence of an ended connection
    sock.sendall(b"again")
    assert sock.recv(5) == b"again"  # same object, same descriptor, the new host
    sock.close()


def test_an_eof_from_a_host_that_serves_on_is_a_plain_eof(processes: list[Process]) -> None:
    a, (b, _c) = _elect_a(processes)
    sock = b.connect()
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    a.hosting.term[0].close_connections()  # type: ignore[index] # the handler's end, its host alive
    assert sock.recv(1) == b""  # not a host change: no reconnection
    assert sock.reconnects == 0
    assert b.record == a.record
    sock.close()


def test_a_socket_ended_by_its_own_process_reconnects_even_to_the_same_host(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, _c) = _elect_a(processes)
    sock = b.connect()
    record, cluster.record = cluster.record, None  # deleted under a live host, the lock unseen: retired
    b.monitor.tick()
    assert b.record is None  # forgotten: its connections were ended by this process
    cluster.record = record  # the host rewrote it: it serves on, in the same term
    sock.sendall(b"back")  # not the host's handler that ended it: not a plain EOF, no BrokenPipeError
    assert sock.recv(4) == b"back"
    assert sock.reconnects == 1
    assert b.record == a.record  # followed again
    sock.close()


def test_an_eof_from_a_host_taken_for_retired_follows_its_record_when_it_comes_back(
    processes: list[Process], cluster: Cluster
) -> None:
    a, (b, _c) = _elect_a(processes)
    sock = b.connect()
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"  # accepted: a handler serves it
    record, cluster.record = cluster.record, None  # deleted under a live host, the lock unseen: retired
    a.hosting.term[0].close_connections()  # type: ignore[index]

    def rewrite() -> None:  # as the host's next tick does, once b has taken the EOF for a handover
        wait_until(lambda: (b.pid, "eof") in cluster.assessed)
        cluster.record = record

    rewriter = threading.Thread(target=rewrite)
    rewriter.start()
    try:
        with pytest.raises(HostChanged):  # before the fix: ChannelTimeout, its record avoided for good
            sock.recv(1)
    finally:
        rewriter.join()
    sock.sendall(b"same")
    assert sock.recv(4) == b"same"
    assert b.record == a.record
    sock.close()
