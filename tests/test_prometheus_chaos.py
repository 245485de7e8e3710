"""ipchannel.contrib.prometheus under an operator's bad day: frozen hosts, kills, garbage."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from conftest import Peer, Workers, wait_until
from test_prometheus import SLOW, _run, _scrape, _total

from ipchannel.contrib import _metricsops

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(60)
def test_a_push_applied_by_a_host_that_answered_too_late_is_not_counted_twice(
    workers: Workers, runtime_dir: Path
) -> None:
    first, second = workers.start(2, flush_interval=0.2, timeout=1.0)
    host = workers.host()
    worker = second if host is first else first
    flag, release = runtime_dir / "held", runtime_dir / "release"
    host.call(
        "pause_at",
        point="shareddict.published",
        marker=f", {worker.pid}, ",
        flag=str(flag),
        release=str(release),
    )
    worker.call("count", n=5)
    wait_until(flag.exists, timeout=10)  # applied and published, not answered yet
    time.sleep(2.5)  # the worker's write times out (1 s) and it sends its 5 again
    release.touch()
    assert _total(_scrape(host)) == 5


def _series(metric: str, name: str, **labels: str) -> str:
    return _metricsops.series_key(metric, name, labels)


#: Pushes of another shape that the host must refuse whole: each would break every later scrape
#: (or be applied halfway), for good, since the journal keeps it.
_GARBAGE: dict[str, list[Any]] = {
    "an unknown metric type": [[["x", "bogus", "", ""]], [], [], [], []],
    "a gauge mode that is not one": [[["y", "gauge", "", 5]], [], [], [], []],
    "a series key that is not one": [[], [["k", 1.0]], [], [], []],
    "a bucket with no bound": [[["h", "histogram", "", ""]], [[_series("h", "h_bucket"), 1.0]], [], [], []],
    "an info stamped with a string": [
        [],
        [[_series("requests", "requests_total", path="/"), 1000.0]],
        [],
        [["i", "late", "info", "", []]],
        [],
    ],
    "info samples of another shape": [
        [],
        [],
        [],
        [["j", 1.0, "info", "", [["j_info", "not labels", 1]]]],
        [],
    ],
}


@pytest.mark.timeout(60)
def test_a_push_of_another_shape_is_refused_whole_and_every_later_scrape_works(workers: Workers) -> None:
    sender, scraper = workers.start(2, **SLOW)
    sender.call("count", n=3)
    for number, (what, parts) in enumerate(_GARBAGE.items(), start=1):
        reply = sender.try_call("push", push=["intruder", 1, number, 0, *parts])
        assert not reply["ok"], what
        assert "not in the format of this ipchannel version" in reply["error"], (what, reply)
    good = [[], [[_series("requests", "requests_total", path="/"), 4.0]], [], [], []]
    sender.call("push", push=["intruder", 1, len(_GARBAGE) + 1, 0, *good])  # its content was refused
    assert _total(_scrape(scraper)) == 3 + 4


_PRELOADED = """
import os, threading, prometheus_client
from ipchannel.contrib import prometheus
prometheus.enable("preloaded", flush_interval=60)
requests = prometheus_client.Counter("requests", "Requests", ["path"])
requests.labels(path="/")
prometheus_client.Gauge("busy", "Busy", multiprocess_mode="livesum")
prometheus_client.Histogram("latency", "Latency")
prometheus_client.Enum("state", "State", states=["a", "b"])
print(sorted(thread.name for thread in threading.enumerate()), flush=True)
pid = os.fork()
if pid == 0:  # a worker: joins (post_worker_init), counts, exits as gunicorn's do (SystemExit)
    prometheus.start()
    requests.labels(path="/").inc(2)
    raise SystemExit(0)
