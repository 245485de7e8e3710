"""Soak: requests in a loop from every process while the host is SIGKILLed again and again.

``python benchmarks/soak.py [--seconds 60] [--processes 8] [--threads 2] [--json PATH]``

Each process runs a RequestChannel and ``threads`` threads calling ``request()``
in a loop. A killer SIGKILLs whichever process hosts every 200-500 ms and
starts a replacement, so ``processes`` stay alive. Reported and checked:

- every request got its own reply (none lost, none answered with another's);
- never two processes serving the channel at once (sampled from ``/proc``:
  listening sockets of the channel held by live, non-exiting processes, except
  the standby's: it listens before it hosts, and its side socket tells it apart);
- after everyone exits, no socket, record or temporary file is left;
- no thread or descriptor growth in the processes that survive (a server's idle handler threads
  up to their bound, the monitor's pidfd up to one);
- failover: from each kill to each client thread's first reply from the new host.

``run_soak()`` is also what the test suite runs, for a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in {None, ""}:  # run as a script: make ``benchmarks`` and ``ipchannel`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ipchannel
from benchmarks._stats import Series
from ipchannel import _platform
from ipchannel._core.server import IDLE_THREADS

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

SPAWN = multiprocessing.get_context("spawn")
NAME = "soak"
_PIDFD = "anon_inode:[pidfd]"  # a monitor's exit notice of the host it watches


# -- the worker processes ----------------------------------------------------------------------


def on_request(message: Any) -> Any:
    """Echo the request id with the host's pid."""
    return {"id": message["id"], "host": os.getpid()}


def _resources() -> dict[str, Any]:
    names = sorted(t.name.split(":")[0] for t in threading.enumerate())
    fds = sorted(_describe_fd(fd) for fd in os.listdir("/proc/self/fd"))
    return {"threads": len(names), "fds": len(fds), "thread_names": names, "fd_kinds": fds}


