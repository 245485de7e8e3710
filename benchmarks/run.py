"""Run the benchmarks: ``python -m benchmarks [--quick] [--json PATH] [--only NAME ...]``.

Each scenario prints a table (median, p99, N, ratio to its baseline measured in the
same run); ``--json`` writes the same numbers. Timings use ``time.perf_counter_ns``
(in-process) or ``time.monotonic_ns`` (across processes); warm-up rounds are dropped;
processes are started before any clock starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
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
from benchmarks import _workers as w
from benchmarks._stats import Result, Series

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
    load_seconds: float
    load_repeats: int
    failover_trials: dict[int, int]
    floor_trials: int
    storm: int
    capacity: tuple[int, int]  # client processes, connections each


QUICK = Config(
    quick=True,
    connects=400,
    cold_starts=30,
    round_trips=1000,
    load_seconds=1.0,
    load_repeats=1,
    failover_trials={8: 4, 32: 2},
    floor_trials=10,
    storm=32,
    capacity=(4, 50),
)
#: a quick run with more kills: for before/after comparisons of failover
MEDIUM = Config(
    quick=False,
    connects=400,
    cold_starts=30,
    round_trips=1000,
    load_seconds=1.0,
    load_repeats=1,
    failover_trials={8: 12, 32: 4},
    floor_trials=10,
    storm=32,
    capacity=(4, 50),
)
FULL = Config(
    quick=False,
    connects=3000,
    cold_starts=200,
    round_trips=10000,
    load_seconds=3.0,
    load_repeats=3,
    failover_trials={8: 20, 32: 8},
    floor_trials=40,
    storm=64,
    capacity=(4, 250),
)


def progress(text: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Worker:
    """A spawned process running one of ``_workers``' entry points, with its Pipe."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn: Connection
        self.conn, child = SPAWN.Pipe()
        self.proc: BaseProcess = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.info: dict[str, Any] = self.recv(120)
        self.pid: int = self.info["pid"]

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
        Result("cold start", [cold], [], "p50 <= 5 ms"),
    ]


def bench_round_trip_raw(cfg: Config, rd: str) -> Result:
    with workers() as started:
        started.append(Worker(w.channel_host, "raw", rd))
        started.append(Worker(w.socketserver_host, os.path.join(rd, "ss.sock")))
        channel = ipchannel.Channel("raw", w.echo, runtime_dir=rd)
        ours = channel.connect()
        base = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        base.connect(os.path.join(rd, "ss.sock"))
        a, b = (
            Series("64-byte echo, ChannelSocket"),
            Series("64-byte echo, socketserver.ThreadingUnixStreamServer"),
        )
        for i in range(cfg.round_trips):
            for sock, series in ((ours, a), (base, b)):
                start = time.perf_counter_ns()
                sock.sendall(w.PAYLOAD)
                w.recv_exactly(sock, len(w.PAYLOAD))
                if i >= cfg.round_trips // 10:
                    series.samples.append(time.perf_counter_ns() - start)
        base.close()
        channel.close()
    return Result("round trip, raw", [a], [b], "ratio <= 1.1")


def bench_round_trip_request(cfg: Config, rd: str) -> Result:
    address = os.path.join(rd, "mp.sock")
    with workers() as started:
        started.append(Worker(w.request_host, "req", rd))
        started.append(Worker(w.mp_host, address))
        channel = ipchannel.RequestChannel("req", w.on_request, runtime_dir=rd)
        client = multiprocessing.connection.Client(address, family="AF_UNIX")
        message = "x" * 60
        a, b = (
            Series("RequestChannel.request(), 64 B, json"),
            Series("multiprocessing.connection send/recv_bytes"),
        )
        for i in range(cfg.round_trips):
            ta = _timed(lambda: channel.request(message))
            start = time.perf_counter_ns()
            client.send_bytes(w.PAYLOAD)
            client.recv_bytes()
            tb = time.perf_counter_ns() - start
            if i >= cfg.round_trips // 10:
                a.samples.append(ta)
                b.samples.append(tb)
        client.close()
        channel.close()
    notes = []
    if importlib.util.find_spec("zmq") is None:
        notes.append("pyzmq is not installed: its REQ/REP baseline was skipped")
    return Result("round trip, request", [a], [b], "ratio <= 1.0", notes)


