"""Real processes, real SIGKILLs: elections, failover, handover."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
from conftest import Peer, Peers, freeze, wait_until

from ipchannel._core.monitor import SETTLE

if TYPE_CHECKING:
    from pathlib import Path


def _connect_all(peers: list[Peer]) -> list[dict[str, object]]:
    return [p.call("connect") for p in peers]


def test_two_processes_exchange_messages(peers: Peers) -> None:
    a, b = peers.start(2)
    info_a, info_b = _connect_all([a, b])
    assert info_a["is_host"]
    assert not info_b["is_host"]
    assert info_a["host_pid"] == info_b["host_pid"] == a.pid
    # both talk: the host through its own socket, the client through its
    assert a.call("request", text="from a")["reply"] == f"{a.pid} from a"
    assert b.call("request", text="from b")["reply"] == f"{a.pid} from b"


def test_names_keep_channels_apart(peers: Peers) -> None:
    (a,) = peers.start(1, name="alpha")
    (b,) = peers.start(1, name="beta")
    assert a.call("connect")["is_host"]
    assert b.call("connect")["is_host"]
    assert a.call("request", text="x")["reply"] == f"{a.pid} x"
    assert b.call("request", text="x")["reply"] == f"{b.pid} x"


@pytest.mark.timeout(120)
def test_sixteen_processes_connect_at_once_one_host(peers: Peers, runtime_dir: Path) -> None:
    group = peers.start(16)
    for p in group:  # fire all connects before reading any answer
        p._conn.send(("connect", {"timeout": 20.0}))  # noqa: SLF001
    infos = [p._recv(30.0) for p in group]  # noqa: SLF001
    assert all(i["ok"] for i in infos), infos
    hosts = [i["pid"] for i in infos if i["is_host"]]
    assert len(hosts) == 1
    assert {i["host_pid"] for i in infos} == set(hosts)
    assert {p.call("request", text="hi")["reply"] for p in group} == {f"{hosts[0]} hi"}
    # the host's files; one of the others stands by to host next, with its own
    wait_until(lambda: sum(p.call("info")["standby"] for p in group) == 1)
    (standby,) = [p.pid for p in group if p.call("info")["standby"]]
    host_files = ["test.host", "test.lock", "test.sock"]
    standby_files = ["test.standby", ".test.standby.lock", f".test.{standby}.sock", f".test_{standby}.sock"]
    assert sorted(os.listdir(runtime_dir)) == sorted([*host_files, *standby_files])


def test_sigkill_host_each_client_same_socket_gets_reply_from_new_host(peers: Peers) -> None:
    group = peers.start(5)
    before = _connect_all(group)
    host = peers.host(group)
    clients = [p for p in group if p is not host]
    for c in clients:
        assert c.call("request", text="warm")["reply"] == f"{host.pid} warm"
    host.kill()
    after = [c.call("request", text="after", timeout=2.0) for c in clients]
    new_host_pids = {a["reply"].split()[0] for a in after}
    assert len(new_host_pids) == 1
    new_host = int(new_host_pids.pop())
    assert new_host in {c.pid for c in clients}
    for a in after:
        assert a["seconds"] < 2.0
        assert a["generation"] == 2
    # the very same socket objects and descriptors
    by_pid = {b["pid"]: b for b in before}
    for a in after:
        assert a["sock_id"] == by_pid[a["pid"]]["sock_id"]
        assert a["fileno"] == by_pid[a["pid"]]["fileno"]
    assert len([c for c in clients if c.call("info")["is_host"]]) == 1


@pytest.mark.timeout(120)
def test_repeated_failover_ten_kills(peers: Peers) -> None:
    group = peers.start(12)
    _connect_all(group)
    alive = list(group)
    seen_hosts = []
    for round_ in range(10):
        host = peers.host(alive)
        seen_hosts.append(host.pid)
        host.kill()
        alive.remove(host)
        replies = {p.call("request", text=f"r{round_}", timeout=5.0)["reply"].split()[0] for p in alive}
        assert len(replies) == 1, replies
        infos = [p.call("info") for p in alive]
        assert {i["generation"] for i in infos} == {round_ + 2}
        assert sum(i["is_host"] for i in infos) == 1
    assert len(set(seen_hosts)) == 10


def test_idle_clients_elect_without_any_blocked_call(peers: Peers) -> None:
    group = peers.start(3)
    _connect_all(group)
    host = peers.host(group)
    host.kill()
    rest = [p for p in group if p is not host]
    # nobody calls recv/send: the monitor threads notice and elect a new host on their own
    wait_until(lambda: sum(p.call("info")["is_host"] for p in rest) == 1, timeout=5)
    wait_until(lambda: all(p.call("info")["state"] == "connected" for p in rest), timeout=5)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3+, Python 3.9+)")
def test_an_idle_client_with_a_slow_monitor_notices_the_host_exit_at_once(peers: Peers) -> None:
    host, idle = peers.start(2)
    host.call("connect")
    idle.call("set_monitor_interval", value=60.0)  # its monitor ticks once a minute at most
    assert idle.call("join")["host_pid"] == host.pid  # knows the host, holds no connection to it
    wait_until(lambda: _holds_a_pidfd(idle.pid))  # its monitor watches the host's exit notice
    host.kill()
    # no tick, no EOF: only the host's exit notice (a pidfd) can tell it this soon
    wait_until(lambda: idle.call("info")["is_host"], timeout=3)


def _standby(group: list[Peer]) -> Peer:
    """Return the peer standing by to host next, once exactly one does."""
    wait_until(lambda: sum(p.call("info")["standby"] for p in group if p.alive) == 1)
    (standby,) = [p for p in group if p.alive and p.call("info")["standby"]]
    return standby


def _started_with_a_standby(peers: Peers, n: int) -> tuple[list[Peer], Peer, Peer]:
    """Start ``n`` connected peers; return them, the host, and the one standing by."""
    group = peers.start(n)
    _connect_all(group)
    return group, peers.host(group), _standby(group)


@pytest.mark.timeout(60)
def test_clients_of_a_dead_host_wait_at_the_standby_until_it_holds_the_lock(
    peers: Peers, tmp_path: Path
) -> None:
    group, host, standby = _started_with_a_standby(peers, 4)
    standby.call("log_to", path=str(tmp_path / "standby.log"))
    clients = [p for p in group if p not in (host, standby)]
    for c in clients:
        c.call("set_may_host", value=False)  # else, once the standby's grace is over, they try the lock too
    sleeper = host.call("leak_lock")["sleeper"]  # holds the host lock after the host dies
    try:
        host.kill()
        for c in clients:
            c.start_call("request", text="after")
        # the lock is not free: the standby serves nobody, its waiting clients get no answer
        assert not clients[0]._conn.poll(0.5)  # noqa: SLF001
        assert not standby.call("info")["is_host"]
    finally:
        os.kill(sleeper, signal.SIGKILL)
        os.waitpid(sleeper, 0)
    for c in clients:
        reply = c.finish_call()
        assert reply["reply"] == f"{standby.pid} after", reply
    assert standby.call("info")["is_host"]
    # logged once the standby handed them over, so possibly after they got their answers
    waited = f"{len(clients)} client(s) waited for this standby to host"
    wait_until(lambda: waited in (tmp_path / "standby.log").read_text())
    for c in clients:
        c.call("set_may_host", value=True)
    assert _standby(clients) in clients  # the next standby steps up


@pytest.mark.timeout(60)
def test_a_frozen_standby_does_not_hold_the_failover_up(peers: Peers) -> None:
    group, host, standby = _started_with_a_standby(peers, 4)
    clients = [p for p in group if p not in (host, standby)]
    freeze(standby.pid)
    try:
        host.kill()
        replies = {c.call("request", text="after", timeout=5.0)["reply"].split()[0] for c in clients}
        (new_host,) = replies  # one host, not the frozen standby: the others took over after a grace
        assert int(new_host) in {c.pid for c in clients}
    finally:
        os.kill(standby.pid, signal.SIGCONT)
    assert not standby.call("info")["is_host"]
    assert standby.call("request", text="thawed")["reply"] == f"{new_host} thawed"
    assert sum(p.call("info")["is_host"] for p in group if p.alive) == 1


@pytest.mark.timeout(60)
def test_a_child_forked_from_the_standby_leaves_it_standing_by(peers: Peers) -> None:
    group, host, standby = _started_with_a_standby(peers, 3)
    # the child: the parent's standby is not its own; it connects, is answered, exits
    assert standby.call("fork_child")["child_exit"] == 0
    assert standby.call("info")["standby"]  # its exit released nothing of the parent's
    host.kill()
    wait_until(lambda: standby.call("info")["is_host"])
    assert all(p.call("request", text="x")["reply"] == f"{standby.pid} x" for p in group if p.alive)


@pytest.mark.timeout(60)
def test_a_host_that_hands_over_and_lives_on_is_replaced_though_the_standby_sleeps(peers: Peers) -> None:
    host, standby, client = peers.start(3)
    host.call("connect")
    standby.call("set_monitor_interval", value=60.0)  # it ticks once a minute: nothing wakes it sooner
    standby.call("join")
    wait_until(lambda: standby.call("info")["standby"], timeout=5)
    client.call("set_monitor_interval", value=60.0)  # nor does its own monitor rescue it
    client.call("connect")
    assert client.call("request", text="before")["reply"] == f"{host.pid} before"
    time.sleep(5 * SETTLE)  # past the client's own tick after connecting (a timer, not an event)
    host.call("close")  # hands over; its process lives on, so no exit notice fires
    # before the fix: the client waited at the sleeping standby's side socket until its timeout
    reply = client.call("request", text="after", timeout=5.0)
    assert reply.get("reply", "").split()[-1:] == ["after"], reply
    assert int(reply["reply"].split()[0]) in {standby.pid, client.pid}


@pytest.mark.timeout(60)
def test_a_killed_standby_leaves_no_record_once_the_host_hands_over(peers: Peers, runtime_dir: Path) -> None:
    group, host, standby = _started_with_a_standby(peers, 3)
    standby.kill()  # its record stays: nobody stands by in its place before the next tick
    host.exit()
    (last,) = [p for p in group if p.alive]
    assert last.call("request", text="x")["reply"] == f"{last.pid} x"
    last.exit()
    assert "test.standby" not in os.listdir(runtime_dir)  # before the fix: the killed standby's record


def _holds_a_pidfd(pid: int) -> bool:
    fds = f"/proc/{pid}/fd"
    links = []
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"{fds}/{fd}"))
    return "anon_inode:[pidfd]" in links


def test_graceful_close_hands_over(peers: Peers, runtime_dir: Path) -> None:
    group = peers.start(3)
    _connect_all(group)
    host = peers.host(group)
    rest = [p for p in group if p is not host]
    host.exit()  # channel.close() in the host, then a clean exit
    replies = {p.call("request", text="after", timeout=2.0)["reply"].split()[0] for p in rest}
    assert len(replies) == 1
    assert int(replies.pop()) in {p.pid for p in rest}
    for p in rest:
        p.exit()
    assert set(os.listdir(runtime_dir)) - {".test.standby.lock"} == {"test.lock"}  # no record, no socket left


def test_interpreter_exit_hands_over(peers: Peers, runtime_dir: Path) -> None:
    group = peers.start(2)
    _connect_all(group)
    host = peers.host(group)
    (other,) = [p for p in group if p is not host]
    os.kill(host.pid, signal.SIGTERM)  # the peer turns SIGTERM into sys.exit: atexit runs
    host.process.join(10)
    assert host.process.exitcode == 0
    assert other.call("request", text="x", timeout=2.0)["reply"] == f"{other.pid} x"
    other.exit()
    assert set(os.listdir(runtime_dir)) - {".test.standby.lock"} == {"test.lock"}


# The start of a child process's script: every ipchannel log record kept in ``seen.records``.
_RECORDING = """
import atexit, json, logging, os, signal, sys, time
import ipchannel

