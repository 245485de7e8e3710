"""When the coordinator forgets: an engine restarted empty, reconfigured, or its record rewritten.

Real etcd and redis-server, restarted on the same port with their data directory removed
(no persistence); peers that each play a machine (``test_across.Machines``); a proxy that
stalls one peer's link to the engine (``_proxy``) so that an old host serves as long as
its fence lets it, the widest window a reset leaves.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from _proxy import PartitioningProxy
from _servers import EngineServer, RedisServer, free_ports, start_etcd, start_redis
from conftest import freeze, wait_until
from test_across import Machines, served_by, with_cont

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(params=["redis", "etcd"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineServer]:
    # etcd's data as a server up for a while (a reset below makes it fresh again, as the tests mean)
    started = start_etcd(tmp_path, aged=True) if request.param == "etcd" else start_redis(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def pool(server: EngineServer, tmp_path: Path) -> Iterator[Machines]:
    machines = Machines(server, tmp_path)
    try:
        yield machines
    finally:
        machines.close_all()


def restart_empty(server: EngineServer) -> None:
    """Restart ``server`` on its port with no data: a server without persistence, or a new cluster."""
    server.kill()
    shutil.rmtree(server.data_dir)
    server._start()  # noqa: SLF001 - the fixture's own server


def _port(server: EngineServer) -> int:
    return int(server.url.rpartition(":")[2].partition("/")[0])


def _through(server: EngineServer, front: int) -> str:
    """Return the URL of ``server`` as reached through a proxy on 127.0.0.9:``front``."""
    return f"redis://127.0.0.9:{front}/0" if server.name == "redis" else f"etcd://127.0.0.9:{front}"


def _raise_generation(server: EngineServer, above: int) -> None:
    """Make the next claim's generation exceed ``above`` (a counter that counted claims before)."""
    if server.name == "redis":
        import redis  # noqa: PLC0415 - the redis extra

        client = redis.Redis(port=_port(server))
        try:
            client.set("ipchannel:{jobs}:generation", above)
        finally:
            client.close()
        return
    for n in range(above):  # etcd numbers claims by its revision: every put raises it
        filler = {"key": base64.b64encode(b"filler").decode(), "value": base64.b64encode(b"%d" % n).decode()}
        _etcd_post(server, "/v3/kv/put", filler)


def _stored(client: Any) -> bytes:
    """Return the host record of channel "jobs" as Redis stores it (GENERATION JSON)."""
    value = client.get("ipchannel:{jobs}")
    assert isinstance(value, bytes), value
    return value


def _answers(reports: list[dict[str, Any]]) -> list[list[float]]:
    return [run for report in reports for run in report["runs"]]


def flush(server: EngineServer) -> None:
    """Delete the channel's keys as an operator would: FLUSHALL (Redis), a delete of its prefix (etcd)."""
    if server.name == "redis":
        import redis  # noqa: PLC0415 - the redis extra

        client = redis.Redis(port=_port(server))
        try:
            client.flushall()
        finally:
            client.close()
        return
    key = base64.b64encode(b"/ipchannel/jobs/").decode()
    end = base64.b64encode(b"/ipchannel/jobs0").decode()
    _etcd_post(server, "/v3/kv/deleterange", {"key": key, "range_end": end})


def _etcd_post(server: EngineServer, path: str, payload: dict[str, str]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{_port(server)}{path}", data=json.dumps(payload).encode(), method="POST"
    )
    with _HTTP.open(request, timeout=5) as reply:
        reply.read()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reset", ["restart", "flush"])
