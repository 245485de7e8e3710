"""An idle host sleeps like a client (at most about one wake-up a second), yet notices at once what it must.

Wake-ups are voluntary context switches of every thread of the process
(``/proc/PID/task/*/status``), counted while nobody talks to the channel.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

import _peers
import pytest
from conftest import wait_until

import ipchannel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import Peer, Peers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts wake-ups in /proc")

_WINDOW = 5.0  # seconds of idleness measured (both processes at once): a stray wake-up weighs 0.2/s


def _wakeups(pid: int) -> int:
    """Return the voluntary context switches of every thread of ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return total


def _idle_rates(*pids: int) -> list[float]:
    """Return each process's wake-ups per second over the same ``_WINDOW``."""
    before, start = [_wakeups(pid) for pid in pids], time.monotonic()
    time.sleep(_WINDOW)
    took = time.monotonic() - start
    return [(_wakeups(pid) - count) / took for pid, count in zip(pids, before, strict=True)]


def _host_and_client(peers: Peers) -> tuple[Peer, Peer]:
    group = peers.start(2)
    infos = [peer.call("connect") for peer in group]
    (host,) = [peer for peer, info in zip(group, infos, strict=True) if info["is_host"]]
    (client,) = [peer for peer in group if peer is not host]
    wait_until(lambda: client.call("info")["standby"], timeout=10)  # every start-up step behind us
    time.sleep(0.5)
    return host, client


@pytest.mark.timeout(60)
def test_an_idle_host_wakes_at_most_about_once_a_second(peers: Peers) -> None:
    host, client = _host_and_client(peers)
    host_pid, client_pid = host.call("info")["pid"], client.call("info")["pid"]
    host_rate, client_rate = _idle_rates(host_pid, client_pid)
    # the monitor ticks every 2 s (its term's files and server thread tell it the rest), the
    # server's select every 5 s; a client sleeps on the host's exit notice
    assert host_rate <= 1.5, f"idle host: {host_rate:.1f} wake-ups/s"
    assert client_rate <= 1.5, f"idle client: {client_rate:.1f} wake-ups/s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("removed", ["test.sock", "test.lock"])
def test_an_idle_host_steps_down_at_once_when_its_file_goes(
    peers: Peers, runtime_dir: Path, removed: str
) -> None:
    host, client = _host_and_client(peers)
    generation = host.call("info")["generation"]
    start = time.monotonic()
    (runtime_dir / removed).unlink()
    # well inside the idle host's 2 s between ticks: the file's removal woke its monitor
    wait_until(lambda: not host.call("info")["is_host"], timeout=10)
    took = time.monotonic() - start
    assert took < 0.5, f"the host stepped down {took:.2f} s after its {removed} was removed"
    wait_until(lambda: (client.call("info")["generation"] or 0) > generation, timeout=10)  # a new term


@pytest.mark.timeout(60)
def test_processes_trying_the_lock_do_not_wake_the_host(
    channel_host: ipchannel.Channel, runtime_dir: Path
) -> None:
    # what a process campaigning for the lock does to the lock file: open it for writing, fail the
    # flock, close it; only a name that comes or goes, or the record written, is news to the host
    monitor = next(t for t in threading.enumerate() if t.name == "ipchannel-monitor:test")
    assert monitor.native_id is not None
    time.sleep(0.3)  # the term's first look is behind us
    before, start = _thread_wakeups(monitor.native_id), time.monotonic()
    for _ in range(300):
        fd = os.open(runtime_dir / "test.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        time.sleep(0.001)  # one attempt at a time, as processes in a backoff make them
    took = time.monotonic() - start
    woke = _thread_wakeups(monitor.native_id) - before
    assert channel_host.is_host
    # at most its 2 s ticks meanwhile (a wake-up per attempt would be 300)
    assert woke <= 1 + took / 2, f"the host's monitor woke {woke} times in {took:.2f} s of 300 lock attempts"


@pytest.fixture
def channel_host(runtime_dir: Path) -> Iterator[ipchannel.Channel]:
    with ipchannel.Channel("test", _peers.echo_handler, runtime_dir=runtime_dir) as channel:
        channel.connect().close()
        assert channel.is_host
        yield channel


def _thread_wakeups(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches:"))


@pytest.mark.timeout(60)
def test_a_process_waiting_for_a_host_sleeps_and_connects_as_soon_as_one_publishes(
    peers: Peers, runtime_dir: Path
) -> None:
    waiting = ipchannel.Channel("test", _peers.echo_handler, runtime_dir=runtime_dir, may_host=False)
    got: list[object] = []
    ids: list[int] = []

    def connect() -> None:
        ids.append(threading.get_native_id())
        try:
            got.append(waiting.connect(timeout=30))
        except Exception as exc:  # noqa: BLE001 - reported below
            got.append(exc)

    waiter = threading.Thread(target=connect, name="waiter")
    waiter.start()
    try:
        wait_until(lambda: ids and waiting.state == "connecting")
        time.sleep(0.2)
        before, start = _thread_wakeups(ids[0]), time.monotonic()
        time.sleep(1.0)
        rate = (_thread_wakeups(ids[0]) - before) / (time.monotonic() - start)
        # it sleeps on the directory's and the stop Event's notices, not every 0.5 ms (was ~1,500/s)
        assert rate <= 200, f"a process waiting for a host woke {rate:.0f} times a second"
        (host,) = peers.start(1)
        host.call("connect")
        published = time.monotonic()
        waiter.join(10)
        assert not waiter.is_alive()
        took = time.monotonic() - published
        assert isinstance(got[0], ipchannel.ChannelSocket), got
        assert took < 0.5, f"connected {took:.2f} s after the host answered its own connect()"
        got[0].close()
    finally:
        waiting.close()
        waiter.join(10)
