"""Where the CPU of SharedDict ``incr`` from 4 processes x 2 threads goes: per thread, per batch.

``python -m benchmarks.incr_profile [--seconds 4] [--processes 4] [--threads 2]``

A diagnostic, not a benchmark (no baseline): it runs the throughput scenario of
``python -m benchmarks --only shareddict`` alone and prints, for every process, the CPU
each kind of thread used (``/proc/self/task/*/stat``) and its voluntary context switches
(a wake-up, or a wait for the GIL); and, for the host, how many batches it committed,
their size, and how much of the committing thread's time went to waiting for members'
confirmations. It wraps two private methods of the host (``Store.commit`` and
``Members.wait``) to count them: they are the library's own, read only here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import ipchannel
from ipchannel._shareddict import members as _members
from ipchannel._shareddict import store as _store

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

_TICK = os.sysconf("SC_CLK_TCK")


class _Counts:
    """What the host's batches were, counted by wrapping ``Store.commit`` and ``Members.wait``."""

    def __init__(self) -> None:
        self.batches = self.writes = 0
        self.committing = self.waiting = 0.0

    def install(self) -> None:
        commit, wait = _store.Store.commit, _members.Members.wait

        def counted_commit(store: _store.Store, batch: list[Any]) -> Any:
            started = time.perf_counter()
            self.batches += 1
            self.writes += sum(len(item.writes) for item in batch)
            try:
                return commit(store, batch)
            finally:
                self.committing += time.perf_counter() - started

        def timed_wait(members: _members.Members, generation: int, position: int, exempt: str = "") -> None:
            started = time.perf_counter()
            try:
                wait(members, generation, position, exempt)
            finally:
                self.waiting += time.perf_counter() - started

        _store.Store.commit = counted_commit  # type: ignore[method-assign,assignment]
        _members.Members.wait = timed_wait  # type: ignore[method-assign,assignment]


def _kind(name: str) -> str:
    """Group threads by what they are: ipchannel-handler-3 and ipchannel-handler-7 are one kind."""
    if name.startswith("ipchannel-"):
        name = name.split(":", 1)[0]
        return "ipchannel-handler" if "handler" in name else name
    return "writer" if name.startswith("writer") else name


def _threads() -> dict[str, tuple[float, int]]:
    """CPU seconds and voluntary context switches of this process's threads, by kind."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    kinds: dict[str, tuple[float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/status") as status:
                switches = next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt"))
        except FileNotFoundError:  # ended meanwhile
            continue
        kind = _kind(names.get(int(tid), "?"))
        cpu, count = kinds.get(kind, (0.0, 0))
        kinds[kind] = (cpu + (int(fields[11]) + int(fields[12])) / _TICK, count + switches)
    return kinds


def _process(  # noqa: PLR0917 - one process of the run, started in one place
    runtime_dir: str, threads: int, seconds: float, go: Event, done: Event, out: Queue[Any]
) -> None:
    counts = _Counts()
    counts.install()
    shared = ipchannel.SharedDict("profile", runtime_dir=runtime_dir)
    shared.incr("load")
    out.put("ready")  # opened, and a member from its first write
    counted = [0] * threads
    stop = threading.Event()

    def write(slot: int) -> None:
        while not stop.is_set():
            shared.incr("load")
            counted[slot] += 1

    go.wait()
    before = _threads()
    counts.batches = counts.writes = 0  # the measured seconds only
    counts.committing = counts.waiting = 0.0
    writers = [threading.Thread(target=write, args=(i,), name=f"writer-{i}") for i in range(threads)]
    for writer in writers:
        writer.start()
    time.sleep(seconds)
    after = _threads()
    stop.set()
    for writer in writers:
        writer.join()
    used = {
        kind: (cpu - before.get(kind, (0.0, 0))[0], switches - before.get(kind, (0.0, 0))[1])
        for kind, (cpu, switches) in after.items()
    }
    out.put((os.getpid(), shared.channel.is_host, sum(counted), used, vars(counts)))
    done.wait()  # every process reported: none closes (and hands over) while others still write
    shared.close()


def _run(seconds: float, processes: int, threads: int) -> list[Any]:
    """Start the processes, let them write for ``seconds``, and return their reports; end them all."""
    context = multiprocessing.get_context("spawn")
    go, done, out = context.Event(), context.Event(), context.Queue()
    with tempfile.TemporaryDirectory() as runtime_dir:
        started = [
            context.Process(target=_process, args=(runtime_dir, threads, seconds, go, done, out))
            for _ in range(processes)
        ]
        try:
            for process in started:
                process.start()
            for _ in started:
                if out.get(timeout=60) != "ready":
                    raise RuntimeError("a process of the run did not open the dict")
            go.set()
            reports = [out.get(timeout=60 + seconds) for _ in started]
        finally:
            done.set()  # also if one failed: the others close their dicts and end
            for process in started:
                process.join(30)
                if process.exitcode is None:
                    process.kill()
                    process.join()
    failed = [process.pid for process in started if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"processes {failed} did not end cleanly")
    return reports


def _print(reports: list[Any], seconds: float, shape: str) -> None:
    total = sum(report[2] for report in reports)
    print(f"incr: {total / seconds:,.0f} ops/s ({shape})")
    cpu = 0.0
    for pid, hosting, _done, used, counts in sorted(reports, key=lambda report: not report[1]):
        print(f"process {pid}{' (host)' if hosting else ''}:")
        for kind, (spent, switches) in sorted(used.items()):
            if spent or switches > 20:
                cpu += spent
                print(f"  {kind:<24} {spent:5.2f} s CPU  {switches:>8,} voluntary switches")
        if counts["batches"]:
            batches, writes = counts["batches"], counts["writes"]
            print(
                f"  batches: {batches:,}, {writes / batches:.2f} writes each;"
                f" committing {counts['committing']:.2f} s, {counts['waiting']:.2f} s of it"
                f" waiting for members' confirmations ({counts['waiting'] / batches * 1e6:.0f} us a batch)"
            )
    per_incr = cpu / max(total, 1) * 1e6
    print(f"CPU: {cpu:.2f} s in {seconds:g} s ({per_incr:.0f} us per incr, all processes together)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip("`"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    reports = _run(args.seconds, args.processes, args.threads)
    _print(reports, args.seconds, f"{args.processes} processes x {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
