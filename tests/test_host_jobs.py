"""Host lifecycle hooks, join(), and run_on_host: one process at a time runs the job, across kills."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import TYPE_CHECKING

import _peers
import pytest
from conftest import spawned, wait_until

import ipchannel

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Peer, Peers


@pytest.mark.usefixtures("runtime_dir")
def test_hooks_run_once_per_term_in_the_electing_thread(caplog: pytest.LogCaptureFixture) -> None:
    events: list[tuple[str, int, str]] = []
    channel = ipchannel.Channel("x", _peers.echo_handler)
    channel.on_elected(lambda g: events.append(("elected", g, threading.current_thread().name)))
    channel.on_demoted(lambda g: events.append(("demoted", g, threading.current_thread().name)))

    @channel.on_elected
    def broken(_generation: int) -> None:
        raise RuntimeError("a buggy hook")

    assert channel.join() is True
    assert events == [("elected", 1, "MainThread")]
    assert "on_elected callback" in caplog.text
    assert "a buggy hook" in caplog.text
    channel.connect().close()  # already host: no second election
    second = ipchannel.Channel("x", _peers.echo_handler)
    assert second.join() is False  # a live host exists: joins as a client, connects nothing
    assert second.host_pid == os.getpid()
    second.close()
    channel.close()
    assert events == [("elected", 1, "MainThread"), ("demoted", 1, "MainThread")]
    with pytest.raises(TypeError, match="callback must be callable"):
        channel.on_elected(42)  # type: ignore[arg-type]


def _entries(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, at = line.split()
        out.append((int(pid), float(at)))
    return out


@pytest.mark.timeout(120)
def test_run_on_host_runs_in_one_process_at_a_time_across_kills_and_exits(
    peers: Peers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ipchannel")
    every, log = 0.1, tmp_path / "job.log"
    group = peers.start_requests(8)
    for p in group:
        p.call("run_on_host", path=str(log), every=every)
    alive: dict[int, Peer] = {p.pid: p for p in group}
    hosts = []
    for step in range(5):
        seen = len(_entries(log))
        wait_until(lambda seen=seen: len(_entries(log)) >= seen + 3, timeout=15)  # type: ignore[misc]
        host = _entries(log)[-1][0]
        assert host in alive
        hosts.append(host)
        if step == 2:
            alive.pop(host).exit()  # a graceful exit: the job stops before the lock is released
        else:
            alive.pop(host).kill()
    seen = len(_entries(log))
    wait_until(lambda: len(_entries(log)) >= seen + 3, timeout=15)
    entries = _entries(log)
    assert len(set(hosts)) == 5  # each kill or exit moved the job to another process
    assert {pid for pid, _ in entries} <= set(hosts) | set(alive)
    # never two runs closer than the interval, handovers included: so never two processes at once
    for (pid_a, at_a), (pid_b, at_b) in itertools.pairwise(entries):
        assert at_b - at_a >= every - 0.005, (pid_a, pid_b, at_b - at_a)


@pytest.mark.usefixtures("runtime_dir")
def test_run_on_host_rejects_bad_arguments() -> None:
    with ipchannel.Channel("x", _peers.echo_handler) as channel:
        with pytest.raises(TypeError, match="func must be callable"):
            ipchannel.run_on_host(channel, 42, every=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="every must be a positive, finite number"):
            ipchannel.run_on_host(channel, print, every=0)
        with pytest.raises(TypeError, match=r"every must be a number of seconds \(int or float\), not str"):
            ipchannel.run_on_host(channel, print, every="5")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="channel must be a Channel, a RequestChannel"):
            ipchannel.run_on_host(42, print, every=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="ttl: pass these to the channel you made"):
            ipchannel.run_on_host(channel, print, every=1, ttl=5)
        with pytest.raises(TypeError, match="join_timeout must be a number"):
            ipchannel.run_on_host(channel, print, every=1, join_timeout="5")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stop_timeout must be a number of seconds >= 0"):
            ipchannel.run_on_host(channel, print, every=1, stop_timeout=-1)
        job = ipchannel.run_on_host(channel, lambda: None, every=0.01)
        assert job.running  # this process hosts
        wait_until(lambda: job.runs >= 3)
        assert repr(job).startswith("<HostJob test_run_on_host_rejects_bad_arguments.<locals>.<lambda> every")
        assert " every 0.01 s on channel 'x': running, " in repr(job)
        job.stop()
        assert not job.running
        assert ": stopped," in repr(job)


@pytest.mark.timeout(60)
def test_a_forked_child_starts_with_no_job_thread_and_no_runs_of_its_own(runtime_dir: Path) -> None:
    with spawned(_peers.job_fork_main, "job", str(runtime_dir)) as (_proc, conn):
        assert conn.poll(30)
        report = conn.recv()
    assert report["status"] == 0
    assert report["parent_runs"] >= 3
    assert report["parent_running"]
    child = report["child"]
    # before: the parent's run count, as if its runs had been the child's
    assert (child["runs"], child["running"], child["is_host"]) == (0, False, False)
    assert ": waiting to host, 0 runs in this process>" in child["repr"]


@pytest.mark.usefixtures("runtime_dir")
def test_run_on_host_by_name_makes_the_jobs_own_channel_and_stop_closes_it() -> None:
    job = ipchannel.run_on_host("named-job", lambda: None, every=0.01)
    assert job.running
    wait_until(lambda: job.runs >= 3)
    job.stop()  # closes the channel it made: no thread or file of it is left (the leak check)
    assert not job.running
