"""A short soak: 8 processes requesting in a loop while the host is SIGKILLed every 200-500 ms.

The full one is ``python benchmarks/soak.py`` (60 s); both run ``benchmarks.soak.run_soak``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from benchmarks.soak import _grew, _settled, run_soak
from ipchannel._core.server import IDLE_THREADS

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(120)
def test_short_soak_loses_nothing_and_never_has_two_hosts(runtime_dir: Path) -> None:
    report = run_soak(seconds=6, processes=8, threads=2, runtime_dir=str(runtime_dir))
    assert report.failures == []  # every request answered, by its own reply
    assert report.kills >= 5
    assert report.answered > 1000
    assert report.samples_with_a_host > 0  # the sampler does see the serving host...
    assert report.max_serving_at_once == 1  # ...and never two
    assert report.leftover_files == []
    assert report.growth == []
    assert len(report.failover.samples) >= report.kills  # the clients did fail over


def _resources(*names: str, fds: int = 17, pidfds: int = 0) -> dict[str, object]:
    kinds = ["anon_inode:[pidfd]"] * pidfds + ["socket:"] * (fds - pidfds)
    return {"threads": len(names), "fds": fds, "thread_names": list(names), "fd_kinds": kinds}


def test_the_soak_counts_a_standbys_handler_threads_starting_late_as_no_growth() -> None:
    # a CI run: a standby's first look saw 1 of the 8 handler threads its server thread starts
    names = ("MainThread", "loop", "loop", "ipchannel-handler", "ipchannel-monitor", "ipchannel-server")
    start = _resources(*names)
    finish = ("MainThread", *["ipchannel-handler"] * IDLE_THREADS, "ipchannel-monitor", "ipchannel-server")
    assert not _grew(start, _resources(*finish))
    assert _grew(start, _resources(*finish, "ipchannel-handler"))  # past the bound: growth
    assert _grew(start, _resources(*names, "ipchannel-monitor"))
    assert _grew(start, _resources(*names, fds=18))


def test_the_soak_counts_the_monitor_s_pidfd_of_the_next_host_as_no_growth() -> None:
    # a CI run: a client's first look came between two hosts (no pidfd), its last with one
    names = ("MainThread", "ipchannel-monitor")
    assert not _grew(_resources(*names, fds=13), _resources(*names, fds=14, pidfds=1))
    assert _grew(_resources(*names, fds=13), _resources(*names, fds=15, pidfds=2))  # two: growth
    assert _grew(_resources(*names, fds=14, pidfds=1), _resources(*names, fds=15, pidfds=1))


def test_the_soak_looks_again_before_it_counts_growth() -> None:
    # a CI run: the last look caught the monitor reading the host's /proc/PID/stat, one fd more
    start = _resources("MainThread", "ipchannel-monitor")
    looks = iter([("client", _resources("MainThread", "ipchannel-monitor", fds=18)), ("client", start)])
    assert _settled(lambda: next(looks), "client", start) == ("client", start)
    grown = ("client", _resources("MainThread", "ipchannel-monitor", fds=18))
    assert _settled(lambda: grown, "client", start, within=0.2) == grown  # still there: growth
    assert _settled(lambda: ("host", start | {"fds": 30}), "client", start)[0] == "host"  # not compared
