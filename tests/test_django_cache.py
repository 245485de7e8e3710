"""SharedDictCache: Django's cache semantics, expiry and culling decided by the host, across processes."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING, Any

import _djcache_peers
import django
import pytest
from conftest import Peer, spawned, wait_until
from django.conf import settings

if not settings.configured:  # no Django project: the backend is configured by each test
    settings.configure(CACHES={}, USE_TZ=True)
    django.setup()

from django.core.cache import caches
from django.core.cache.backends.base import CacheKeyWarning
from django.core.cache.backends.locmem import LocMemCache
from django.test import override_settings

from ipchannel.contrib import _cacheops
from ipchannel.contrib.django import SharedDictCache, close_all

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Peers

BACKEND = "ipchannel.contrib.django.SharedDictCache"


class FakeClock:
    """The expiry clock, in the host and in the reader alike (one process here), moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_cacheops, "_clock", fake)
    return fake


@pytest.fixture
def make_cache(runtime_dir: Path) -> Iterator[Callable[..., SharedDictCache]]:
    """Build backends as Django does (``backend(location, params)``); close their shared dicts after."""
    del runtime_dir

    def make(location: str = "cache", **params: Any) -> SharedDictCache:
        return SharedDictCache(location, params)

    try:
        yield make
    finally:
        close_all()


@pytest.fixture
def cache(make_cache: Callable[..., SharedDictCache], clock: FakeClock) -> SharedDictCache:
    del clock
    return make_cache()


