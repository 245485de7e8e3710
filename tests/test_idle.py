"""An idle host sleeps like a client (at most about one wake-up a second), yet notices at once what it must.

Wake-ups are voluntary context switches of every thread of the process
(``/proc/PID/task/*/status``), counted while nobody talks to the channel.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import pytest
from conftest import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Peer, Peers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts wake-ups in /proc")

_WINDOW = 3.0  # seconds of idleness measured


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


def _idle_rate(pid: int) -> float:
    before, start = _wakeups(pid), time.monotonic()
    time.sleep(_WINDOW)
    return (_wakeups(pid) - before) / (time.monotonic() - start)


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
    host_rate, client_rate = _idle_rate(host_pid), _idle_rate(client_pid)
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