def _describe_fd(fd: str) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
    if target == _PIDFD:
        return target
    return target.split("[")[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target


def _snapshot(channel: ipchannel.RequestChannel) -> tuple[str, dict[str, Any]]:
    """Return the role ("host", "standby" or "client") and the resources, in one consistent state.

    Under the channel's election lock: becoming standby (its lock, server and side socket,
    ``ipchannel._local.standby``) or host happens under it, so no snapshot lands halfway.
    """
    with channel.channel._connector.elect_lock:  # noqa: SLF001
        if channel.channel.is_host:
            role = "host"
        else:
            role = "standby" if channel.channel._hosting.standing_by else "client"  # noqa: SLF001
        return role, _resources()


def _grew(start: dict[str, Any], finish: dict[str, Any]) -> bool:
    """Tell whether threads or descriptors grew between two ``_resources()``.

    A server's idle handler threads may, up to their bound (``IDLE_THREADS``): a standby's
    server thread starts them after the standby is made, so a first look can see only some.
    So may the monitor's pidfd, up to one: it has one while it knows the host, none between
    hosts (a CI run's first look came right after a kill).
    """

    def handlers(resources: dict[str, Any]) -> int:
        return sum(name == "ipchannel-handler" for name in resources["thread_names"])

    def pidfds(resources: dict[str, Any]) -> int:
        return sum(kind == _PIDFD for kind in resources["fd_kinds"])

    others_grew = finish["threads"] - handlers(finish) > start["threads"] - handlers(start)
    handlers_grew = handlers(finish) > max(handlers(start), IDLE_THREADS)
    fds_grew = finish["fds"] - pidfds(finish) > start["fds"] - pidfds(start)
    return others_grew or handlers_grew or fds_grew or pidfds(finish) > max(pidfds(start), 1)


def _settled(
    look: Callable[[], tuple[str, dict[str, Any]]],
    start_role: str,
    start: dict[str, Any],
    within: float = 2.0,
) -> tuple[str, dict[str, Any]]:
    """Look again until nothing grew (or the role changed), for up to ``within`` seconds.

    One look can catch a descriptor or thread that lives for a moment (a CI run caught the
    monitor reading the host's ``/proc/PID/stat``); growth still there after ``within`` is kept.
    """
    deadline = time.monotonic() + within
    while True:
        role, resources = look()
        if role != start_role or not _grew(start, resources) or time.monotonic() >= deadline:
            return role, resources
        time.sleep(0.05)


def _baseline(
    channel: ipchannel.RequestChannel, answered: list[threading.Event]
) -> tuple[str, dict[str, Any]]:
    """Return the first look once every thread had a reply, so each has its connection.

    Not after a guessed delay: a failover can hold a thread's first connection back. Of ten
    looks over half a second, the one with the most descriptors: a look in mid-failover sees
    a connection closed before its successor opens, and would make the last look "grow".
    """
    for first in answered:
        first.wait(30)
    looks = []
    for _ in range(10):
        looks.append(_snapshot(channel))
        time.sleep(0.05)
    role = looks[-1][0]
    return max((look for look in looks if look[0] == role), key=lambda look: look[1]["fds"])


def worker(conn: Connection, runtime_dir: str, threads: int) -> None:
    """Request in a loop from ``threads`` threads; report progress every 100 ms until told to stop."""
    channel = ipchannel.RequestChannel(NAME, on_request, runtime_dir=runtime_dir)
    lock, stop = threading.Lock(), threading.Event()
    counts = {"answered": 0, "failed": 0}
    events: list[dict[str, Any]] = []  # host changes seen and failures, sent with the next report
    answered = [threading.Event() for _ in range(threads)]  # each thread's first reply: its connection

    def loop(index: int) -> None:
        last_host = None
        for n in range(sys.maxsize):
            if stop.is_set():
                return
            ident = f"{os.getpid()}-{index}-{n}"
            try:
                reply = channel.request({"id": ident}, timeout=30)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
                with lock:
                    counts["failed"] += 1
                    events.append({"failed": f"{type(exc).__name__}: {exc}"})
                continue
            now = time.monotonic_ns()
            with lock:
                if reply["id"] != ident:
                    counts["failed"] += 1
                    events.append({"failed": f"wrong reply {reply!r} to {ident}"})
                    continue
                counts["answered"] += 1
                answered[index].set()
                if reply["host"] != last_host:
                    events.append({"new_host": reply["host"], "at": now, "thread": index})
                    last_host = reply["host"]

    channel.request({"id": "warm-up"}, timeout=30)
    runners = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in runners:
        t.start()
    start_role, start = _baseline(channel, answered)
    conn.send({"pid": os.getpid(), "start": start, "role": start_role})
    while not conn.poll(0.1):
        with lock:
            report, events[:] = {"counts": dict(counts), "events": list(events)}, []
        conn.send(report)
    stop.set()
    for t in runners:
        t.join(35)
    role, resources = _settled(lambda: _snapshot(channel), start_role, start)
    end = {"pid": os.getpid(), "end": resources, "role": role}
    with lock:
        end |= {"counts": dict(counts), "events": list(events)}
    channel.close()
    conn.send(end)


# -- the killer and the checks ---------------------------------------------------------------------


@dataclass
class SoakReport:
    seconds: float
    kills: int = 0
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    max_serving_at_once: int = 0
    samples: int = 0
    samples_with_a_host: int = 0  # shows the sampler does see a serving host
    leftover_files: list[str] = field(default_factory=list)
    growth: list[str] = field(default_factory=list)  # survivors whose threads or fds grew
    failover: Series = field(
        default_factory=lambda: Series("kill -> a client's first reply from the new host", unit="ms")
    )

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and self.max_serving_at_once <= 1
            and not self.leftover_files
            and not self.growth
        )

    def table(self) -> str:
        f = self.failover
        rows = [
            f"soak: {self.seconds:.0f} s, {self.kills} host kills, {self.answered:,} requests answered",
            f"  lost or wrong replies:              {len(self.failures)}",
            (
                f"  most processes serving at once:     {self.max_serving_at_once} "
                f"({self.samples:,} samples, {self.samples_with_a_host:,} with one host serving)"
            ),
            f"  files left after exit:              {self.leftover_files or 'none'}",
            f"  thread/fd growth in survivors:      {self.growth or 'none'}",
            (
                f"  failover (N={len(f.samples)}): p50 {f.scaled(f.median()):.1f} ms, "
                f"p99 {f.scaled(f.p99()):.1f} ms, max {f.scaled(max(f.samples, default=0)):.1f} ms"
            ),
            f"  verdict:                            {'OK' if self.ok else 'FAILED'}",
        ]
        rows.extend(f"  failure: {failure}" for failure in self.failures[:10])
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "kills": self.kills,
            "answered": self.answered,
            "failures": self.failures,
            "max_serving_at_once": self.max_serving_at_once,
            "samples": self.samples,
            "samples_with_a_host": self.samples_with_a_host,
            "leftover_files": self.leftover_files,
            "growth": self.growth,
            "failover_ms": {
                "n": len(self.failover.samples),
                "p50": self.failover.scaled(self.failover.median()),
                "p99": self.failover.scaled(self.failover.p99()),
                "max": self.failover.scaled(max(self.failover.samples, default=0)),
            },
            "ok": self.ok,
        }


