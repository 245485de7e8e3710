"""Where a crash failover's time goes: the dead host's teardown, and every process's CPU after it.

``python -m benchmarks.failover_profile [--clients 8] [--kills 12] [--trials 10]``

A diagnostic, not a benchmark (no baseline, nothing asserted). First, the kernel's part:
SIGKILL -> exit notice (a pidfd) of a bare interpreter, of one holding an inotify watch
(a host's term notices are one), and of a channel's host; and SIGKILL -> its flock free,
for a process that opened its lock before its inotify descriptor and for one that opened it
after. Then the crash failover scenario of ``python -m benchmarks --only failover``: per kill,
the CPU (``/proc/PID/task/*/schedstat``) each surviving client and the new host used until
every client answered, and 100 ms later.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .run import crash_failovers, workers

_INOTIFY = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
notice = libc.inotify_init1(os.O_CLOEXEC)
libc.inotify_add_watch(notice, os.fsencode({directory!r}), 0x300)  # names created or deleted
"""
_LOCK = """
import fcntl, os
lock = os.open({path!r}, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
"""
_HOST = """
import ipchannel
channel = ipchannel.Channel("profile", lambda sock: None, runtime_dir={directory!r})
channel.connect()
"""


def _killed(process: subprocess.Popen[bytes], lock: str | None = None) -> tuple[float, float | None]:
    """SIGKILL ``process`` once ready; return ms until its exit notice, and until ``lock`` is free."""
    assert process.stdout is not None
    process.stdout.readline()
    time.sleep(0.3)  # settled, as a host is between failovers
    notice, freed = os.pidfd_open(process.pid), []
    taker = None
    if lock is not None:

        def take() -> None:
            fd = os.open(lock, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the dying process lets it go
            freed.append(time.perf_counter_ns())
            os.close(fd)

        taker = threading.Thread(target=take)
        taker.start()
        time.sleep(0.05)  # blocked in flock by now
    poll = select.poll()
    poll.register(notice, select.POLLIN)
    started = time.perf_counter_ns()
    process.kill()
    poll.poll(10_000)
    exited = time.perf_counter_ns()
    os.close(notice)
    if taker is not None:
        taker.join(10)
    process.wait()
    return (exited - started) / 1e6, (freed[0] - started) / 1e6 if freed else None


def _process(setup: str) -> subprocess.Popen[bytes]:
    code = f"{setup}\nimport sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def teardown(trials: int) -> None:
    """The kernel's part: a dying process's exit notice and its lock, with and without inotify."""
    with tempfile.TemporaryDirectory() as directory:
        lock = os.path.join(directory, "lock")
        cases = {
            "bare interpreter": "",
            "holding one inotify watch": _INOTIFY.format(directory=directory),
            "a channel's host, no client": _HOST.format(directory=directory),
        }
        for label, setup in cases.items():
            exits = [_killed(_process(setup))[0] for _ in range(trials)]
            print(f"SIGKILL -> exit notice, {label}: {_spread(exits)}")
        for label, setup in {
            "lock opened before the inotify descriptor": _LOCK + _INOTIFY,
            "lock opened after the inotify descriptor": _INOTIFY + _LOCK,
        }.items():
            runs = [
                _killed(_process(setup.format(path=lock, directory=directory)), lock) for _ in range(trials)
            ]
            print(f"SIGKILL -> lock free, {label}: {_spread([free or 0.0 for _exit, free in runs])}")


def _spread(samples: list[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "no sample"
    median = statistics.median(ordered)
    return f"p50 {median:.2f} ms, min {ordered[0]:.2f}, max {ordered[-1]:.2f} (n={len(ordered)})"


def _cpu(pid: int) -> float:
    """Seconds of CPU every thread of ``pid`` used so far (0 once it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except OSError:
            continue  # a thread that ended meanwhile
    return total / 1e9


def failover(clients: int, kills: int) -> None:
    """The crash failover scenario, with each process's CPU per kill."""
    answered, per_client, host_cpu, later_client, later_host = [], [], [], [], []
    before: dict[int, float] = {}

    def snapshot(survivors: list[int]) -> None:
        time.sleep(0.2)  # every thread parked
        before.clear()
        before.update({pid: _cpu(pid) for pid in survivors})

    with tempfile.TemporaryDirectory() as directory, workers() as started:
        for kill in crash_failovers(started, clients, kills, "fo", directory, before=snapshot):
            at_answer = {pid: _cpu(pid) - before[pid] for pid in kill.survivors}
            time.sleep(0.1)
            after = {pid: _cpu(pid) - before[pid] for pid in kill.survivors}
            answered.append((max(kill.answered_at) - kill.at) / 1e6)
            others = [pid for pid in kill.survivors if pid != kill.host]
            if others:  # none when the new host is the only client that outlived the kill
                per_client.append(statistics.mean(at_answer[pid] for pid in others) * 1000)
                later_client.append(statistics.mean(after[pid] for pid in others) * 1000)
            host_cpu.append(at_answer[kill.host] * 1000)
            later_host.append(after[kill.host] * 1000)
    print(f"crash failover, {clients} clients, {kills} kills: every client answered {_spread(answered)}")
    print(f"  CPU of each other client until then: {_spread(per_client)}")
    print(f"    100 ms later: {_spread(later_client)}")
    print(f"  CPU of the new host until then: {_spread(host_cpu)}")
    print(f"    100 ms later: {_spread(later_host)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip("`"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--trials", type=int, default=10, help="kills of each process of the first part")
    args = parser.parse_args(argv)
    if not hasattr(os, "pidfd_open"):
        print("needs os.pidfd_open (Linux, Python 3.9+)")
        return 1
    teardown(args.trials)
    failover(args.clients, args.kills)
    return 0


if __name__ == "__main__":
    sys.exit(main())