def _load_rate(target: Callable[..., None], args: tuple[Any, ...], processes: int = 4) -> float:
    """Start ``processes`` load workers, release them at once; return their total operations per second."""
    clients = [Worker(target, *args) for _ in range(processes)]
    try:
        for c in clients:
            c.send("go")
        results: list[tuple[int, float]] = [c.recv(60) for c in clients]
    finally:
        for c in clients:
            c.stop()
    return sum(n for n, _ in results) / max(t for _, t in results)


def bench_concurrent(cfg: Config, rd: str) -> Result:
    address = os.path.join(rd, "mpl.sock")
    ours, base = (
        Series("RequestChannel, 4 processes x 4 threads", unit="req/s"),
        Series("multiprocessing.connection, a connection per thread", unit="req/s"),
    )
    with workers() as started:
        started.append(Worker(w.request_host, "load", rd))
        started.append(Worker(w.mp_host, address))
        for _ in range(cfg.load_repeats):
            variants: list[tuple[Series, Callable[..., None], tuple[Any, ...]]] = [
                (ours, w.request_load_client, ("load", rd, 4, cfg.load_seconds)),
                (base, w.mp_load_client, (address, 4, cfg.load_seconds)),
            ]
            for series, target, args in variants:
                series.samples.append(_load_rate(target, args))
    return Result(
        "concurrent requests", [ours], [base], ">= 1.0x the baseline's requests/s", higher_is_better=True
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


def bench_failover(cfg: Config, rd: str) -> Result:
    ours: list[Series] = []
    for n, trials in cfg.failover_trials.items():
        progress(f"failover: {n} clients, {trials} kills")
        each = Series(f"N={n}: each client, kill -> first reply from the new host", unit="ms")
        every = Series(f"N={n}: every client answered (slowest client per kill)", unit="ms")
        name = f"fo{n}"
        with workers() as started:
            host = Worker(w.channel_host, name, rd, "pid")
            started.append(host)
            clients = [Worker(w.failover_client, name, rd) for _ in range(n)]
            started.extend(clients)
            current = host.pid
            seen: dict[int, int | None] = {}  # client pid -> the host it last reported
            for _ in range(trials):
                for c in clients:  # every client has seen the current host
                    while seen.get(c.pid) != current:
                        seen[c.pid] = c.recv(30)["host"]
                killed_at = time.monotonic_ns()
                os.kill(current, signal.SIGKILL)
                victim = next((c for c in clients if c.pid == current), None)
                if victim is not None:
                    victim.proc.join(10)
                    clients.remove(victim)
                delays = []
                for c in clients:
                    report = c.recv(30)
                    delays.append(report["at"] - killed_at)
                    current = seen[c.pid] = report["host"]
                each.samples.extend(delays)
                every.samples.append(max(delays))
                if victim is not None:  # keep N clients
                    replacement = Worker(w.failover_client, name, rd)
                    started.append(replacement)
                    clients.append(replacement)
        ours.extend([each, every])
    progress("failover: the flock floor")
    floor = _flock_floor(cfg, rd)
    return Result(
        "failover (SIGKILL the host)",
        ours,
        [floor],
        "N=8: p50 <= 5 ms, p99 <= 20 ms; N=32: p50 <= 20 ms",
        [
            "every client is blocked in recv() on the host when it is killed",
            "a client that becomes the new host answers itself",
        ],
    )


def bench_storm(cfg: Config, rd: str) -> Result:
    progress(f"election storm: starting {cfg.storm} processes")
    series = Series(f"{cfg.storm} processes: barrier -> connected and answered", unit="ms")
    with workers() as started:
        clients = [Worker(w.storm_client, "storm", rd) for _ in range(cfg.storm)]
        started.extend(clients)
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
        clients = [Worker(w.capacity_client, "cap", rd, each) for _ in range(processes)]
        started.extend(clients)
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


def bench_shared_dict(cfg: Config, rd: str) -> list[Result]:
    reads = writes_ = 200 if cfg.quick else 2000
    with workers() as started:
        started.append(Worker(w.dict_host, "sd", rd))
        shared = ipchannel.SharedDict("sd", runtime_dir=rd)
        request = ipchannel.RequestChannel("sdr", w.on_request, runtime_dir=rd)
        started.append(Worker(w.request_host, "sdr", rd))
        shared["k"] = "v"
        plain = {"k": "v"}
        batch = 1000
        local, baseline = Series("d[key], local replica", unit="ns"), Series("plain dict d[key]", unit="ns")
        for _ in range(reads):  # per-read time from batches: one read is below the clock's resolution
            local.samples.append(_timed(lambda: [shared["k"] for _ in range(batch)]) / batch)
            baseline.samples.append(_timed(lambda: [plain["k"] for _ in range(batch)]) / batch)
        write, round_trip = (
            Series("d[key] = value (host in another process)"),
            Series("RequestChannel.request()"),
        )
        for i in range(writes_):
            write.samples.append(_timed(lambda i=i: shared.__setitem__("k", i)))  # type: ignore[misc]
            round_trip.samples.append(_timed(lambda: request.request("x")))
        progress("shared dict: 4 writers")
        load = Series("4 writer processes, incr in a loop", unit="req/s")
        for _ in range(cfg.load_repeats):
            load.samples.append(_load_rate(w.dict_load, ("sd", rd, cfg.load_seconds)))
        progress("shared dict: replica lag")
        lag = Series("write started in one process -> applied in another", unit="us")
        writer = Worker(w.dict_writer, "sd", rd, writes_ // 4, 0.002)
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
        request.close()
        shared.close()
    return [
        Result(
            "shared dict: local read", [local], [baseline], "close to a plain dict lookup (report the ratio)"
        ),
        Result("shared dict: write", [write], [round_trip], "report"),
        Result("shared dict: writes/s", [load], [], "report", higher_is_better=True),
        Result("shared dict: replica lag", [lag], [], "report p50/p99"),
    ]


SCENARIOS: dict[str, Callable[[Config, str], Result | list[Result]]] = {
    "connect": bench_connect,
    "raw": bench_round_trip_raw,
    "request": bench_round_trip_request,
    "concurrent": bench_concurrent,
    "failover": bench_failover,
    "storm": bench_storm,
    "capacity": bench_capacity,
    "shareddict": bench_shared_dict,
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
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks import across  # noqa: PLC0415 - across machines; it imports this module

    scenarios = {**SCENARIOS, **across.SCENARIOS}
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, about a minute on 2 cores")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", nargs="+", choices=sorted(scenarios), help="run only these scenarios")
    parser.add_argument("--medium", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else MEDIUM if args.medium else FULL
    rd = tempfile.mkdtemp(prefix="ipcb-", dir="/tmp")
    results: list[Result] = []
    started = time.monotonic()
    try:
        for name, scenario in scenarios.items():
            if args.only and name not in args.only:
                continue
            progress(f"{name} ...")
            outcome = scenario(cfg, rd)
            for result in outcome if isinstance(outcome, list) else [outcome]:
                print(result.table(), end="\n\n", flush=True)
                results.append(result)
    finally:
        shutil.rmtree(rd, ignore_errors=True)
    info = machine()
    print(f"machine: {info}\nrun: {'--quick' if args.quick else 'full'}, {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": info, "quick": args.quick, "results": [r.to_json() for r in results]}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
