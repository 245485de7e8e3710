"""Channels across machines: crash failover and graceful handover through etcd and Redis, TCP round trips.

``python -m benchmarks --only across-failover across-handover across-request``. Each simulated
machine is a process of its own, with its own runtime directory and loopback address (127.0.0.2,
.3, ...); the engines are real servers on 127.0.0.1 (``tests/_servers.py``). Every process here
reads the same CLOCK_MONOTONIC, so a time taken in one process (a kill, a ``close()``) is compared
with one taken in another (the first answer from the new host).

Baselines, measured in the same run and interleaved with ours trial by trial (A, B, A, B...):

- failover and handover: the engine alone. One process holds a key on a lease (etcd) or a TTL
  (Redis), renewed every ttl/3 as an ipchannel host does; another watches the key and claims it
  once it is gone. The holder is SIGKILLed (failover) or deletes the key (handover).
- round trip: ``multiprocessing.connection`` over TCP with the same authkey, echoing the same object.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from importlib.util import find_spec
from multiprocessing.connection import Client
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import ipchannel
from benchmarks import _workers as w
from benchmarks._stats import Result, Series
from benchmarks.run import Worker, progress, workers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from _servers import EngineServer

    from benchmarks.run import Config

ENGINES = ("etcd", "redis")
#: engine -> (server binary, apt package, Python client module)
_NEEDS = {"etcd": ("etcd", "etcd-server", "etcd3gw"), "redis": ("redis-server", "redis-server", "redis")}
_TESTS = Path(__file__).resolve().parent.parent / "tests"
TTL = 1.0  # seconds: the ttl of the failover and handover channels
PEERS = 3  # machines, one peer process each: the host and two survivors
NAME = "jobs"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    return found or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)


def _missing(engine: str) -> str | None:
    """Why ``engine`` cannot be benchmarked here (a skip note), or None."""
    binary, package, module = _NEEDS[engine]
    if _binary(binary) is None:
        return f"skipped: {binary} is not installed (sudo apt-get install {package})"
    if find_spec(module) is None:
        return f"skipped: the Python client {module} is not installed (pip install {module})"
    if find_spec("pytest") is None:
        return "skipped: tests/_servers.py, which starts the servers, needs pytest (pip install pytest)"
    return None


def _server_version(engine: str) -> str:
    """The server's version line and the Python client's version, for the notes."""
    binary, _, module = _NEEDS[engine]
    path = _binary(binary)
    assert path is not None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    return f"{out.strip().splitlines()[0] if out.strip() else binary}, client {module} {version(module)}"


@contextlib.contextmanager
def _server(engine: str, tmp: Path) -> Iterator[EngineServer]:
    """A real etcd or Redis server on 127.0.0.1, data in ``tmp``; stopped on the way out."""
    if str(_TESTS) not in sys.path:
        sys.path.append(str(_TESTS))
    from _servers import start_etcd, start_redis  # noqa: PLC0415 - tests/ is on sys.path only now

    previous = signal.signal(signal.SIGTERM, _exit)  # `timeout`, `kill`: still stop the server (own session)
    try:
        server = start_etcd(tmp) if engine == "etcd" else start_redis(tmp)
        try:
            yield server
        finally:
            server.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit(signum: int, frame: object) -> None:
    """SIGTERM: leave by SystemExit, so that every ``finally`` runs (workers, servers, directories)."""
    del frame
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _scratch(rd: str) -> Iterator[Path]:
    """A temporary directory, removed with everything in it; and no child process left behind."""
    before = {p.pid for p in multiprocessing.active_children()}
    tmp = Path(tempfile.mkdtemp(prefix="across-", dir=rd))
    try:
        yield tmp
    finally:
        for proc in multiprocessing.active_children():  # a worker that failed to start is in no list
            if proc.pid not in before:
                proc.kill()
                proc.join(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _endpoint(url: str) -> tuple[str, str, int, int]:
    """``(engine, host, port, db)`` of a coordinator URL, for the engine-alone workers."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.scheme, parts.hostname, parts.port, int(parts.path.strip("/") or 0)


