"""ipchannel.contrib.limits: limits' storage ipchannel:// shared by real processes, its host killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import _limits_peers
import pytest
from conftest import Peer, Peers, spawned, wait_until
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from ipchannel.contrib import _limitsops
from ipchannel.contrib import limits as contrib_limits

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def storage(runtime_dir: Path) -> Iterator[contrib_limits.SharedDictStorage]:
    made = storage_from_string(f"ipchannel://limits-test?runtime_dir={runtime_dir}")
    assert isinstance(made, contrib_limits.SharedDictStorage)
    yield made
    contrib_limits.close_all()


def test_bad_uris_and_options_raise_naming_the_option(runtime_dir: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown option 'colour'.*known: advertise, appendfsync"):
        storage_from_string("ipchannel://x?colour=blue")
    with pytest.raises(TypeError, match="unknown option 'nope'"):
        storage_from_string("ipchannel://x", nope=1)
    with pytest.raises(TypeError, match=r"option 'timeout' must be int or float or NoneType, not '2'"):
        storage_from_string("ipchannel://x", timeout="2")
    with pytest.raises(ValueError, match=r"option 'timeout' must be > 0 seconds, not -1\.0"):
        storage_from_string("ipchannel://x?timeout=-1")
    with pytest.raises(ValueError, match="option 'appendonly' has a value it cannot take: 'maybe'"):
        storage_from_string("ipchannel://x?appendonly=maybe")
    with pytest.raises(ValueError, match="option 'ssl_context' cannot be given"):
        storage_from_string("ipchannel://x?ssl_context=a")
    with pytest.raises(ValueError, match="names no channel"):
        storage_from_string("ipchannel://")
    with pytest.raises(ValueError, match="invalid channel name"):
        storage_from_string("ipchannel://.hidden")
    with pytest.raises(ValueError, match="'appendonly' is for ipchannel:// only"):
        storage_from_string("async+ipchannel://x?appendonly=true")
    made = storage_from_string(f"ipchannel://x?timeout=2.5&runtime_dir={runtime_dir}", ssl_verify=True)
    assert made._options == {"timeout": 2.5, "runtime_dir": str(runtime_dir), "ssl_verify": True}  # type: ignore[union-attr] # noqa: SLF001
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("ipchannel-")]  # lazy


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("ipchannel://x?runtime_dir=", "option 'runtime_dir' has no value in the URI's query"),
        ("ipchannel://x?appendfsync=always", "appendfsync applies only with appendonly=True"),
        ("ipchannel://x?coordinator=redis://h:6379", "authkey is required with a coordinator"),
        ("async+ipchannel://x?listen=127.0.0.1:0", "listen applies only with a coordinator"),
    ],
)
def test_options_that_cannot_work_raise_when_the_storage_is_made(uri: str, match: str) -> None:
    """At the app's start (Limiter(storage_uri=...)), not at its first request, where it would 500."""
    with pytest.raises(ValueError, match=match):
        storage_from_string(uri)


def test_importing_without_limits_names_the_extra() -> None:
    code = "import sys; sys.modules['limits'] = None; import ipchannel.contrib.limits"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1
    assert "pip install 'ipchannel[limits]'" in proc.stderr


def test_fixed_moving_and_sliding_windows_count_and_expire(storage: contrib_limits.SharedDictStorage) -> None:
    assert storage.incr("k", 0.2) == 1
    assert storage.incr("k", 100, amount=2) == 3  # the expiry of a live counter stays
    assert storage.get("k") == 3
    assert storage.get_expiry("k") - time.time() < 0.2
    assert storage.acquire_entry("m", 2, 0.2)
    assert storage.acquire_entry("m", 2, 0.2)
    assert not storage.acquire_entry("m", 2, 0.2)
    assert storage.get_moving_window("m", 2, 0.2)[1] == 2
    assert not storage.acquire_entry("big", 2, 10, amount=3)
    wait_until(lambda: storage.get("k") == 0 and storage.get_moving_window("m", 2, 0.2)[1] == 0, timeout=2)
    assert storage.acquire_entry("m", 2, 0.2)
    assert storage.acquire_sliding_window_entry("s", 2, 3600, amount=2)
    assert not storage.acquire_sliding_window_entry("s", 2, 3600)
    assert storage.get_sliding_window("s", 3600)[2] == 2
    storage.clear_sliding_window("s", 3600)
    assert storage.get_sliding_window("s", 3600)[2] == 0
    assert storage.check()
    assert storage.reset() == 1  # the live entries: the moving window "m" (k expired, s cleared)
    assert len(storage.shared) == 0


