"""Run the benchmarks: ``python -m benchmarks [--quick] [--json PATH] [--plot DIR] [--only ...] [--runs N]``.

Each scenario prints a table (median, p99, N, ratio to its baseline measured in the
same run); ``--json`` writes the same numbers. Timings use ``time.perf_counter_ns``
(in-process) or ``time.monotonic_ns`` (across processes); warm-up rounds are dropped;
processes are started before any clock starts. Ours and the baseline alternate sample by
sample (latency) or round by round (throughput), so that drift hits both. Round trips are
measured with client and servers pinned, on one CPU and on two: unpinned, the scheduler
places each server thread on the client's CPU or the other at random, and that choice
alone moved a ratio between 0.2x and 4.5x from one run to the next. ``--runs N`` repeats
everything N times and prints how much each ratio moved.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib.util
import itertools
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in {None, ""}:  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

import ipchannel
from benchmarks import _baselines
from benchmarks import _workers as w
from benchmarks._stats import Result, Series, ratios_over_runs, ratios_table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Config:
    quick: bool
    connects: int
    cold_starts: int
    round_trips: int
    load_seconds: float  # one round of a throughput scenario
    load_rounds: int  # rounds of each variant, alternating; the result is their median
    failover_trials: dict[int, int]
    floor_trials: int
    storm: int
    capacity: tuple[int, int]  # client processes, connections each
    idle_seconds: int


QUICK = Config(
    quick=True,
    connects=400,
    cold_starts=30,
    round_trips=1000,
    load_seconds=0.5,
    load_rounds=2,
    failover_trials={8: 4, 32: 2},
    floor_trials=10,
    storm=32,
    capacity=(4, 50),
    idle_seconds=2,
)
#: a quick run with more kills: for before/after comparisons of failover
MEDIUM = Config(
    quick=False,
    connects=400,
    cold_starts=30,
    round_trips=1000,
    load_seconds=0.5,
    load_rounds=2,
    failover_trials={8: 12, 32: 4},
    floor_trials=10,
    storm=32,
    capacity=(4, 50),
    idle_seconds=2,
)
FULL = Config(
    quick=False,
    connects=3000,
    cold_starts=200,
    round_trips=10000,
    load_seconds=0.5,
    load_rounds=6,
    failover_trials={8: 12, 32: 8},
    floor_trials=40,
    storm=64,
    capacity=(4, 250),
    idle_seconds=5,
)


def progress(text: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Worker:
    """A spawned process running one of ``_workers``' entry points, with its Pipe."""

    def __init__(self, target: Callable[..., None], *args: Any, ready: bool = True) -> None:
        self.conn: Connection
        self.conn, child = SPAWN.Pipe()
        self.proc: BaseProcess = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        assert self.proc.pid is not None
        self.pid: int = self.proc.pid
        self.info: dict[str, Any] = {}
        if ready:
            self.ready()

    def ready(self) -> Worker:
        """Wait for the worker's first report (it is set up); ``ready=False`` defers this."""
        self.info = self.recv(120)
        return self

    def recv(self, timeout: float = 60) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"worker {self.proc.pid} sent nothing within {timeout} s")
        return self.conn.recv()

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("stop")
        self.proc.join(5)
        if self.proc.exitcode is None:
            self.kill()
        self.conn.close()


def spawn_many(started: list[Worker], n: int, target: Callable[..., None], *args: Any) -> list[Worker]:
    """Start ``n`` workers at once (each joins ``started``), then wait until each is set up.

    Spawning (a fresh interpreter, imports) is most of a worker's start-up, and runs in parallel.
    """
    new = [Worker(target, *args, ready=False) for _ in range(n)]
    started.extend(new)
    return [worker.ready() for worker in new]