def test_an_engine_reset_never_lets_the_old_and_the_new_host_answer_together(
    server: EngineServer, pool: Machines, reset: str
) -> None:
    # The old host's link to the engine stalls just before the engine restarts empty (or its keys
    # are deleted, on a server up for longer than the ttl): it cannot learn that its claim is gone
    # and serves until its fence lapses (ttl - margin after its last renewal). The other peer finds
    # no claim and takes the channel at once; before the fix it answered at once too, while the old
    # host still answered its own requests.
    ttl = 3.0
    front = free_ports(1)[0]
    proxy = PartitioningProxy(("127.0.0.9", front), ("127.0.0.1", _port(server)))
    try:
        (old,) = pool.boot(1, coordinator=_through(server, front), ttl=ttl)
        (new,) = pool.boot(1, ttl=ttl)
        assert served_by(new) == old.pid
        for peer in (old, new):
            peer.call("load_start", wait=30)
        time.sleep(0.3 if reset == "restart" else ttl)  # flush: the server (its data) is older than a ttl
        assert proxy.partition(old.pid) >= 1
        (restart_empty if reset == "restart" else flush)(server)
        wait_until(lambda: new.call("info")["is_host"], timeout=15)
        time.sleep(ttl + 1.0)  # past any hold: the new host answers
        proxy.heal(old.pid)
        wait_until(lambda: old.call("info")["host_pid"] == new.pid, timeout=20)
        time.sleep(0.5)
        reports = [peer.call("load_stop", timeout=60) for peer in (old, new)]
    finally:
        proxy.close()
    runs = _answers(reports)
    first_new = min(run[2] for run in runs if run[0] == new.pid)  # answered (received) first
    late = [run for run in runs if run[0] == old.pid and run[3] > first_new]  # sent after that
    assert not late, (
        f"the old host answered requests sent {late[0][3] - first_new:.3f} s after the new one did"
    )
    assert reports[1]["errors"] == [], reports[1]["errors"][:3]
    assert any(run[0] == new.pid for run in reports[0]["runs"])  # the old host's process follows the new


@pytest.mark.timeout(60)
def test_a_client_running_all_along_follows_a_host_elected_after_the_engine_restarted_empty(
    server: EngineServer, pool: Machines
) -> None:
    _raise_generation(server, 4)
    (old,) = pool.boot(1)
    (client,) = pool.boot(1)
    client.call("may_host", value=False)
    assert served_by(client) == old.pid
    seen = client.call("info")["generation"]
    old.kill()
    restart_empty(server)
    (newcomer,) = pool.boot(1)  # started after the restart: it has seen nothing, and numbers from 1
    assert newcomer.call("info")["generation"] < seen
    assert served_by(client, timeout=10) == newcomer.pid  # no restart of the client needed
    assert client.call("info")["generation"] == newcomer.call("info")["generation"]


@pytest.mark.timeout(60)
def test_redis_restarted_without_keyspace_notifications_fails_over_within_the_ttl(tmp_path: Path) -> None:
    server = start_redis(tmp_path, notifications=True)
    machines = Machines(server, tmp_path)
    try:
        host, (follower,) = machines.boot_served(2)
        assert isinstance(server, RedisServer)
        server.notifications = False
        server.restart()  # the AOF keeps the claim; the watches break and are made again
        restarted = time.monotonic()
        assert served_by(follower, timeout=10) == host.pid
        # the server up for over a ttl (no hold on the next claim), the follower's watch made again
        time.sleep(max(0.0, restarted + 1.2 - time.monotonic()))
        host.kill()
        killed = time.monotonic()
        wait_until(lambda: follower.call("info")["is_host"], timeout=10)  # its monitor: no request
        took = time.monotonic() - killed
        assert took < 2.5, f"failover took {took:.2f} s at ttl 1 (was 4.6 s: waiters blocked 5 s)"
        assert served_by(follower) == follower.pid
    finally:
        machines.close_all()
        server.stop()


@pytest.mark.timeout(60)
def test_a_record_rewritten_to_another_address_makes_the_real_host_step_down_with_an_error(
    tmp_path: Path,
) -> None:
    import redis  # noqa: PLC0415 - the redis extra

    server = start_redis(tmp_path)
    machines = Machines(server, tmp_path)
    client = redis.Redis(port=_port(server))
    log = tmp_path / "host.log"
    try:
        host, (follower,) = machines.boot_served(2)
        host.call("log_to", path=str(log))
        generation, _, text = _stored(client).partition(b" ")
        record = json.loads(text)
        record["sock"] = "127.0.0.1:9"  # same generation, same epoch: only the address differs
        client.set("ipchannel:{jobs}", generation + b" " + json.dumps(record).encode(), keepttl=True)
        wait_until(lambda: not host.call("info")["is_host"], timeout=5)  # at its next renewal
        errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
        assert errors, log.read_text()
        assert "changed by someone else" in errors[0]
        assert "127.0.0.1:9" in errors[0]
        # nobody renews the forged record: it lapses within the ttl and a real host is elected
        assert served_by(follower, timeout=10) in {host.pid, follower.pid}
        assert json.loads(_stored(client).partition(b" ")[2])["sock"] != "127.0.0.1:9"
    finally:
        client.close()
        machines.close_all()
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("persists", [True, False])
def test_a_redis_that_keeps_nothing_on_disk_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, persists: bool
) -> None:
    import redis  # noqa: PLC0415 - the redis extra

    import ipchannel  # noqa: PLC0415

    server = start_redis(tmp_path)  # an AOF, no RDB snapshots
    client = redis.Redis(port=_port(server))
    try:
        if not persists:
            client.config_set("appendonly", "no")
        caplog.set_level(logging.WARNING, logger="ipchannel")
        with ipchannel.Channel(
            "disk", lambda _conn: None, coordinator=server.url, authkey=b"k" * 32, listen="127.0.0.2:0",
            ttl=1.0, runtime_dir=str(tmp_path / "rt"),
        ) as channel:  # fmt: skip
            channel.join(10)
        warned = [r.getMessage() for r in caplog.records if "keeps no data on disk" in r.getMessage()]
        assert len(warned) == (0 if persists else 1), warned
        if warned:
            assert server.url in warned[0]
    finally:
        client.close()
        server.stop()


