"""run_on_host and publish across machines when the host is cut off from the engine (a partition).

Every peer reaches the engine (real etcd or redis-server) through a ``PartitioningProxy``,
which can silently drop the packets of one process: the host keeps running, believes it
hosts, and its claim lapses; another process takes over. Each peer plays a machine (its own
runtime directory and loopback address), as in ``test_across``.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import _machines
import pytest
from _proxy import PartitioningProxy
from _servers import EngineServer, RedisServer, free_ports, shared_redis, start_etcd
from conftest import Peer, Peers, wait_until

import ipchannel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = b"k" * 32
TTL = 1.0


class Proxied(Peers):
    """Machines whose every engine connection goes through one proxy, which can cut one of them off."""

    def __init__(self, server: EngineServer, root: Path) -> None:
        super().__init__(root)
        self.root = root
        (front,) = free_ports(1)
        address = f"127.0.0.1:{server.ports[0]}"
        assert address in server.url
        self.url = server.url.replace(address, f"127.0.0.1:{front}")
        self.proxy = PartitioningProxy(("127.0.0.1", front), ("127.0.0.1", server.ports[0]))

    def boot(self, name: str, monitor_interval: float | None = None, **options: Any) -> Peer:
        index = len(self.started) + 2
        settings = {"coordinator": self.url, "authkey": KEY, "ttl": TTL, "listen": f"127.0.0.{index}:0"}
        extra = ("requests", settings | options)
        peer = Peer(name, self.root / f"machine{index}", _machines.machine_main, extra)
        self.started.append(peer)
        join = {} if monitor_interval is None else {"monitor_interval": monitor_interval}
        peer.call("join", timeout=20, **join)
        return peer


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from shared_redis(tmp_path_factory)


@pytest.fixture(params=["etcd", "redis"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path, module_redis: RedisServer) -> Iterator[Proxied]:
    """Machines on etcd (of the test's own) or on the module's Redis emptied (``shared_redis``)."""
    server = start_etcd(tmp_path, aged=True) if request.param == "etcd" else module_redis.emptied()
    try:
        pool = Proxied(server, tmp_path)
        try:
            yield pool
        finally:
            pool.close_all()
            pool.proxy.close()
    finally:
        if server is not module_redis:
            server.stop()


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _runs(path: Path) -> list[tuple[float, float, int]]:
    """The finished runs: (start, end, pid), by start time (one clock: the machines share a kernel)."""
    return sorted((float(start), float(end), int(pid)) for pid, start, end in _rows(path))


@pytest.mark.timeout(90)
def test_a_host_cut_off_from_the_engine_mid_run_never_overlaps_the_next_host_and_says_so(
    proxied: Proxied, tmp_path: Path
) -> None:
    # A 2 s run every 0.2 s; the host loses its engine link as a run begins. Its claim lapses
    # (ttl 1 s) while the run goes on; the other process takes over. Before the fix it ran the
    # job 0.2 s after taking over, while the first run still had about a second to go.
    log, started, ends = tmp_path / "runs.log", tmp_path / "started.log", tmp_path / "host.log"
    old = proxied.boot("jobs")
    new = proxied.boot("jobs")
    assert old.call("info")["is_host"]
    old.call("log_to", path=str(ends))
    job: dict[str, Any] = {"path": str(log), "every": 0.2, "duration": 2.0, "started": str(started)}
    job["time_limit"] = 2.5
    for peer in (old, new):
        peer.call("run_on_host", **job)
    wait_until(lambda: len(_rows(started)) >= 1, timeout=10)
    assert proxied.proxy.partition(old.pid) >= 1  # its renewals go unanswered from now on
    assert int(_rows(started)[0][0]) == old.pid
    # the new host runs the job, and the old host's run (cut off, not killed) has ended
    wait_until(lambda: any(pid == new.pid for _, _, pid in _runs(log)), timeout=TTL + 2.5 + 2 * 2.0 + 5)
    wait_until(lambda: any(pid == old.pid for _, _, pid in _runs(log)), timeout=5)
    runs = _runs(log)
    unfinished = {int(pid) for pid, _ in _rows(started)} - {pid for _, _, pid in runs}
    assert runs[0][2] == old.pid, runs
    for (_, end, pid_a), (start, _, pid_b) in itertools.pairwise(runs):
        assert start >= end, f"a run of {pid_b} started {end - start:.2f} s before one of {pid_a} ended"
    assert not unfinished - {new.pid}, unfinished  # (a run of the new host may be going on now)
    # the old host said, as its run went on past its claim, which job, which channel, what to change
    errors = [line for line in ends.read_text().splitlines() if " ERROR " in line]
    said = (
        "channel 'jobs': a run of host job ",
        "still runs",
        "past this host's claim",
        "raise run_on_host's time_limit",
    )
    assert any(all(part in line for part in said) for line in errors), errors


def _lapsed(asker: Peer, url: str) -> bool:
    """True once the engine holds no claim on the channel: the cut-off host's has expired."""
    return not asker.call("engine_status", url=url)["channels"]


@pytest.mark.timeout(60)
def test_a_host_whose_claim_lapsed_does_not_deliver_its_own_publish(proxied: Proxied) -> None:
    # The host's monitor would tick only every 30 s, and nobody asks it anything: it still
    # believes it hosts when its claim lapses. Its subscribers stay attached to it (no other
    # process may host, so none moves). Before the fix its publish() reached them all.
    host = proxied.boot("news", monitor_interval=30.0)
    reader = proxied.boot("news", may_host=False)
    assert reader.call("subscribe")["subscribed"] == host.call("info")["generation"]
    host.call("publish", message="before")
    wait_until(lambda: reader.call("received")["messages"] == ["before"])
    assert proxied.proxy.partition(host.pid) >= 1
    wait_until(lambda: _lapsed(reader, proxied.url), timeout=TTL + 5)
    refused = host.try_call("publish", timeout=15, message="fenced", wait=2.0)
    # what a user expects of a host that may not serve: as from any process, the message goes
    # to the host that serves, and with none reachable within the timeout, a ChannelTimeout
    # (here CoordinatorUnavailable: the engine, which names the host, cannot be reached)
    assert not refused["ok"], refused
    assert issubclass(getattr(ipchannel, refused["error"]), ipchannel.ChannelTimeout), refused
    host.call("may_host", value=False)
    proxied.proxy.heal(host.pid)
    reader.call("may_host", value=True)  # the real host from now on: "fenced" never reaches it
    wait_until(lambda: reader.call("info")["is_host"], timeout=TTL + 5)
    reader.call("publish", message="after")
    wait_until(lambda: "after" in reader.call("received")["messages"], timeout=10)
    assert reader.call("received")["messages"] == ["before", "after"]