@contextlib.contextmanager
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def _timed(func: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    func()
    return time.perf_counter_ns() - start


def _interleave(n: int, ops: list[tuple[Series, Callable[[], object], int]]) -> None:
    """Time each ``(series, op, batch)`` once per round for ``n`` rounds; drop the first tenth.

    The order is shuffled each round: no variant always runs first, or right after another,
    whose leftover work (a SharedDict host's broadcast after its reply, on one CPU) would
    always land on it; shuffled, it lands on every variant alike. No pause between ops: with
    one, each op started cold (a 0.5 ms sleep doubled diskcache's get here). ``op`` does
    ``batch`` operations; a sample is the time of one.
    """
    rng = random.Random(n)  # noqa: S311 - an order, not a secret
    order = list(ops)
    for i in range(n):
        rng.shuffle(order)
        for series, op, batch in order:
            elapsed = _timed(op)
            if i >= n // 10:
                series.samples.append(elapsed / batch)


def _alternate(seconds: float, rounds: int, variants: list[tuple[Series, list[Worker]]]) -> None:
    """Throughput: ``rounds`` rounds of each variant's load workers, alternating, order turned each round.

    Each worker runs ``_workers._load_rounds``; a round's rate is the workers' calls over the
    slowest worker's time. One unrecorded warm-up round of each variant comes first.
    """
    for r in range(-1, rounds):
        k = r % len(variants)
        for series, clients in variants[k:] + variants[:k]:
            for c in clients:
                c.send(("go", 0.2 if r < 0 else seconds))
            results: list[tuple[int, float]] = [c.recv(60) for c in clients]
            if r >= 0:
                series.samples.append(sum(n for n, _ in results) / max(t for _, t in results))


# -- where processes run --------------------------------------------------------------------------


def placements() -> list[tuple[str, int, int]]:
    """(label, the client's CPU, the servers' CPU): one CPU for all, and two CPUs where there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [("one CPU", cpus[0], cpus[0])]
    return [("one CPU", cpus[0], cpus[0]), ("two CPUs", cpus[0], cpus[1])]


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (threads it starts later inherit the mask of the one starting them)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def pinned(where: dict[int, int]) -> Iterator[None]:
    """Pin each process (pid -> CPU), this one included if listed; restore every mask on the way out."""
    before = os.sched_getaffinity(0)
    try:
        for pid, cpu in where.items():
            _set_affinity(pid, {cpu})
        yield
    finally:
        for pid in where:
            with contextlib.suppress(FileNotFoundError):
                _set_affinity(pid, before)


# -- scenarios --------------------------------------------------------------------------------


def bench_connect(cfg: Config, rd: str) -> list[Result]:
    with workers() as started:
        started.append(Worker(w.channel_host, "conn", rd))
        path = os.path.join(rd, "conn.sock")
        warm, raw = Series("warm connect"), Series("raw socket()+connect()")
        channel = ipchannel.Channel("conn", w.echo, runtime_dir=rd)
        channel.connect().close()

        def raw_connect() -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.close()

        for i in range(cfg.connects):  # interleaved, so both see the same machine
            a = _timed(lambda: channel.connect().close())
            b = _timed(raw_connect)
            if i >= cfg.connects // 10:
                warm.samples.append(a)
                raw.samples.append(b)
        channel.close()
        progress("connect: joining")
        joining = Series("joining connect (new Channel, host up)")
        raw_then, thread_start = Series("raw socket()+connect()"), Series("threading.Thread().start()")
        for i in range(cfg.connects // 5):
            fresh = ipchannel.Channel("conn", w.echo, runtime_dir=rd)
            a = _timed(lambda fresh=fresh: fresh.connect().close())  # type: ignore[misc]
            fresh.close()
            b = _timed(raw_connect)
            idle = threading.Thread(target=time.sleep, args=(0,), daemon=True)
            c = _timed(idle.start)
            idle.join()
            if i >= cfg.connects // 50:
                joining.samples.append(a)
                raw_then.samples.append(b)
                thread_start.samples.append(c)
        progress("connect: first in a fresh process")
        first = Series("first connect() in a fresh process (host up)")
        first_raw = Series("raw socket()+connect(), first in a fresh process")
        first_thread = Series("threading.Thread().start(), first in a fresh process")
        for _ in range(min(cfg.cold_starts, 30)):
            for series, mode in ((first, "ours"), (first_raw, "raw"), (first_thread, "thread")):
                out = subprocess.run(
                    [sys.executable, "-c", _FIRST_CONNECT, rd, path, mode], capture_output=True, check=True
                )
                series.samples.append(int(out.stdout))
        progress("connect: cold start")
        cold = Series("cold start (election + server)", unit="ms")
        for i in range(cfg.cold_starts):
            fresh = ipchannel.Channel(f"cold{i}", w.echo, runtime_dir=rd)
            cold.samples.append(_timed(lambda fresh=fresh: fresh.connect().close()))  # type: ignore[misc]
            fresh.close()
    return [
        Result("warm connect", [warm], [raw], "ratio <= 1.5"),
        Result(
            "joining connect",
            [joining],
            [raw_then, thread_start],
            "p50 <= 150 us",
            ["it includes starting the channel's monitor thread: the second baseline is that alone"],
        ),
        Result(
            "first connect in a process",
            [first],
            [first_raw, first_thread],
            "p50 <= 150 us",
            ["each sample of each row a new interpreter that imported ipchannel: its first such call"],
        ),
        Result("cold start", [cold], [], "p50 <= 5 ms"),
    ]


_FIRST_CONNECT = """
import socket, sys, threading, time
import ipchannel
rd, path, mode = sys.argv[1:]
if mode == "ours":
    channel = ipchannel.Channel("conn", lambda conn: None, runtime_dir=rd)
    start = time.perf_counter_ns()
    channel.connect().close()
    took = time.perf_counter_ns() - start
    channel.close()
elif mode == "raw":
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    start = time.perf_counter_ns()
    sock.connect(path)
    took = time.perf_counter_ns() - start
    sock.close()
else:
    thread = threading.Thread(target=time.sleep, args=(0,))
    start = time.perf_counter_ns()
    thread.start()
    took = time.perf_counter_ns() - start
    thread.join()
print(took)
"""


def bench_round_trip_raw(cfg: Config, rd: str) -> list[Result]:
    return [_raw_round_trips(cfg, rd, k, where) for k, where in enumerate(placements())]


def _raw_round_trips(cfg: Config, rd: str, k: int, where: tuple[str, int, int]) -> Result:
    """64-byte echoes, ChannelSocket and socketserver interleaved, pinned as ``where`` says."""
    label, here, there = where
    path = os.path.join(rd, f"ss{k}.sock")
    with workers() as started:
        started.append(Worker(w.channel_host, f"raw{k}", rd))
        started.append(Worker(w.socketserver_host, path))
        channel = ipchannel.Channel(f"raw{k}", w.echo, runtime_dir=rd)
        ours = channel.connect()
        base = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        base.connect(path)
        a, b = (
            Series("64-byte echo, ChannelSocket"),
            Series("64-byte echo, socketserver.ThreadingUnixStreamServer"),
        )
        ops: list[tuple[Series, Callable[[], object], int]] = [
            (a, functools.partial(w.echo_round_trip, ours), 1),
            (b, functools.partial(w.echo_round_trip, base), 1),
        ]
        with pinned({os.getpid(): here, **{s.pid: there for s in started}}):
            _interleave(cfg.round_trips, ops)
        base.close()
        channel.close()
    return Result(f"round trip, raw, {label}", [a], [b], "ratio <= 1.1", [_where(here, there)])


def _where(here: int, there: int) -> str:
    if here == there:
        return f"client and servers pinned to CPU {here}"
    return f"client pinned to CPU {here}, servers to CPU {there}"


def bench_round_trip_request(cfg: Config, rd: str) -> list[Result]:
    return [_request_round_trips(cfg, rd, k, where) for k, where in enumerate(placements())]


def _request_round_trips(cfg: Config, rd: str, k: int, where: tuple[str, int, int]) -> Result:
    """request(obj) beside multiprocessing.connection with the same object, and with raw bytes."""
    label, here, there = where
    message = "x" * 60
    objects, raw = os.path.join(rd, f"mpo{k}.sock"), os.path.join(rd, f"mpb{k}.sock")
    with workers() as started:
        started.append(Worker(w.request_host, f"req{k}", rd))
        started.append(Worker(w.mp_host, objects, "pickle"))
        started.append(Worker(w.mp_host, raw, "bytes"))
        channel = ipchannel.RequestChannel(f"req{k}", w.on_request, runtime_dir=rd)
        channel.request(message)
        client = multiprocessing.connection.Client(objects, family="AF_UNIX")
        raw_client = multiprocessing.connection.Client(raw, family="AF_UNIX")
        a, b, c = (
            Series("RequestChannel.request(obj), json"),
            Series("multiprocessing.connection send(obj)/recv(), pickle, same object"),
            Series("multiprocessing.connection send_bytes/recv_bytes, 64 B"),
        )
        ops: list[tuple[Series, Callable[[], object], int]] = [
            (a, functools.partial(channel.request, message), 1),
            (b, functools.partial(w.mp_round_trip, client, message), 1),
            (c, functools.partial(w.mp_bytes_round_trip, raw_client), 1),
        ]
        with pinned({os.getpid(): here, **{s.pid: there for s in started}}):
            _interleave(cfg.round_trips, ops)
        client.close()
        raw_client.close()
        channel.close()
    notes = [
        _where(here, there),
        "obj: a 60-character str; the pickle server unpickles it and pickles it back (equal work)",
        "the raw baseline sends bytes and encodes nothing: the floor of the transport",
    ]
    if importlib.util.find_spec("zmq") is None:
        notes.append("pyzmq is not installed: its REQ/REP baseline was skipped")
    return Result(f"round trip, request, {label}", [a], [b, c], "ratio <= 1.0", notes)


def bench_concurrent(cfg: Config, rd: str) -> Result:
    address = os.path.join(rd, "mpl.sock")
    ours, base = (
        Series("RequestChannel, 4 processes x 4 threads", unit="req/s"),
        Series("multiprocessing.connection, a connection per thread", unit="req/s"),
    )
    with workers() as started:
        started.append(Worker(w.request_host, "load", rd))
        started.append(Worker(w.mp_host, address))
        ours_clients = spawn_many(started, 4, w.request_load_client, "load", rd, 4)
        base_clients = spawn_many(started, 4, w.mp_load_client, address, 4)
        _alternate(cfg.load_seconds, cfg.load_rounds, [(ours, ours_clients), (base, base_clients)])
    return Result(
        "concurrent requests",
        [ours],
        [base],
        ">= 1.0x the baseline's requests/s",
        [_rounds_note(cfg, [ours, base])],
        higher_is_better=True,
    )


def _rounds_note(cfg: Config, series: list[Series]) -> str:
    """How the rounds ran, and the ratio of each round (ours over the first baseline)."""
    ours, base = series[0], series[1]
    each = ", ".join(f"{a / b:.2f}x" for a, b in zip(ours.samples, base.samples, strict=False))
    return (
        f"median of {cfg.load_rounds} rounds of {cfg.load_seconds:g} s, the variants alternating"
        f" (processes started before); ratio per round: {each}"
    )


def _flock_floor(cfg: Config, rd: str) -> Series:
    """Holder killed -> waiter blocked in flock gets the lock, plus one raw reconnect (median)."""
    path = os.path.join(rd, "floor.lock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(rd, "floor.sock"))
    listener.listen(128)
    connects = []
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connects.append(_timed(lambda sock=sock: sock.connect(os.path.join(rd, "floor.sock"))))  # type: ignore[misc]
        sock.close()
        listener.accept()[0].close()
    listener.close()
    reconnect = sorted(connects)[len(connects) // 2]
    floor = Series("flock takeover + one reconnect", unit="ms")
    for _ in range(cfg.floor_trials):
        holder, waiter = Worker(w.flock_holder, path), Worker(w.flock_waiter, path)
        deadline = time.monotonic() + 10
        while psutil.Process(waiter.pid).status() != psutil.STATUS_SLEEPING and time.monotonic() < deadline:
            time.sleep(0.001)
        killed_at = time.monotonic_ns()
        holder.kill()
        floor.samples.append(waiter.recv(10)["at"] - killed_at + reconnect)
        holder.stop()
        waiter.stop()
    return floor


@dataclass
class Kill:
    """One SIGKILL of the host in ``crash_failovers``."""

    at: int  # time.monotonic_ns() just before it
    survivors: list[int]  # the clients it left, the new host among them
    answered_at: list[int]  # when each client had its first reply from the new host
    host: int  # the new host


def crash_failovers(
    started: list[Worker],
    clients: int,
    kills: int,
    name: str,
    rd: str,
    *,
    before: Callable[[list[int]], object] | None = None,
) -> Iterator[Kill]:
    """Start a host and ``clients`` clients parked on it; SIGKILL whoever hosts, ``kills`` times.

    Each kill is yielded once every client answered from the new host; a client killed
    as host is replaced after that. ``before(survivors)`` runs just before each kill.
    """
    first = Worker(w.channel_host, name, rd, "pid")
    started.append(first)
    waiting = spawn_many(started, clients, w.failover_client, name, rd)
    current, seen = first.pid, dict[int, int]()  # the host; client pid -> the host it last reported
    for _ in range(kills):
        for client in waiting:  # every client has seen the current host
            while seen.get(client.pid) != current:
                seen[client.pid] = client.recv(30)["host"]
        survivors = [client.pid for client in waiting if client.pid != current]
        if before is not None:
            before(survivors)
        killed_at = time.monotonic_ns()
        os.kill(current, signal.SIGKILL)
        victim = next((client for client in waiting if client.pid == current), None)
        if victim is not None:
            victim.proc.join(10)
            waiting.remove(victim)
        answered_at = []
        for client in waiting:
            report = client.recv(30)
            answered_at.append(report["at"])
            current = seen[client.pid] = report["host"]
        yield Kill(killed_at, survivors, answered_at, current)
        if victim is not None:  # keep N clients
            started.append(Worker(w.failover_client, name, rd))
            waiting.append(started[-1])


def bench_failover(cfg: Config, rd: str) -> Result:
    ours: list[Series] = []
    for n, trials in cfg.failover_trials.items():
        progress(f"failover: {n} clients, {trials} kills")
        each = Series(f"N={n}: each client, kill -> first reply from the new host", unit="ms")
        every = Series(f"N={n}: every client answered (slowest client per kill)", unit="ms")
        name = f"fo{n}"
        with workers() as started:
            for kill in crash_failovers(started, n, trials, name, rd):
                delays = [ns - kill.at for ns in kill.answered_at]
                each.samples.extend(delays)
                every.samples.append(max(delays))
        ours.extend([each, every])
    progress("failover: the flock floor")
    floor = _flock_floor(cfg, rd)
    worst = [
        f"{s.name.split(':')[0]}: max of {len(s.samples)} kills (every client answered)"
        f" {s.scaled(max(s.samples)):.1f} ms"
        for s in ours[1::2]
    ]
    return Result(
        "failover (SIGKILL the host)",
        ours,
        [floor],
        "N=8: p50 <= 5 ms, max of 12 kills <= 20 ms; N=32: p50 <= 20 ms",
        [
            *worst,
            "every client is blocked in recv() on the host when it is killed",
            "a client that becomes the new host answers itself",
        ],
    )


def bench_storm(cfg: Config, rd: str) -> Result:
    progress(f"election storm: starting {cfg.storm} processes")
    series = Series(f"{cfg.storm} processes: barrier -> connected and answered", unit="ms")
    with workers() as started:
        clients = spawn_many(started, cfg.storm, w.storm_client, "storm", rd)
        start_at = time.monotonic_ns() + 300_000_000
        for c in clients:
            c.send(start_at)
        reports = [c.recv(60) for c in clients]
    series.samples = [r["connected"] - start_at for r in reports]
    hosts = sum(r["is_host"] for r in reports)
    return Result(
        "election storm",
        [series],
        [],
        "all connected within 1 s, exactly one host",
        [f"hosts elected: {hosts}; slowest: {series.scaled(max(series.samples)):.1f} ms"],
    )


def bench_capacity(cfg: Config, rd: str) -> Result:
    processes, each = cfg.capacity
    total = processes * each
    progress(f"host capacity: {total} connections")
    with workers() as started:
        host = Worker(w.channel_host, "cap", rd)
        started.append(host)
        host.send("stats")
        before = host.recv()
        clients = spawn_many(started, processes, w.capacity_client, "cap", rd, each)
        host.send("stats")
        loaded = host.recv()
        for c in clients:
            c.send("go")
        reports = [c.recv(60) for c in clients]
    served = sum(r["served"] for r in reports)
    mib = 2**20
    series = Series(f"{total} connections, one 64-byte round trip each (per client process)", unit="ms")
    series.samples = [r["ns"] for r in reports]
    return Result(
        "host capacity",
        [series],
        [],
        f"all {total} served; report RSS and threads",
        [
            f"served {served}/{total}",
            f"host RSS {before['rss'] / mib:.1f} MiB idle, {loaded['rss'] / mib:.1f} MiB connected",
            f"host threads {before['threads']} idle, {loaded['threads']} with the connections",
        ],
    )


@dataclass
class _Others:
    """The baselines beside SharedDict that are installed here: a redis-server, a diskcache directory."""

    redis: _baselines.RedisServer | None
    cache_dir: str | None
    skipped: list[str]

    def notes(self) -> list[str]:
        here = [self.redis.version, _baselines.parsers_note()] if self.redis else []
        return here + ([_baselines.diskcache_version()] if self.cache_dir else []) + self.skipped


@contextlib.contextmanager
def _others(rd: str) -> Iterator[_Others]:
    """Start what is installed of the SharedDict baselines; note what is not."""
    tmp = tempfile.mkdtemp(prefix="sd-", dir=rd)
    skipped = [n for n in (_baselines.redis_missing(), _baselines.diskcache_missing()) if n]
    if not _baselines.redis_missing() and (hiredis := _baselines.hiredis_missing()):
        skipped.append(hiredis)
    for note in skipped:
        progress(f"shared dict: {note}")
    cache_dir = None if _baselines.diskcache_missing() else os.path.join(tmp, "diskcache")
    try:
        if _baselines.redis_missing():
            yield _Others(None, cache_dir, skipped)
        else:
            with _baselines.redis_server(tmp) as server:
                yield _Others(server, cache_dir, skipped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_shared_dict(cfg: Config, rd: str) -> list[Result]:
    with _others(rd) as others, workers() as started:
        host = Worker(w.dict_host, "sd", rd)
        started.append(host)
        started.append(Worker(w.request_host, "sdr", rd))
        shared = ipchannel.SharedDict("sd", runtime_dir=rd)
        request = ipchannel.RequestChannel("sdr", w.on_request, runtime_dir=rd)
        servers = [s.pid for s in started] + ([others.redis.pid] if others.redis else [])
        # one CPU: on this VM a wake-up across vCPUs costs up to hundreds of us, for both sides alike
        _label, here, there = placements()[0]
        with pinned({os.getpid(): here, **dict.fromkeys(servers, there)}):
            results = _dict_latency(cfg, shared, request, others)
        for r in results:
            r.notes.insert(0, _where(here, there))
        results.append(_dict_lag(cfg, rd, shared, started))
        request.close()
        shared.close()  # before the load: a replica here would take the broadcasts, and a core
        results.insert(0, _dict_throughput(cfg, rd, others, started))
    return results


def _dict_latency(
    cfg: Config, shared: ipchannel.SharedDict, request: ipchannel.RequestChannel, others: _Others
) -> list[Result]:
    """One writer (this process): local reads and writes, SharedDict beside each installed baseline."""
    progress("shared dict: one writer, reads and writes")
    n = 200 if cfg.quick else 2000
    plain = {"k": "v"}
    floor = _PythonMapping(plain)  # what any mapping written in Python pays: one __getitem__ call
    user = collections.UserDict(plain)
    shared["k"] = "v"
    values = itertools.count()
    read, write, incr = (
        [
            Series("d[key], local replica", unit="ns"),
            Series("plain dict d[key]", unit="ns"),
            Series("a Python __getitem__ returning self._data[key]", unit="ns"),
            Series("collections.UserDict d[key]", unit="ns"),
        ],
        [Series("d[key] = value (host in another process)")],
        [Series("d.incr(key) (host in another process)")],
    )
    # per-read time from batches: one local read is below the clock's resolution
    ops: list[tuple[Series, Callable[[], object], int]] = [
        (read[0], lambda: [shared["k"] for _ in range(1000)], 1000),
        (read[1], lambda: [plain["k"] for _ in range(1000)], 1000),
        (read[2], lambda: [floor["k"] for _ in range(1000)], 1000),
        (read[3], lambda: [user["k"] for _ in range(1000)], 1000),
        (write[0], lambda: shared.__setitem__("k", next(values)), 1),
        (incr[0], lambda: shared.incr("n"), 1),
    ]
    with contextlib.ExitStack() as stack:
        for parser in _baselines.redis_parsers() if others.redis else []:
            assert others.redis is not None
            r = stack.enter_context(_baselines.redis_client(others.redis.path, parser))
            r.set("k", "v")
            ops += _pairs((read, write, incr), _baselines.WHO[parser], (r.get, r.set, r.incr), 1)
        if others.cache_dir:
            import diskcache  # noqa: PLC0415 - an optional extra

            cache = stack.enter_context(diskcache.Cache(others.cache_dir))
            cache.set("k", "v")
            ops += _pairs((read, write, incr), "diskcache Cache", (cache.get, cache.set, cache.incr), 10)
        round_trip = Series("RequestChannel.request() (the write's own round trip)")
        write.append(round_trip)
        ops.append((round_trip, lambda: request.request("x"), 1))
        _interleave(n, ops)
    how = f"one writer; the variants interleaved sample by sample, {n} rounds in shuffled order"
    one = [how, *others.notes()]
    return [
        Result(
            "shared dict: local read",
            read[:1],
            read[1:],
            "close to a plain dict lookup (report the ratio)",
            [
                *one,
                "a read's time: a batch's over its size (1000 reads; 10 for diskcache, 1 for redis)",
            ],
        ),
        Result("shared dict: write", write[:1], write[1:], "report", list(one)),
        Result("shared dict: incr, one writer", incr[:1], incr[1:], "report", list(one)),
    ]


class _PythonMapping:
    """The least a mapping written in Python does for ``m[key]``: the floor of SharedDict's read."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]


def _pairs(
    into: tuple[list[Series], list[Series], list[Series]],
    who: str,
    calls: tuple[Callable[[str], object], Callable[[str, Any], object], Callable[[str], object]],
    batch: int,
) -> list[tuple[Series, Callable[[], object], int]]:
    """A baseline's get, set and incr as ``_interleave`` ops; their series go to the read/write/incr lists."""
    get, set_, incr = calls
    redis = who.startswith("redis-py")
    names = ("GET", "SET", "INCR") if redis else ("get(key)", "set(key, value)", "incr(key)")
    series = (
        Series(f"{who} {names[0]}"),
        Series(f"{who} {names[1]}"),
        Series(f"{who} {names[2]}"),
    )
    for group, one in zip(into, series, strict=True):
        group.append(one)
    values = itertools.count()
    return [
        (series[0], lambda: [get("k") for _ in range(batch)], batch),
        (series[1], lambda: set_("k", next(values)), 1),
        (series[2], lambda: incr("n"), 1),
    ]


def _dict_throughput(cfg: Config, rd: str, others: _Others, started: list[Worker]) -> Result:
    """incr from 4 processes x 2 threads: SharedDict, redis-py INCR, diskcache incr, alternating rounds."""
    progress("shared dict: incr from 4 processes x 2 threads")
    shape = "4 processes x 2 threads"
    ours = Series(f"SharedDict.incr(), {shape}", unit="ops/s")
    variants = [(ours, spawn_many(started, 4, w.dict_load, "sd", rd, 2))]
    for parser in _baselines.redis_parsers() if others.redis else []:
        assert others.redis is not None
        who = Series(f"{_baselines.WHO[parser]} INCR, {shape}, a connection per thread", unit="ops/s")
        variants.append((who, spawn_many(started, 4, w.redis_load, others.redis.path, 2, parser)))
    if others.cache_dir:
        who = Series(f"diskcache Cache.incr(), {shape}", unit="ops/s")
        variants.append((who, spawn_many(started, 4, w.diskcache_load, others.cache_dir, 2)))
    _alternate(cfg.load_seconds, cfg.load_rounds, variants)
    series = [s for s, _ in variants]
    notes = others.notes()
    if len(series) > 1:
        notes.insert(0, _rounds_note(cfg, series))
    return Result(
        "shared dict: incr throughput", series[:1], series[1:], "report", notes, higher_is_better=True
    )


def _dict_lag(cfg: Config, rd: str, shared: ipchannel.SharedDict, started: list[Worker]) -> Result:
    progress("shared dict: replica lag")
    writes = 50 if cfg.quick else 500
    lag = Series("write started in one process -> applied in another", unit="us")
    writer = Worker(w.dict_writer, "sd", rd, writes, 0.002)
    started.append(writer)
    seen: dict[tuple[int, int], int] = {}
    writer.send("go")
    deadline = time.monotonic() + 60
    while not writer.conn.poll(0) and time.monotonic() < deadline:  # busy: note when each change lands
        position = shared.position
        if position not in seen:
            seen[position] = time.monotonic_ns()
    for position, started_at in writer.recv(60):
        if tuple(position) in seen:
            lag.samples.append(seen[tuple(position)] - started_at)
    return Result("shared dict: replica lag", [lag], [], "report p50/p99")


def _wakeups(pid: int) -> dict[int, int]:
    """Voluntary context switches of each thread of ``pid`` (tid -> count), from /proc."""
    counts = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            line = next(x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches:"))
            counts[int(tid)] = int(line.split()[1])
    return counts


def bench_idle(cfg: Config, rd: str) -> Result:
    """Wake-ups per second of processes that hold a channel and do nothing, beside one that holds none."""
    with workers() as started:
        parked = Worker(w.parked)  # the longest settled: any wake-up of its start is behind it
        started.append(parked)
        hosts = [Worker(w.channel_host, "idle", rd), Worker(w.request_host, "idler", rd)]  # before clients
        started.extend(hosts)
        clients = [Worker(w.idle_channel_client, "idle", rd), Worker(w.idle_request_client, "idler", rd)]
        started.extend(clients)
        names = [
            "client process, a Channel connected",
            "client process, a RequestChannel (one request made)",
            "host process of that Channel",
            "host process of that RequestChannel",
            "parked Python process, no channel",
        ]
        measured = dict(zip(names, [*clients, *hosts, parked], strict=True))
        if any(c.info["is_host"] for c in clients):
            raise RuntimeError("an idle client was elected: its host was not up")
        series = {name: Series(name, unit="wake-ups/s") for name in measured}
        progress(f"idle: {cfg.idle_seconds} s")
        per_thread = _sample_wakeups(cfg.idle_seconds, {n: p.pid for n, p in measured.items()}, series)
    how = "voluntary context switches of all threads (/proc/PID/task/*/status)"
    notes = [
        f"{how}, {cfg.idle_seconds} windows of 1 s",
        *(f"{name}: by thread {rates}" for name, rates in per_thread.items()),
    ]
    *ours, base = series.values()
    return Result("idle cost", ours, [base], "<= 1 wake-up/s per client process", notes, show_ratio=False)


def _sample_wakeups(seconds: int, pids: dict[str, int], series: dict[str, Series]) -> dict[str, str]:
    """One sample a second of each process's wake-ups; return each process's per-thread rates."""
    first = previous = {name: _wakeups(pid) for name, pid in pids.items()}
    start = last = time.monotonic()
    for k in range(1, seconds + 1):
        time.sleep(max(0.0, start + k - time.monotonic()))
        now, counts = time.monotonic(), {name: _wakeups(pid) for name, pid in pids.items()}
        for name, after in counts.items():
            before = previous[name]
            series[name].samples.append(sum(n - before.get(t, 0) for t, n in after.items()) / (now - last))
        previous, last = counts, now
    rates = {}
    for name, after in previous.items():
        each = sorted(((n - first[name].get(t, 0)) / (last - start) for t, n in after.items()), reverse=True)
        rates[name] = ", ".join(f"{r:.1f}/s" for r in each)
    return rates


SCENARIOS: dict[str, Callable[[Config, str], Result | list[Result]]] = {
    "connect": bench_connect,
    "raw": bench_round_trip_raw,
    "request": bench_round_trip_request,
    "concurrent": bench_concurrent,
    "failover": bench_failover,
    "storm": bench_storm,
    "capacity": bench_capacity,
    "shareddict": bench_shared_dict,
    "idle": bench_idle,
}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "ipchannel": ipchannel.__version__,
        "filelock": version("filelock"),
        "psutil": version("psutil"),
        "baselines": _baseline_versions(),
    }


def _baseline_versions() -> str:
    """The baselines' versions (what is installed), so a table says what it was measured against."""
    found = []
    for package in ("redis", "hiredis", "diskcache", "django"):
        with contextlib.suppress(ImportError, ValueError):
            found.append(f"{package} {version(package)}")
    server = shutil.which("redis-server")
    if server:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [server, "--version"], capture_output=True, text=True, timeout=5, check=False
            )
            found.extend(f"redis-server {word[2:]}" for word in out.stdout.split() if word.startswith("v="))
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import across, aio, djcache, journal, limits, plots, prometheus, replay  # noqa: PLC0415 - they import this module

    scenarios = {
        **SCENARIOS,
        **aio.SCENARIOS,
        **across.SCENARIOS,
        **djcache.SCENARIOS,
        **journal.SCENARIOS,
        **limits.SCENARIOS,
        **prometheus.SCENARIOS,
        **replay.SCENARIOS,
    }
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, about a minute on 2 cores")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--plot", metavar="DIR", help="also draw the results as SVG plots in DIR (matplotlib)"
    )
    parser.add_argument("--only", nargs="+", choices=sorted(scenarios), help="run only these scenarios")
    parser.add_argument(
        "--runs", type=int, default=1, metavar="N", help="run it all N times; then how much each ratio moved"
    )
    parser.add_argument("--medium", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.plot:
        plots.require_matplotlib()
    cfg = QUICK if args.quick else MEDIUM if args.medium else FULL
    chosen = {n: f for n, f in scenarios.items() if not args.only or n in args.only}
    runs: list[list[Result]] = []
    started = time.monotonic()
    for k in range(args.runs):
        if args.runs > 1:
            print(f"---- run {k + 1} of {args.runs}", end="\n\n", flush=True)
        runs.append(_run_once(cfg, chosen))
    summary = ratios_over_runs(runs) if args.runs > 1 else []
    if summary:
        print(ratios_table(summary, args.runs), end="\n\n")
    info = machine()
    mode = "--quick" if args.quick else "medium" if args.medium else "full"
    print(f"machine: {info}\nrun: {mode}, {args.runs} x, {time.monotonic() - started:.0f} s")
    results = [{"run": k + 1, **r.to_json()} for k, rs in enumerate(runs) for r in rs]
    report = {"machine": info, "quick": args.quick, "runs": args.runs, "results": results}
    report["ratios_over_runs"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        for path in plots.write_plots(report, Path(args.plot)):
            print(f"plot: {path}")
    return 0


def _run_once(cfg: Config, chosen: dict[str, Callable[[Config, str], Result | list[Result]]]) -> list[Result]:
    """Run each chosen scenario once, printing its tables; return the results."""
    rd = tempfile.mkdtemp(prefix="ipcb-", dir="/tmp")
    results: list[Result] = []
    try:
        for name, scenario in chosen.items():
            progress(f"{name} ...")
            outcome = scenario(cfg, rd)
            for result in outcome if isinstance(outcome, list) else [outcome]:
                print(result.table(), end="\n\n", flush=True)
                results.append(result)
    finally:
        shutil.rmtree(rd, ignore_errors=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