@pytest.mark.timeout(90)
def test_replicas_apply_the_writes_of_a_host_elected_after_the_engine_restarted_empty(
    server: EngineServer, pool: Machines
) -> None:
    # The engine numbers claims from scratch after it (Redis's counter, etcd's revisions): before
    # the fix the new host could carry the old host's generation in the new epoch, and replicas
    # at (that generation, 90) dropped its changes (1, 2, ...) as applied already: [90, 90] for good.
    peers = pool.boot(3, kind="dict", name="counts")
    old = pool.host(peers)
    survivors = [p for p in peers if p is not old]
    for peer in peers:
        peer.call("incr", key="n", times=30, timeout=30)  # the old host's term reaches sequence 90
    wait_until(lambda: all(p.call("get", key="n")["value"] == 90 for p in peers), timeout=10)
    old.kill()
    restart_empty(server)
    wait_until(lambda: any(p.call("info")["may_serve"] for p in survivors), timeout=20)
    pool.host(survivors)
    values = [v for p in survivors for v in p.call("incr", key="n", times=5, timeout=30)["values"]]
    assert sorted(values) == list(range(91, 101))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        read = [p.call("get", key="n")["value"] for p in survivors]
        if read == [100, 100]:
            return
        time.sleep(0.05)
    pytest.fail(f"10 s after the last acknowledged write (100), the replicas read {read}")


@pytest.mark.timeout(60)
def test_a_host_that_wakes_to_find_another_elected_steps_down_without_crying_tampering(
    pool: Machines, tmp_path: Path
) -> None:
    # Frozen past its ttl, the host wakes to find its key expired and claimed by another: an
    # ordinary takeover. Its renewal finds another record there (another generation), which is
    # not "changed by someone else": before the fix it logged that ERROR, sending the operator
    # after an intruder in the engine after every freeze or partition.
    log = tmp_path / "host.log"
    (old,) = pool.boot(1, monitor_interval=30.0)  # its renewal, not its monitor, meets the new record
    (new,) = pool.boot(1)
    assert served_by(new) == old.pid
    old.call("log_to", path=str(log))
    freeze(old.pid)
    try:
        wait_until(lambda: new.call("info")["is_host"], timeout=15)
    finally:
        with_cont(old.pid)
    wait_until(lambda: not old.call("info")["is_host"], timeout=10)
    lines = log.read_text().splitlines()
    assert any("steps down" in line for line in lines), lines
    errors = [line for line in lines if " ERROR " in line]
    assert not errors, errors


@pytest.mark.timeout(90)
def test_a_subscriber_asleep_through_a_reset_gets_what_a_newcomer_host_replays(
    server: EngineServer, pool: Machines
) -> None:
    # A host started after the engine restarted empty has followed nothing: it numbers from
    # scratch and can carry the generation of the host before it, in a new epoch. A subscriber
    # frozen meanwhile resumed with (that generation, its last number 50): before the fix the new
    # host took it for a subscriber of its own term, replayed nothing of what it had published
    # (1 message) and reported nothing missed: the message was lost silently.
    (old,) = pool.boot(1)
    subscriber, publisher = pool.boot(2)
    for peer in (subscriber, publisher):
        peer.call("may_host", value=False)
    subscriber.call("subscribe")
    for n in range(50):
        publisher.call("publish", message=n)
    wait_until(lambda: len(subscriber.call("received")["messages"]) == 50, timeout=10)
    freeze(subscriber.pid)
    try:
        old.kill()
        restart_empty(server)
        (newcomer,) = pool.boot(1)
        wait_until(lambda: newcomer.call("info")["may_serve"], timeout=10)
        publisher.call("publish", message="after the reset", wait=10)
    finally:
        with_cont(subscriber.pid)
    wait_until(lambda: "after the reset" in subscriber.call("received")["messages"], timeout=10)