class _Worker:
    """A worker process; started without waiting, so the killer keeps its pace."""

    def __init__(self, runtime_dir: str, threads: int) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc: BaseProcess = SPAWN.Process(target=worker, args=(child, runtime_dir, threads), daemon=True)
        self.proc.start()
        child.close()
        self.pid: int = self.proc.pid or 0
        self.hello: dict[str, Any] | None = None  # its first message, once it runs
        self.killed = False

    def wait_ready(self, timeout: float) -> None:
        if self.hello is None:
            if not self.conn.poll(timeout):
                raise RuntimeError(f"soak worker {self.pid} did not start within {timeout} s")
            self.hello = self.conn.recv()


def _serving_now(workers: list[_Worker], runtime_dir: str) -> int:
    """How many live, non-exiting workers hold a listening socket of the channel (from /proc).

    A standby listens too, on its future host socket, before it hosts; it also holds its side
    socket (``.NAME_PID.sock``) until it has published its record and socket: not counted then.
    """
    listening, side = set(), set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            parts = line.split()
            if len(parts) < 8 or not int(parts[3], 16) & 0x10000:
                continue
            if parts[7].startswith(f"{runtime_dir}/.{NAME}."):
                listening.add(f"socket:[{parts[6]}]")
            elif parts[7].startswith(f"{runtime_dir}/.{NAME}_"):
                side.add(f"socket:[{parts[6]}]")
    serving = 0
    for w in workers:
        if w.killed or _platform.process_exiting(w.pid):
            continue
        with contextlib.suppress(OSError):
            fds = {os.readlink(f"/proc/{w.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{w.pid}/fd")}
            serving += bool(fds & listening) and not fds & side
    return serving