def test_expired_entries_are_swept_by_later_writes(
    storage: contrib_limits.SharedDictStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_limitsops, "_clock", lambda: clock[0])  # this process hosts: it stamps too
    storage.incr("lasting", 3600)
    for i in range(200):
        storage.incr(f"short-{i}", 5)
    assert len(storage.shared) == 201
    clock[0] = 1005.0  # every short entry expires (at 1005: no write swept meanwhile)
    for _ in range(60):  # 60 writes look at 4 entries each: every entry once
        storage.incr("again", 3600)
    assert sorted(storage.shared) == ["c/again", "c/lasting"]
    assert storage.get("lasting") == 1


class _CountingDict(dict[str, list[Any]]):
    """A replica's data that counts the keys a write iterates over."""

    looked_at = 0

    def __iter__(self) -> Iterator[str]:
        for name in super().__iter__():
            self.looked_at += 1
            yield name


def test_a_write_looks_at_a_few_entries_however_many_there_are() -> None:
    data = _CountingDict({f"c/client-{i}": [2000.0, 1] for i in range(10_000)})
    _limitsops._incr(data, 1000.0, "hot", 60, 1)  # noqa: SLF001 - the op as host and replicas apply it
    _limitsops._acquire_moving(data, 1000.0, "hot", 5, 60, 1)  # noqa: SLF001
    assert data.looked_at == 2 * _limitsops.SWEEP


def test_an_op_that_raises_changes_nothing() -> None:
    data = {f"c/old-{i}": [500.0, 1] for i in range(3)} | {"c/live": [2000.0, 1]}
    before = list(data.items())
    for bad in ([5, 10, 1], ["k", "10", 1], ["live", 10, "2"]):  # sent with perform, past check()
        with pytest.raises(TypeError):
            _limitsops._incr(data, 1000.0, *bad)  # noqa: SLF001
    with pytest.raises(TypeError):
        _limitsops._acquire_moving(data, 1000.0, "k", 5, 10, 1.5)  # type: ignore[arg-type] # noqa: SLF001
    assert list(data.items()) == before  # not swept either: the replicas, which never apply it, agree