os.waitpid(pid, 0)
text = prometheus_client.generate_latest().decode()
print([line for line in text.splitlines() if line.startswith("requests_total")])
"""


@pytest.mark.usefixtures("runtime_dir")
def test_a_preload_master_that_creates_metrics_starts_no_thread_before_it_forks() -> None:
    result = _run(_PRELOADED)
    lines = result.stdout.splitlines()
    assert lines[:1] == ["['MainThread']"], result.stderr
    assert lines[1:] == ["['requests_total{path=\"/\"} 2.0']"], result.stderr


def _pushes(path: Path) -> tuple[float, float]:
    """Return (what the host surely applied, the most it may have) from a ``record_pushes`` log."""
    tried: dict[str, float] = {}
    applied = 0.0
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, number, amount = line.split()
        if kind == "ok":
            applied += float(amount)
        tried[number] = float(amount)  # a push sent again has its number: it counts once
    return applied, sum(tried.values())


class _Chaos:
    """Workers under random counts, scrapes, freezes (SIGSTOP) and kills; what each counted."""

    OPTIONS: ClassVar[dict[str, float]] = {"flush_interval": 0.3, "scrape_timeout": 0.5, "timeout": 2.0}

    def __init__(self, workers: Workers, runtime_dir: Path, rng: random.Random) -> None:
        self._workers, self._runtime_dir, self._rng = workers, runtime_dir, rng
        self.counted: dict[Peer, int] = {}
        self.frozen: dict[Peer, float] = {}  # until when
        self.killed: list[Peer] = []
        self.slowest = 0.0  # the longest scrape
        self.live = [self.start() for _ in range(4)]

    def start(self) -> Peer:
        (peer,) = self._workers.start(1, **self.OPTIONS)
        peer.call("record_pushes", path=str(self._runtime_dir / f"pushes-{peer.pid}"))
        self.counted[peer] = 0
        return peer

    def thaw(self, *, every: bool = False) -> None:
        for peer, until in list(self.frozen.items()):
            if every or until <= time.monotonic():
                os.kill(peer.pid, signal.SIGCONT)
                del self.frozen[peer]

    def step(self) -> None:
        self.thaw()
        rng = self._rng
        action = rng.choice(("count", "count", "count", "scrape", "freeze", "kill"))
        awake = [peer for peer in self.live if peer not in self.frozen]
        if action == "count":
            peer, n = rng.choice(awake), rng.randint(1, 20)
            peer.call("count", n=n)
            self.counted[peer] += n
        elif action == "scrape":
            started = time.monotonic()
            _scrape(rng.choice(awake))
            self.slowest = max(self.slowest, time.monotonic() - started)
        elif action == "freeze" and len(awake) > 1:  # the host too: longer than max_lag, at times
            peer = rng.choice(awake)
            os.kill(peer.pid, signal.SIGSTOP)
            self.frozen[peer] = time.monotonic() + rng.uniform(0.2, 3.0)
        elif action == "kill":  # the host too
            peer = rng.choice(self.live)
            peer.kill()
            self.frozen.pop(peer, None)
            self.live.remove(peer)
            self.killed.append(peer)
            self.thaw(every=True)  # a new worker sends once before it takes commands: a host that runs
            self.live.append(self.start())


@pytest.mark.timeout(120)
def test_random_kills_and_freezes_lose_only_unsent_counts_and_count_nothing_twice(
    workers: Workers, runtime_dir: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    chaos = _Chaos(workers, runtime_dir, random.Random(seed))  # noqa: S311 - replayable with CHAOS_SEED
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        chaos.step()
    chaos.thaw(every=True)
    for peer in chaos.live:  # every worker exits at once (max_requests with an even load): nothing lost
        peer.start_call("exit")
    for peer in chaos.live:
        peer.finish_call(timeout=30)
        peer.process.join(10)
    total = _total(_scrape(chaos.start()))  # from the journal alone

    bounds = {peer: _pushes(runtime_dir / f"pushes-{peer.pid}") for peer in chaos.counted}
    context = f"seed {seed}: total {total}, counted {sum(chaos.counted.values())}, {len(chaos.killed)} killed"
    for peer in chaos.live:
        assert bounds[peer] == (chaos.counted[peer], chaos.counted[peer]), context  # exited: all sent, once
    low, high = (sum(bound[i] for bound in bounds.values()) for i in (0, 1))
    assert low <= total <= high, context  # the killed lost only unsent counts; nothing counted twice
    # none stuck: a scrape waits for a frozen host a write's timeout per step (its send, the scrape)
    assert chaos.slowest < 2 * 2.0 + 2.0 + 0.5 + 1.5, context  # and a frozen worker max_lag, scrape_timeout
