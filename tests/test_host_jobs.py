"""Host lifecycle hooks, join(), and run_on_host: one process at a time runs the job, across kills."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import _peers
import pytest
from conftest import freeze, spawned, wait_until

import ipchannel

if TYPE_CHECKING:
    from collections.abc import Callable
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


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.parametrize(
    ("time_limit", "error", "match"),
    [
        ("5", TypeError, r"time_limit must be a number of seconds \(int or float\), or None .* not str"),
        (True, TypeError, r"time_limit must be a number of seconds .* not bool"),
        (0, ValueError, r"time_limit must be a positive, finite number of seconds .* not 0"),
        (-1.5, ValueError, r"time_limit must be a positive, finite number of seconds .* not -1.5"),
        (float("inf"), ValueError, r"time_limit must be a positive, finite number .* not inf"),
        (float("nan"), ValueError, r"time_limit must be a positive, finite number .* not nan"),
    ],
)
def test_run_on_host_refuses_a_bad_time_limit_naming_it(time_limit: object, error: type, match: str) -> None:
    with ipchannel.Channel("x", _peers.echo_handler) as channel, pytest.raises(error, match=match):
        ipchannel.run_on_host(channel, print, every=1, time_limit=time_limit)  # type: ignore[arg-type]


def _timed_job(who: str, runs: list[tuple[str, float, float]], began: threading.Event) -> Callable[[], None]:
    def job() -> None:
        start = time.monotonic()
        began.set()
        time.sleep(0.8)
        runs.append((who, start, time.monotonic()))

    return job


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.timeout(30)
def test_a_run_that_outlives_stop_timeout_is_an_error_and_the_next_host_waits_time_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The host hands over while a 0.8 s run goes on; it waits stop_timeout (0.2 s) for it, then lets
    # the lock go. Before, the next host ran the job one interval (0.05 s) after taking over.
    runs: list[tuple[str, float, float]] = []
    began = threading.Event()
    first, second = ipchannel.Channel("x", _peers.echo_handler), ipchannel.Channel("x", _peers.echo_handler)
    try:
        assert first.join() is True
        options: dict[str, Any] = {"every": 0.05, "stop_timeout": 0.2, "time_limit": 1.0}
        ipchannel.run_on_host(first, _timed_job("old", runs, began), **options)
        job = ipchannel.run_on_host(second, _timed_job("new", runs, threading.Event()), **options)
        assert began.wait(10)
        held = second.connect()
        first.close()  # steps down while the run goes on
        held.sendall(b"who\n")  # answered by the next host: the election is over once it is
        assert _peers.read_line(held) == f"{os.getpid()} who\n".encode()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("did not return within stop_timeout=0.2 s" in e and "still runs" in e for e in errors), (
            errors
        )
        wait_until(lambda: any(who == "new" for who, _, _ in runs), timeout=10)
        job.stop()
        held.close()
    finally:
        second.close()
        first.close()
    wait_until(lambda: not any(t.name == "ipchannel-job:x" for t in threading.enumerate()), timeout=5)
    ordered = sorted(runs, key=lambda run: run[1])
    assert ordered[0][0] == "old"
    for (who_a, _, end), (who_b, start, _) in itertools.pairwise(ordered):
        assert start >= end, f"a run in {who_b} started {end - start:.2f} s before one in {who_a} ended"


def _runs(path: Path) -> list[tuple[float, float, int]]:
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return sorted((float(start), float(end), int(pid)) for pid, start, end in rows)


@pytest.mark.timeout(60)
def test_a_local_host_frozen_mid_run_then_resumed_never_runs_it_next_to_another(
    peers: Peers, tmp_path: Path
) -> None:
    # Locally the frozen host keeps its flock: nobody else may host, however long it is stuck
    # (longer than the 2 s after which the others say the election is stuck), and on waking it
    # finishes its run before anyone else starts one.
    log = tmp_path / "runs.log"
    group = peers.start_requests(3)
    for p in group:
        p.call("run_on_host", path=str(log), every=0.05, duration=0.3)
    wait_until(lambda: len(_runs(log)) >= 2)
    host = peers.host(group)
    freeze(host.pid)  # most likely mid-run: it runs 0.3 s of every 0.35 s
    try:
        before = len(_runs(log))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # nobody runs it meanwhile
            assert len(_runs(log)) == before, _runs(log)
            time.sleep(0.05)
    finally:
        os.kill(host.pid, signal.SIGCONT)
    wait_until(lambda: len(_runs(log)) >= before + 3, timeout=10)
    host.kill()  # and a SIGKILL after all that: the next host takes over
    count = len(_runs(log))
    wait_until(lambda: len(_runs(log)) >= count + 3, timeout=15)
    runs = _runs(log)
    assert len({pid for _, _, pid in runs}) >= 2
    for (_, end, pid_a), (start, _, pid_b) in itertools.pairwise(runs):
        assert start >= end, f"a run of {pid_b} started {end - start:.2f} s before one of {pid_a} ended"


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.timeout(30)
def test_a_process_hosting_again_waits_for_its_own_run_from_the_term_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A term ends while a run goes on past stop_timeout (or with the claim already lapsed: not
    # waited for); if this process hosts again at once, its new term must not start a second run.
    # The hooks are called as a step-down and a re-election would (the lock is never let go here).
    runs: list[tuple[str, float, float]] = []
    began = threading.Event()
    with ipchannel.Channel("x", _peers.echo_handler) as channel:
        job = ipchannel.run_on_host(
            channel, _timed_job("run", runs, began), every=0.01, stop_timeout=0.1, time_limit=0.01
        )
        assert began.wait(10)
        job._demoted()  # noqa: SLF001 - the on_demoted hook: 0.1 s, then the run goes on
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        job._elected(channel.generation or 0)  # noqa: SLF001 - the on_elected hook of the next term
        wait_until(lambda: len(runs) >= 3, timeout=10)
        job.stop()
    wait_until(lambda: not any(t.name == "ipchannel-job:x" for t in threading.enumerate()), timeout=5)
    ordered = sorted(runs, key=lambda run: run[1])
    for (_, _, end), (_, start, _) in itertools.pairwise(ordered):
        assert start >= end, f"a run started {end - start:.2f} s before the one before it ended"