def _address(slot: int) -> str:
    return f"127.0.0.{2 + slot}"


def _engine_alone(waiter: Worker, endpoint: tuple[str, str, int, int], key: str, crash: bool) -> int:
    """One baseline trial: kill (or release) a holder of ``key``; ns until ``waiter`` has claimed it."""
    holder = Worker(w.engine_holder, endpoint, key, round(TTL * 1000))
    try:
        waiter.send({"watch": key})
        waiter.recv(10)
        if crash:
            time.sleep(random.uniform(0, TTL / 3))  # noqa: S311 - a random point of the renewal cycle
            start = time.monotonic_ns()
            holder.kill()
        else:
            holder.send("release")
            start = holder.recv(10)["at"]
        report = waiter.recv(TTL + 30)
        if not report["ok"]:
            raise RuntimeError(f"the waiter could not claim {key} once it was gone")
        return int(report["claimed"]) - start
    finally:
        holder.stop()


class _Takeovers:
    """3 peers on 3 machines; each trial kills (or closes) the host and times the survivors' first answer."""

    def __init__(self, engine: str, tmp: Path, crash: bool, started: list[Worker], url: str) -> None:
        self.engine, self.tmp, self.crash, self.started, self.url = engine, tmp, crash, started, url
        event = "SIGKILL the host" if crash else "host's close()"
        self.each = Series(f"{engine}: each survivor, {event} -> answered by the new host", unit="ms")
        self.slowest = Series(f"{engine}: slowest survivor per {'kill' if crash else 'close'}", unit="ms")
        self.closes = Series("close() itself", unit="ms")
        self.errors: Counter[str] = Counter()
        self.self_answered = 0
        self.disagreed = 0  # takeovers after which the survivors named different hosts
        self.peers: list[Worker] = []
        self.machine: dict[int, int] = {}  # peer pid -> its machine
        self.seen: dict[int, int] = {}  # peer pid -> the host it last reported
        for machine in range(PEERS):  # one after the other: the first is elected
            self.join(machine)
        self.current = self.peers[0].pid
        if not self.peers[0].info["is_host"]:
            raise RuntimeError(f"{engine}: the first peer was not elected")

    def join(self, machine: int) -> None:
        runtime_dir = self.tmp / f"machine{machine}"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        peer = Worker(w.across_peer, NAME, self.url, (_address(machine), str(runtime_dir)), TTL)
        self.started.append(peer)
        self.peers.append(peer)
        self.machine[peer.pid], self.seen[peer.pid] = machine, peer.info["host"]

    def trial(self) -> None:
        for peer in self.peers:  # every peer has been answered by the current host
            while self.seen[peer.pid] != self.current:
                report = peer.recv(30)
                self.seen[peer.pid] = report["host"]
                self.errors.update(report["errors"])
        old = next(p for p in self.peers if p.pid == self.current)
        self.peers.remove(old)
        if self.crash:
            time.sleep(random.uniform(0, TTL / 3))  # noqa: S311 - a random point of the renewal cycle
            start = time.monotonic_ns()
            old.kill()
        else:
            old.send("close")
            while "returned" not in (reply := old.recv(30)):
                pass  # a last report of its own, sent while it closed
            start = reply["at"]
            self.closes.samples.append(reply["returned"] - start)
        delays, hosts = [], set()
        for peer in self.peers:
            report = peer.recv(TTL + 30)
            self.errors.update(report["errors"])
            delays.append(report["at"] - start)
            self.self_answered += report["is_host"]
            self.current = self.seen[peer.pid] = report["host"]
            hosts.add(self.current)
        self.disagreed += len(hosts) > 1
        self.each.samples.extend(delays)
        self.slowest.samples.append(max(delays))
        old.stop()
        self.join(self.machine[old.pid])  # a fresh peer on the old host's machine: 3 peers again

    def notes(self) -> list[str]:
        pace, timeout = w.ASK_PACE * 1000, w.ASK_TIMEOUT
        answers = len(self.each.samples)
        notes = [
            f"{_server_version(self.engine)}; ttl {TTL:g} s",
            f"{PEERS} peers, each asks who hosts every {pace:g} ms (requests with a {timeout:g} s timeout)",
            f"{self.self_answered} of {answers} survivors' first answers came from themselves (elected)",
        ]
        if self.crash:
            notes.append("each kill (ours and the baseline's) at a random point of the ttl/3 renewal cycle")
        else:
            p50, p99 = self.closes.scaled(self.closes.median()), self.closes.scaled(self.closes.p99())
            notes.append(f"close() itself: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        if self.disagreed:
            notes.append(
                f"after {self.disagreed} takeovers the survivors were first answered by different hosts"
            )
        notes.extend(f"request() raised {n} x {what}" for what, n in self.errors.most_common())
        if not self.errors:
            notes.append("no request() raised anything but its timeout")
        return notes


def _takeovers(engine: str, tmp: Path, trials: int, crash: bool) -> Result:
    """``trials`` takeovers, each followed by one of the engine alone (the baseline)."""
    floor = Series(
        f"{engine} alone: {'SIGKILL the holder' if crash else 'holder deletes the key'}"
        " -> a watcher sees it and claims the key",
        unit="ms",
    )
    with _server(engine, tmp) as server, workers() as started:
        endpoint = _endpoint(server.url)
        waiter = Worker(w.engine_waiter, endpoint, round(TTL * 1000))
        started.append(waiter)
        ours = _Takeovers(engine, tmp, crash, started, server.url)
        for trial in range(trials):
            ours.trial()
            floor.samples.append(_engine_alone(waiter, endpoint, f"floor/{trial}", crash))
    if crash:
        return Result(
            f"across: crash failover, {engine}, ttl {TTL:g} s",
            [ours.each, ours.slowest],
            [floor],
            f"p50 <= ttl + 0.5 s = {(TTL + 0.5) * 1000:,.0f} ms",
            ours.notes(),
        )
    return Result(
        f"across: graceful handover, {engine}",
        [ours.each, ours.slowest],
        [floor],
        "p50 <= 50 ms",
        ours.notes(),
    )


def _per_engine(rd: str, trials: int, crash: bool) -> list[Result]:
    results = []
    for engine in ENGINES:
        title = f"across: {'crash failover' if crash else 'graceful handover'}, {engine}"
        if skip := _missing(engine):
            progress(f"{title}: {skip}")
            results.append(Result(title, [], [], "p50 <= ttl + 0.5 s" if crash else "p50 <= 50 ms", [skip]))
            continue
        progress(f"{title}: {trials} trials")
        with _scratch(rd) as tmp:
            results.append(_takeovers(engine, tmp, trials, crash))
    return results


def bench_failover(cfg: Config, rd: str) -> list[Result]:
    return _per_engine(rd, 3 if cfg.quick else 10, crash=True)


def bench_handover(cfg: Config, rd: str) -> list[Result]:
    return _per_engine(rd, 3 if cfg.quick else 20, crash=False)


def _round_trip_round(url: str, tmp: Path, name: str, samples: int, into: tuple[Series, Series]) -> float:
    """Fresh hosts, channel and connection: ``samples`` interleaved round trips each; the ratio of medians."""
    a, b = into
    message = {"op": "get", "key": "user:1234", "fields": ["name", "email"]}  # a small object
    ours, base = Series(a.name), Series(b.name)
    with workers() as started:
        host = Worker(w.across_host, name, url, (_address(0), str(tmp / "machine0")))
        started.append(host)
        echo = Worker(w.mp_tcp_host, _address(0), w.ACROSS_AUTHKEY)
        started.append(echo)
        channel = w.across_channel(name, w.on_request, url, (_address(1), str(tmp / "machine1")))
        client = Client((_address(0), echo.info["port"]), authkey=w.ACROSS_AUTHKEY)
        try:
            if channel.request(message) != message or channel.channel.is_host:
                raise RuntimeError("the across round trip is not answered by the other machine's host")
            for i in range(samples):  # A, B, A, B...: drift hits both
                start = time.perf_counter_ns()
                channel.request(message)
                ta = time.perf_counter_ns() - start
                start = time.perf_counter_ns()
                client.send(message)
                client.recv()
                tb = time.perf_counter_ns() - start
                if i >= samples // 10:
                    ours.samples.append(ta)
                    base.samples.append(tb)
        finally:
            client.close()
            channel.close()
    a.samples.extend(ours.samples)
    b.samples.extend(base.samples)
    return ours.median() / base.median()


def bench_round_trip(cfg: Config, rd: str) -> Result:
    """request() to the host on 127.0.0.2 from this process, vs multiprocessing.connection, interleaved."""
    title = "across: round trip over TCP with an authkey"
    if skip := _missing("etcd"):
        return Result(title, [], [], "ratio <= 1.2", [skip])
    rounds = 2 if cfg.quick else 6
    a = Series("RequestChannel.request() (json) to the host on 127.0.0.2")
    b = Series("multiprocessing.connection Client.send()/recv() (pickle), same authkey")
    with _scratch(rd) as tmp, _server("etcd", tmp) as server:
        for machine in range(2):
            (tmp / f"machine{machine}").mkdir(mode=0o700)
        ratios = [
            _round_trip_round(server.url, tmp, f"rtt{r}", cfg.round_trips // rounds, (a, b))
            for r in range(rounds)
        ]
    return Result(
        title,
        [a],
        [b],
        "ratio <= 1.2",
        [
            f"{_server_version('etcd')} elects the host; a round trip does not touch it",
            "message: a dict of 3 short fields",
            f"{rounds} rounds, each with fresh processes (one set's medians can be twice another's)",
            "ratio per round: " + ", ".join(f"{r:.2f}x" for r in ratios),
        ],
    )


def bench_shared_dict(cfg: Config, rd: str) -> Result:
    """d[k] = v from this machine; the host and two more replicas on three others. vs redis-py SET (TCP)."""
    title = "across: SharedDict write, host and 3 replicas on 4 machines"
    if skip := _missing("redis"):
        return Result(title, [], [], "report", [skip])
    import redis  # noqa: PLC0415 - an optional extra

    samples = 200 if cfg.quick else 2000
    ours = Series("SharedDict d[key] = value, acknowledged once every replica applied it")
    base = Series("redis-py SET over TCP to the coordinator's redis-server")
    with _scratch(rd) as tmp, _server("redis", tmp) as server, workers() as started:
        for machine in range(4):
            (tmp / f"machine{machine}").mkdir(mode=0o700)
        for machine in range(3):  # the first hosts
            started.append(
                Worker(w.across_dict, "sdx", server.url, (_address(machine), str(tmp / f"machine{machine}")))
            )
        shared = ipchannel.SharedDict(
            "sdx",
            coordinator=server.url,
            authkey=w.ACROSS_AUTHKEY,
            listen=f"{_address(3)}:0",
            runtime_dir=str(tmp / "machine3"),
        )
        _kind, host, port, db = _endpoint(server.url)
        client = redis.Redis(host=host, port=port, db=db)
        try:
            if shared.channel.is_host:
                raise RuntimeError("the across SharedDict write is not answered by another machine's host")
            for i in range(samples):  # A, B, A, B...: drift hits both
                start = time.perf_counter_ns()
                shared["k"] = i
                ta = time.perf_counter_ns() - start
                start = time.perf_counter_ns()
                client.set("k", i)
                tb = time.perf_counter_ns() - start
                if i >= samples // 10:
                    ours.samples.append(ta)
                    base.samples.append(tb)
        finally:
            client.close()
            shared.close()
    return Result(
        title,
        [ours],
        [base],
        "report",
        [
            f"{_server_version('redis')} elects the host; a write does not touch it",
            "interleaved sample by sample",
        ],
    )


SCENARIOS: dict[str, Callable[[Config, str], Result | list[Result]]] = {
    "across-failover": bench_failover,
    "across-handover": bench_handover,
    "across-request": bench_round_trip,
    "across-shareddict": bench_shared_dict,
}