class Seen(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
    def emit(self, record):
        self.records.append(record)

seen = Seen()
logger = logging.getLogger("ipchannel")
logger.addHandler(seen)
logger.setLevel(logging.DEBUG)

def report_once_logged(*words):
    # wait (10 s at most) for a WARNING or a record with one of words; print every record
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(r.levelno >= logging.WARNING or any(w in r.getMessage() for w in words) for r in seen.records):
            break
        time.sleep(0.01)
    print(json.dumps([[r.levelname, r.getMessage(), bool(r.exc_info)] for r in seen.records]))
"""

_EXIT_AS_THE_STANDBY_DIES = (
    _RECORDING
    + """channel = ipchannel.Channel("test", lambda conn: None)
channel.monitor_interval = 0.02
channel.connect(timeout=10)

def the_standby_dies_as_we_exit():
    # Runs before the channel's own atexit close (last registered, first run): the monitor ticks
    # on in an exiting interpreter, finds the standby's place free, and (3.12+) may start no thread.
    os.kill(int(sys.argv[1]), signal.SIGKILL)
    report_once_logged("does not stand by")

atexit.register(the_standby_dies_as_we_exit)
"""
)


@pytest.mark.timeout(60)
def test_an_exiting_process_neither_stands_by_nor_logs_an_error(peers: Peers) -> None:
    # gunicorn --max-requests, Python 3.12: a worker exits as the standby is promoted; its monitor
    # tried to stand by next and logged "can't create new thread at interpreter shutdown".
    _, host, standby = _started_with_a_standby(peers, 2)
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_AS_THE_STANDBY_DIES, str(standby.pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result
    records = json.loads(result.stdout)
    assert any("does not stand by" in message for _, message, _ in records), records
    assert not [r for r in records if r[0] in ("WARNING", "ERROR", "CRITICAL") or r[2]], records
    assert "Traceback" not in result.stderr, result.stderr
    assert host.call("request", text="x")["reply"] == f"{host.pid} x"


_EXIT_AS_EVERY_HOST_DIES = (
    _RECORDING
    + """channel = ipchannel.RequestChannel("test", None)
channel.subscribe(lambda message: None, timeout=10)

def every_other_process_dies_as_we_exit():
    # Before the channel's own atexit close: the subscriber thread finds no host, and tries to
    # become host in an exiting interpreter (Python 3.12 starts no thread then).
    for pid in sys.argv[1:]:
        os.kill(int(pid), signal.SIGKILL)
    report_once_logged("cannot host", "elected")

atexit.register(every_other_process_dies_as_we_exit)
"""
)


@pytest.mark.timeout(60)
def test_a_subscriber_exiting_as_every_host_dies_logs_no_error(peers: Peers) -> None:
    # gunicorn --max-requests, Python 3.12: the subscriber thread of an exiting worker lost its host,
    # tried to host, and died of "can't create new thread at interpreter shutdown" (a traceback).
    group = peers.start_requests(2)
    for peer in group:
        peer.call("subscribe")
    others = [str(peer.pid) for peer in group]
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_AS_EVERY_HOST_DIES, *others],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result
    records = json.loads(result.stdout)
    assert not [r for r in records if r[0] in ("WARNING", "ERROR", "CRITICAL")], records
    assert "Traceback" not in result.stderr, result.stderr


def test_auto_reconnect_off_behaves_like_a_plain_socket(peers: Peers) -> None:
    a, b = peers.start(2)
    _connect_all([a, b])
    host = peers.host([a, b])
    client = b if host is a else a
    client.call("set_auto_reconnect", value=False)
    client.call("request", text="warm")
    host.kill()
    wait_until(lambda: client.call("info")["is_host"], timeout=5)
    result = client.call("send_then_recv_error", text="lost")
    # a plain socket: EOF (empty read) or a reset, never a silent reconnect
    assert result.get("data", "") == "" or result.get("error") in {"ConnectionResetError", "BrokenPipeError"}
    # connect() again gives a working socket
    client.call("connect")
    assert client.call("request", text="again")["reply"] == f"{client.pid} again"


def test_handler_closing_the_connection_is_a_plain_eof(peers: Peers) -> None:
    a, b = peers.start(2)
    _connect_all([a, b])
    host = peers.host([a, b])
    client = b if host is a else a
    # "bye" makes the handler return: the client sees EOF, not HostChanged, and no failover happens
    assert client.call("send_then_recv_error", text="bye") == {"ok": True, "data": ""}
    assert client.call("info")["host_pid"] == host.pid
    assert host.call("info")["is_host"]


@pytest.mark.timeout(60)
def test_a_host_that_closes_and_lives_on_is_replaced_even_where_nobody_was_connected(peers: Peers) -> None:
    host, idle = peers.start(2)
    host.call("connect")
    assert idle.call("join")["host_pid"] == host.pid  # knows the host, holds no connection
    host.call("close")  # hands over; its process goes on living
    # the idle process notices the record is gone (not the pid: it still runs) and takes over
    wait_until(lambda: idle.call("info")["is_host"], timeout=5)
    assert idle.call("connect", timeout=2)["host_pid"] == idle.pid