def test_bad_arguments_raise_before_anything_is_sent(storage: contrib_limits.SharedDictStorage) -> None:
    with pytest.raises(TypeError, match="key must be a str, not int"):
        storage.incr(5, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="amount must be an int, not float"):
        storage.acquire_entry("k", 5, 10, amount=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expiry must be a number of seconds \(int or float\), not str"):
        storage.acquire_sliding_window_entry("k", 5, "10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount must be >= 0, not -3"):
        storage.incr("k", 10, amount=-3)  # would give 3 slots back
    with pytest.raises(ValueError, match="expiry must be a finite number of seconds > 0, not nan"):
        storage.acquire_entry("k", 5, float("nan"))
    with pytest.raises(TypeError, match="limit must be an int, not str"):
        storage.get_moving_window("k", "5", 10)  # type: ignore[arg-type]
    assert len(storage.shared) == 0


def test_a_moving_window_counts_an_entry_until_its_expiry_inclusive(
    storage: contrib_limits.SharedDictStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As limits' memory and redis storages: an entry at t still counts at t + expiry, swept or not."""
    clock = [1000.0]
    monkeypatch.setattr(_limitsops, "_clock", lambda: clock[0])  # this process hosts: it stamps too
    assert storage.acquire_entry("m", 1, 10)
    clock[0] = 1010.0
    storage.incr("other", 5)  # a write that sweeps every entry at the boundary
    assert storage.get_moving_window("m", 1, 10) == (1000.0, 1)
    assert not storage.acquire_entry("m", 1, 10)
    clock[0] = 1010.5
    assert storage.get_moving_window("m", 1, 10) == (1010.5, 0)
    assert storage.acquire_entry("m", 1, 10)


def test_the_host_clock_decides_expiry(
    storage: contrib_limits.SharedDictStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.incr("k", 10)
    monkeypatch.setattr(_limitsops, "_clock", lambda: time.time() + 20)  # the reader's (and host's) clock
    assert storage.get("k") == 0
    assert storage.incr("k", 10) == 1  # a new window, on the clock the host stamped


@pytest.mark.timeout(60)
def test_the_async_storage_counts_with_the_sync_one(runtime_dir: Path) -> None:
    async def main() -> list[bool]:
        made = storage_from_string(f"async+ipchannel://limits-aio?runtime_dir={runtime_dir}")
        assert isinstance(made, contrib_limits.AsyncSharedDictStorage)
        limiter, item = AsyncMovingWindowRateLimiter(made), parse("3/minute")
        passed = [await limiter.hit(item, "k") for _ in range(4)]
        assert (await limiter.get_window_stats(item, "k")).remaining == 0
        assert await made.check()
        return passed

    try:
        assert asyncio.run(main()) == [True, True, True, False]
        sync = _limits_peers.open_storage("limits-aio", str(runtime_dir))
        assert sync.get_moving_window("LIMITER/k/3/1/minute", 3, 60)[1] == 3  # one dict, seen by both APIs
    finally:
        contrib_limits.close_all()


def _start(peers: Peers, n: int, name: str = "limits") -> list[Peer]:
    new = [Peer(name, peers._runtime_dir, _limits_peers.limits_peer_main) for _ in range(n)]  # noqa: SLF001
    peers.started.extend(new)
    return new


@pytest.mark.timeout(120)
def test_processes_racing_on_one_limit_never_pass_more_than_it(peers: Peers) -> None:
    group = _start(peers, 3)
    for strategy in _limits_peers.STRATEGIES:  # 3 processes x 40 hits at once on a limit of 50
        for p in group:
            p.start_call("hits", strategy=strategy, limit="50/hour", key="race", times=40)
        passed = [outcome for p in group for outcome in p.finish_call(60)["passed"]]
        assert passed.count(True) == 50, strategy
        assert all(
            p.call("stats", strategy=strategy, limit="50/hour", key="race")["remaining"] == 0 for p in group
        )


@pytest.mark.timeout(120)
def test_the_host_sigkilled_midway_keeps_the_counts(peers: Peers) -> None:
    group = _start(peers, 3)
    (host,) = [p for p in group if p.call("info")["is_host"]]
    others = [p for p in group if p is not host]
    for strategy in _limits_peers.STRATEGIES:
        assert host.call("hits", strategy=strategy, limit="5/hour", key="k", times=3)["passed"] == [True] * 3
        assert others[0].call("hits", strategy=strategy, limit="5/hour", key="k", times=1)["passed"] == [True]
    reset = others[0].call("stats", strategy="fixed", limit="5/hour", key="k")["reset"]
    os.kill(host.pid, signal.SIGKILL)
    host.kill()
    for strategy in _limits_peers.STRATEGIES:
        got: Any = others[1].call("hits", strategy=strategy, limit="5/hour", key="k", times=3, timeout=30)
        assert got["passed"] == [True, False, False], strategy
    assert others[0].call("stats", strategy="fixed", limit="5/hour", key="k")["reset"] == reset


@pytest.mark.timeout(90)
def test_forked_children_share_a_storage_made_or_used_before_the_fork(runtime_dir: Path) -> None:
    with spawned(_limits_peers.fork_main, str(runtime_dir), daemon=False) as (proc, conn):
        assert conn.poll(60), "the forking process did not report"
        report: dict[str, Any] = conn.recv()
        conn.send("close")
        proc.join(20)
        assert proc.exitcode == 0
    assert report["threads_before"] == []  # made but unused: nothing open before the fork
    statuses, results = report["unused"]
    assert statuses == [0, 0, 0, 0], results
    assert sum(r["passed"].count(True) for r in results) == 5
    assert report["parent_hits"] == [True, True]
    statuses, results = report["used"]
    assert statuses == [0, 0, 0, 0], results
    assert sum(r["passed"].count(True) for r in results) == 3
    assert report["after"] == 0


def test_memory_storage_is_per_process_for_contrast() -> None:
    """What the shared storage fixes: memory:// counts in each process (here: two limiters, two counts)."""
    item = parse("1/hour")
    first, second = (FixedWindowRateLimiter(storage_from_string("memory://")) for _ in range(2))
    assert first.hit(item, "k")
    assert second.hit(item, "k")