def _host_pid(runtime_dir: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid: int = json.loads(Path(runtime_dir, f"{NAME}.host").read_text())["pid"]
        return pid
    return None


class _Soak:
    """The killer: keeps ``processes`` workers alive, kills the host, samples, collects reports."""

    def __init__(self, report: SoakReport, directory: str, processes: int, threads: int) -> None:
        self.report, self.directory, self.threads = report, directory, threads
        self.workers = [_Worker(directory, threads) for _ in range(processes)]
        self.kills: list[int] = []
        self.seen: dict[tuple[int, int], int] = {}  # (pid, thread) -> the host it last heard from
        self.totals: dict[int, dict[str, int]] = {}
        for w in self.workers:
            w.wait_ready(60)

    def run(self, seconds: float, *, progress: bool) -> None:
        end = time.monotonic() + seconds
        next_kill = time.monotonic() + random.uniform(0.2, 0.5)  # noqa: S311 - not crypto
        while time.monotonic() < end:
            for w in self.workers:
                self._drain(w)
            serving = _serving_now(self.workers, self.directory)
            self.report.max_serving_at_once = max(self.report.max_serving_at_once, serving)
            self.report.samples += 1
            self.report.samples_with_a_host += serving == 1
            if time.monotonic() >= next_kill and self._kill_the_host():
                next_kill = time.monotonic() + random.uniform(0.2, 0.5)  # noqa: S311
                if progress:
                    print(f"[soak {time.strftime('%H:%M:%S')}] kill {self.report.kills}", file=sys.stderr)
            time.sleep(0.01)

    def _drain(self, w: _Worker) -> None:
        while not w.killed and w.conn.poll(0):
            try:
                message = w.conn.recv()
            except EOFError:
                return
            if w.hello is None:
                w.hello = message
            else:
                self._absorb(w, message)

    def _kill_the_host(self) -> bool:
        host = _host_pid(self.directory)
        victim = next((w for w in self.workers if w.pid == host and not w.killed), None)
        if victim is None:
            return False  # no host elected yet, or not one of ours: try again next round
        self.kills.append(time.monotonic_ns())
        os.kill(victim.pid, signal.SIGKILL)
        victim.killed = True
        victim.proc.join(10)
        victim.conn.close()
        self.report.kills += 1
        self.workers.append(_Worker(self.directory, self.threads))  # keep the number up
        return True

    def _absorb(self, w: _Worker, message: dict[str, Any]) -> None:
        self.totals[w.pid] = message["counts"]
        for event in message["events"]:
            if "failed" in event:
                self.report.failures.append(event["failed"])
                continue
            key = (w.pid, event["thread"])
            previous, self.seen[key] = self.seen.get(key), event["new_host"]
            before = [k for k in self.kills if k <= event["at"]]
            if previous is not None and before:  # not the thread's first host: a failover
                self.report.failover.samples.append(event["at"] - before[-1])

    def stop(self) -> None:
        survivors = [w for w in self.workers if not w.killed]
        for w in survivors:
            w.wait_ready(60)
            w.conn.send("stop")
        for w in survivors:
            self._stop_one(w)
        self.report.answered = sum(c["answered"] for c in self.totals.values())
        locks = {f"{NAME}.lock", f".{NAME}.standby.lock"}  # lock files stay, by design (filelock issue #31)
        self.report.leftover_files = sorted(p for p in os.listdir(self.directory) if p not in locks)

    def _stop_one(self, w: _Worker) -> None:
        while w.conn.poll(60):
            message = w.conn.recv()
            self._absorb(w, message)
            if "end" in message:
                break
        else:
            self.report.failures.append(f"pid {w.pid} did not stop within 60 s")
            return
        w.proc.join(30)
        assert w.hello is not None
        start, finish = w.hello["start"], message["end"]
        # a host has a handler thread per client, a standby its server ready: compare like with like
        if _grew(start, finish) and w.hello["role"] == message["role"] != "host":
            self.report.growth.append(f"pid {w.pid} ({message['role']}): {start} -> {finish}")

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                w.proc.join(10)
            w.conn.close()


def run_soak(
    seconds: float,
    processes: int = 8,
    threads: int = 2,
    runtime_dir: str | None = None,
    *,
    progress: bool = False,
) -> SoakReport:
    """Run the soak; return what it saw (``report.ok`` says whether every check held)."""
    directory = runtime_dir or tempfile.mkdtemp(prefix="soak-", dir="/tmp")
    report = SoakReport(seconds)
    soak: _Soak | None = None
    try:
        soak = _Soak(report, directory, processes, threads)
        soak.run(seconds, progress=progress)
        soak.stop()
    finally:
        if soak is not None:
            soak.kill_all()
        if runtime_dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to soak (default 60)")
    parser.add_argument("--processes", type=int, default=8, help="processes kept alive (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="requesting threads per process (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = run_soak(args.seconds, args.processes, args.threads, progress=True)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