class Thing:
    """A value only pickle can carry (a class instance), compared by content."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thing) and other.items == self.items

    __hash__ = None  # type: ignore[assignment]


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PickleError("refused")


# -- the API, in one process ---------------------------------------------------------------------


def test_get_set_add_delete_has_key_and_clear_behave_as_djangos(cache: SharedDictCache) -> None:
    assert cache.get("a") is None
    assert cache.get("a", "default") == "default"
    cache.set("a", None)
    assert cache.get("a", "default") is None  # None is a value, not a miss
    assert cache.add("a", 1) is False
    assert cache.add("b", 2) is True
    assert cache.get("b") == 2
    assert cache.has_key("b")
    assert "b" in cache
    assert not cache.has_key("nope")
    assert cache.delete("b") is True
    assert cache.delete("b") is False
    assert cache.get_or_set("c", lambda: 3) == 3
    assert cache.get_or_set("c", 4) == 3
    cache.set("d", 4)
    cache.clear()
    assert cache.get("a", "gone") == "gone"
    assert cache.get("d") is None


def test_values_are_pickled_copies_and_unpicklable_values_fail_in_the_caller(cache: SharedDictCache) -> None:
    value = Thing([1, 2])
    cache.set("thing", value)
    value.items.append(3)  # changed after set: the cache holds what was pickled then
    assert cache.get("thing") == Thing([1, 2])
    assert cache.get("thing") is not cache.get("thing")  # each get unpickles a copy, as LocMemCache
    cache.set_many({"bytes": b"\x00\xff", "tuple": (1, "x"), "set": {1, 2}})
    assert cache.get_many(["bytes", "tuple", "set", "missing"]) == {
        "bytes": b"\x00\xff",
        "tuple": (1, "x"),
        "set": {1, 2},
    }
    with pytest.raises(pickle.PickleError):
        cache.set("bad", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.add("bad", Unpicklable())
    assert not cache.has_key("bad")


def test_set_many_get_many_delete_many(cache: SharedDictCache) -> None:
    assert cache.set_many({}) == []
    assert cache.set_many({"k1": 1, "k2": 2, "k3": 3}) == []
    assert cache.get_many(["k1", "k2", "k4"]) == {"k1": 1, "k2": 2}
    cache.delete_many([])  # nothing to send
    cache.delete_many(["k1", "k2", "k4"])
    assert cache.get_many(["k1", "k2", "k3"]) == {"k3": 3}


def test_incr_and_decr_are_done_by_the_host_and_raise_as_djangos(cache: SharedDictCache) -> None:
    cache.set("n", 41)
    assert cache.incr("n") == 42
    assert cache.incr("n", 10) == 52
    assert cache.decr("n", 2) == 50
    assert cache.get("n") == 50
    cache.set("f", 1.5)
    assert cache.incr("f", 1) == 2.5
    with pytest.raises(ValueError, match=r"Key ':1:missing' not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("missing")
    cache.set("none", None)
    with pytest.raises(TypeError, match="NoneType"):
        cache.incr("none")
    assert cache.get("none", "default") is None  # a failed incr changed nothing
    assert not cache.has_key("missing")


def test_timeouts_default_none_forever_zero_at_once(
    make_cache: Callable[..., SharedDictCache], clock: FakeClock
) -> None:
    cache = make_cache(TIMEOUT=60)
    cache.set("default", 1)
    cache.set("forever", 2, None)
    cache.set("float", 3, 0.5)
    cache.set("zero", 4, 0)
    cache.set("negative", 5, -1)
    assert cache.add("added-zero", 6, 0) is True  # added, and expired at once (as Django's backends)
    cache.set_many({"many-zero": 7}, 0)
    assert [cache.get(k) for k in ("zero", "negative", "added-zero", "many-zero")] == [None] * 4
    assert cache.get("float") == 3
    clock.advance(0.5)
    assert cache.get("float") is None  # at its expiry time exactly: expired
    assert cache.get("default") == 1
    clock.advance(59.4)
    assert cache.get("default") == 1
    clock.advance(0.1)
    assert cache.get("default") is None
    assert not cache.has_key("default")
    assert cache.get_many(["default", "forever"]) == {"forever": 2}
    clock.advance(10 * 365 * 86400)
    assert cache.get("forever") == 2


def test_expired_entries_are_never_returned_and_count_as_missing(
    cache: SharedDictCache, clock: FakeClock
) -> None:
    cache.set("k", "old", 10)
    cache.set("n", 1, 10)
    clock.advance(10)
    assert cache.get("k") is None
    assert cache.get_or_set("k", "new") == "new"  # add() saw it missing
    assert cache.add("k", "newer") is False
    with pytest.raises(ValueError, match="not found"):
        cache.incr("n")  # expired: missing, as for Django
    assert cache.touch("n") is False
    assert cache.delete("n") is False


def test_touch_gives_a_new_timeout_and_incr_keeps_the_old_one(
    cache: SharedDictCache, clock: FakeClock
) -> None:
    cache.set("t", 1, 10)
    assert cache.touch("t", 100) is True
    clock.advance(50)
    assert cache.get("t") == 1
    assert cache.touch("t", None) is True
    clock.advance(10**6)
    assert cache.get("t") == 1
    assert cache.touch("t", 0) is True  # expired at once
    assert cache.get("t") is None
    assert cache.touch("missing") is False
    cache.set("n", 1, 10)
    clock.advance(9)
    assert cache.incr("n") == 2
    clock.advance(1)
    assert cache.get("n") is None  # incr did not restart the timeout (as LocMemCache and memcached)


def test_versions_prefixes_and_key_functions(make_cache: Callable[..., SharedDictCache]) -> None:
    v1, v2 = make_cache(), make_cache(VERSION=2)
    prefixed = make_cache(KEY_PREFIX="p")
    custom = make_cache(KEY_FUNCTION=_djcache_peers.custom_key)
    dotted = make_cache(KEY_FUNCTION="_djcache_peers.custom_key")
    v1.set("k", "one")
    assert v2.get("k") is None
    assert v2.get("k", version=1) == "one"
    v2.set("k", "two")
    assert v1.get("k", version=2) == "two"
    assert v1.incr_version("k") == 2  # moves version 1 to 2
    assert v1.get("k") is None
    assert v2.get("k") == "one"
    assert v2.decr_version("k") == 1
    assert v1.get("k") == "one"
    assert prefixed.get("k") is None
    prefixed.set("k", "p")
    assert prefixed.get("k") == "p"
    assert v1.get("k") == "one"
    custom.set("k", "c")
    assert dotted.get("k") == "c"
    assert custom.make_key("k") == "CUSTOM-:1:k"
    assert "CUSTOM-:1:k" in custom.shared  # the key the replica holds
    assert ":1:k" in v1.shared


def _key_warnings(backend: Any, operation: str, *args: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(ValueError):  # incr/decr of a missing key
            getattr(backend, operation)(*args)
    return [str(w.message) for w in caught if issubclass(w.category, CacheKeyWarning)]


@pytest.mark.parametrize("key", ["key with spaces and 清", "a" * 251], ids=["characters", "length"])
def test_key_warnings_are_those_of_djangos_own_backends(cache: SharedDictCache, key: str) -> None:
    locmem = LocMemCache("key-warnings", {})
    cache.key_func = locmem.key_func = lambda key, *_: key  # as Django's own test: keys unchanged
    operations: list[tuple[str, list[Any]]] = [
        ("add", [key, 1]),
        ("get", [key]),
        ("set", [key, 1]),
        ("incr", [key]),
        ("decr", [key]),
        ("touch", [key]),
        ("delete", [key]),
        ("has_key", [key]),
        ("get_many", [[key, "b"]]),
        ("set_many", [{key: 1, "b": 2}]),
        ("delete_many", [[key, "b"]]),
    ]
    for operation, args in operations:
        theirs = _key_warnings(locmem, operation, *args)
        assert theirs, operation
        assert _key_warnings(cache, operation, *args) == theirs, operation


@pytest.mark.parametrize(("frequency", "left"), [(3, 29), (0, 19)])
def test_culling_keeps_max_entries_as_locmem_does(
    make_cache: Callable[..., SharedDictCache], frequency: int, left: int
) -> None:
    options = {"MAX_ENTRIES": 30, "CULL_FREQUENCY": frequency}
    ours, locmem = make_cache(OPTIONS=options), LocMemCache(f"cull-{frequency}", {"OPTIONS": options})
    for cache in (ours, locmem):
        for i in range(1, 50):
            cache.set(f"cull{i}", "value", 1000)
    kept = [i for i in range(1, 50) if ours.has_key(f"cull{i}")]
    assert kept == [i for i in range(1, 50) if locmem.has_key(f"cull{i}")]  # no reads between: same
    assert len(kept) == left
    assert len(ours.shared) == left  # memory: nothing else is held


def test_a_cull_drops_expired_entries_first_then_the_least_recently_written(
    make_cache: Callable[..., SharedDictCache], clock: FakeClock
) -> None:
    cache = make_cache(OPTIONS={"MAX_ENTRIES": 4, "CULL_FREQUENCY": 2})
    cache.set("a", 1)
    cache.set("short", 2, 5)
    cache.set("b", 3)
    cache.set("c", 4)
    clock.advance(5)
    cache.set("d", 5)  # full: "short" has expired, so it alone goes
    assert list(cache.shared) == [":1:a", ":1:b", ":1:c", ":1:d"]
    cache.set("a", 6)  # a write makes a key the newest
    cache.incr("b")  # so does incr (as LocMemCache's)
    assert cache.touch("c", 100)  # a touch does not
    cache.set("e", 7)  # full, nothing expired: half goes, oldest written first
    assert list(cache.shared) == [":1:a", ":1:b", ":1:e"]


def test_a_cache_smaller_than_its_cull_frequency_stays_within_max_entries(
    make_cache: Callable[..., SharedDictCache],
) -> None:
    cache = make_cache(OPTIONS={"MAX_ENTRIES": 2, "CULL_FREQUENCY": 3})  # LocMemCache's cull drops 2 // 3 = 0
    for i in range(10):
        cache.set(f"k{i}", i)
        assert len(cache.shared) <= 2
    assert cache.get("k9") == 9


def test_bad_options_raise_naming_the_option(make_cache: Callable[..., SharedDictCache]) -> None:
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"MAX_ENTRIES": "many"}, TypeError, "MAX_ENTRIES"),
        ({"MAX_ENTRIES": 0}, ValueError, "MAX_ENTRIES"),
        ({"CULL_FREQUENCY": -1}, ValueError, "CULL_FREQUENCY"),
        ({"CULL_FREQUENCY": True}, TypeError, "CULL_FREQUENCY"),
        ({"coordinator": 5}, TypeError, "coordinator"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"authkey": "text"}, TypeError, "authkey"),
        ({"max_entries": 5}, TypeError, "unknown OPTIONS key 'max_entries'"),
    ]
    for options, error, named in cases:
        with pytest.raises(error, match=named):
            make_cache(OPTIONS=options)
    with pytest.raises(TypeError, match="OPTIONS must be a dict"):
        make_cache(OPTIONS=[("MAX_ENTRIES", 5)])
    with pytest.raises(ValueError, match="LOCATION"):
        make_cache("")
    with pytest.raises(ValueError, match="coordinator URL"):  # checked by SharedDict, naming it too
        make_cache("bad-url", OPTIONS={"coordinator": "http://nowhere"})
    make_cache("same", OPTIONS={"timeout": 5})
    with pytest.raises(ValueError, match="already open here with other OPTIONS"):
        make_cache("same", OPTIONS={"timeout": 6})
    with pytest.raises(TypeError, match="appendonly"):
        make_cache("durable", OPTIONS={"appendonly": "yes"})
    with pytest.raises(ValueError, match="appendfsync applies only with appendonly=True"):
        make_cache("durable", OPTIONS={"appendfsync": "always"})
    # a bool where the option is a bool: ssl_verify=False was refused as "the wrong type"
    with pytest.raises(ValueError, match="ssl_verify applies only with a coordinator"):
        make_cache("verify", OPTIONS={"ssl_verify": False})


def test_a_durable_cache_outlives_every_process_closing_it(
    make_cache: Callable[..., SharedDictCache], tmp_path: Path
) -> None:
    options = {"appendonly": True, "appendfsync": "always", "journal_dir": str(tmp_path)}
    cache = make_cache("durable", OPTIONS=options)
    cache.set("a", {"x": 1}, timeout=None)
    close_all()  # the last (only) process lets go: a non-durable cache would be empty now
    assert make_cache("durable", OPTIONS=options).get("a") == {"x": 1}


@pytest.mark.usefixtures("runtime_dir")
def test_configured_in_settings_every_alias_of_a_location_shares_one_dict_and_close_keeps_it() -> None:
    cull = {"BACKEND": BACKEND, "LOCATION": "site", "OPTIONS": {"MAX_ENTRIES": 10}}
    configured = {"default": {"BACKEND": BACKEND, "LOCATION": "site", "TIMEOUT": 30}, "cull": cull}
    try:
        with override_settings(CACHES=configured):
            default = caches["default"]
            assert isinstance(default, SharedDictCache)
            assert default.default_timeout == 30
            default.set("k", "v")
            assert caches["cull"].get("k") == "v"
            assert caches["cull"].shared is default.shared  # one replica per process
            caches.close_all()  # what Django does after every request
            assert caches["default"].get("k") == "v"
    finally:
        close_all()


def test_importing_the_backend_without_django_names_the_extra() -> None:
    code = "import sys; sys.modules['django'] = None; import ipchannel.contrib.django"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1
    assert "ImportError: ipchannel.contrib.django needs Django" in proc.stderr
    assert "pip install 'ipchannel[django]'" in proc.stderr


# -- real processes ----------------------------------------------------------------------------------


def _start(peers: Peers, n: int, **options: Any) -> list[Peer]:
    new = [Peer("cache", peers._runtime_dir, _djcache_peers.cache_peer_main, (options,)) for _ in range(n)]  # noqa: SLF001
    peers.started.extend(new)
    return new


def _host(group: list[Peer]) -> Peer:
    (host,) = [p for p in group if p.alive and p.call("info")["is_host"]]
    return host


@pytest.mark.timeout(120)
def test_processes_share_values_expiry_and_atomic_incr(peers: Peers) -> None:
    first, second = _start(peers, 2)
    first.call("set", key="k", value={"v": 1}, seconds=None)
    assert second.call("wait_get", key="k", value={"v": 1})["got"] == {"v": 1}
    second.call("set", key="short", value="x", seconds=0.3)
    assert first.call("wait_get", key="short", value="x")["got"] == "x"
    assert first.call("wait_get", key="short", value=None, within=5)["got"] is None  # expired there too
    first.call("set", key="n", value=0, seconds=None)
    for p in (first, second):
        p.start_call("incr", key="n", times=200)
    results = sorted(r for p in (first, second) for r in p.finish_call(60)["results"])
    assert results == list(range(1, 401))


@pytest.mark.timeout(120)
def test_every_replica_culls_the_same_entries(peers: Peers) -> None:
    group = _start(peers, 3, MAX_ENTRIES=20, CULL_FREQUENCY=3)
    for p in group:  # writes from every process, interleaved by the host; half expire in 20 ms
        p.start_call("set_many_one_by_one", prefix=f"p{p.pid}-", count=40, seconds=[1000, 0.02])
    for p in group:
        p.finish_call(60)
    final = max(p.call("info")["position"] for p in group)
    keys = [p.call("keys", position=final)["keys"] for p in group]
    assert 1 <= len(keys[0]) <= 20
    assert keys[1] == keys[0]
    assert keys[2] == keys[0]  # same entries, in the same order


@pytest.mark.timeout(120)
def test_sigkill_of_the_host_loses_no_acknowledged_write(peers: Peers) -> None:
    group = _start(peers, 3, MAX_ENTRIES=100_000)  # no cull: every write must stay
    host = _host(group)
    writers = [p for p in group if p is not host]
    for p in writers:
        p.call("start_writing", prefix=f"w{p.pid}-")
    wait_until(lambda: all(p.call("written")["count"] >= 50 for p in writers), timeout=30)
    os.kill(host.pid, signal.SIGKILL)
    host.kill()
    wait_until(lambda: all(p.call("written")["count"] >= 150 for p in writers), timeout=30)  # goes on
    acknowledged = {p.pid: p.call("stop_writing") for p in writers}
    for p in writers:
        for q in writers:
            got = q.call("check", prefix=f"w{p.pid}-", count=acknowledged[p.pid]["count"])
            assert got["missing"] == [], (p.pid, q.pid)  # every acknowledged write, in every survivor
        assert acknowledged[p.pid]["errors"] == []


@pytest.mark.timeout(90)
def test_forked_children_after_the_cache_was_used_share_it_with_the_parent(runtime_dir: Path) -> None:
    with spawned(_djcache_peers.fork_main, str(runtime_dir), 4, 25, daemon=False) as (proc, conn):
        assert conn.poll(60), "the forking process did not report"
        report: dict[str, Any] = conn.recv()
        conn.send("close")
        proc.join(20)
        assert proc.exitcode == 0
    assert report["statuses"] == [0, 0, 0, 0], report["results"]
    assert all(r["seen"] == "from the parent" for r in report["results"])
    values = sorted(v for r in report["results"] for v in r["values"])
    assert values == list(range(1, 101))  # each child a writer of its own, every incr applied once
    assert report["final"] == 100
    assert report["child_keys"] == [f"child-{i}" for i in range(4)]  # the children's sets reached it
    assert report["is_host"]


@pytest.mark.timeout(90)
def test_a_child_forked_while_a_thread_opens_a_cache_can_open_one(runtime_dir: Path) -> None:
    with spawned(_djcache_peers.fork_with_registry_locked_main, str(runtime_dir), daemon=False) as (
        proc,
        conn,
    ):
        assert conn.poll(60), "the forking process did not report"
        report: dict[str, Any] = conn.recv()
        conn.send("close")
        proc.join(20)
        assert proc.exitcode == 0
    assert report["status"] == 0  # not a deadlock on the lock a parent thread held at fork time
