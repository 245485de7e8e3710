"""Django cache backends side by side: ``python -m benchmarks --only djcache``.

SharedDictCache (its host in another process, as for a gunicorn worker that does not host) beside
LocMemCache (one cache per process: the floor), Django's RedisCache on our own redis-server (Unix
socket, ``_baselines``; redis-py's own parser, and hiredis's in a row of its own if installed), and
diskcache's DjangoCache if installed. ``get`` and ``set`` of one key,
the variants interleaved sample by sample in shuffled order (``run._interleave``); a get's time is
a batch's over its size. Client and servers pinned to one CPU, as the shared dict scenario.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import TYPE_CHECKING, Any

from benchmarks import _baselines
from benchmarks import _workers as w
from benchmarks._stats import Result, Series
from benchmarks.run import Config, Worker, _interleave, _others, _where, pinned, placements, progress, workers

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

LOCATION = "bench-djcache"
VALUE = {"id": 1234, "name": "a cached row", "tags": ["a", "b"]}  # a small pickled value, as views cache
#: batch sizes of a get (one local get is below the clock's resolution; a round trip is not)
BATCH = {
    "SharedDictCache": 100,
    "LocMemCache": 100,
    "RedisCache": 1,
    "RedisCache + hiredis": 1,
    "diskcache DjangoCache": 10,
}
#: Django's RedisCache by redis-py's parser (``_baselines``): its own in Python, and hiredis's
REDIS = {_baselines.PLAIN: "RedisCache", _baselines.HIREDIS: "RedisCache + hiredis"}


def _ours(rd: str) -> Any:
    from ipchannel.contrib.django import SharedDictCache  # noqa: PLC0415 - Django is an optional extra

    return SharedDictCache(LOCATION, {"OPTIONS": {"runtime_dir": rd, "MAX_ENTRIES": 100_000}})


def cache_host(conn: Connection, rd: str) -> None:
    """Open the cache first (so this process hosts) and idle."""
    from ipchannel.contrib.django import close_all  # noqa: PLC0415

    cache = _ours(rd)
    conn.send({"pid": os.getpid(), "is_host": cache.shared.channel.is_host})
    w._wait_for_stop(conn)  # noqa: SLF001 - the workers' shared idle loop
    close_all()


def bench_django_cache(cfg: Config, rd: str) -> list[Result]:
    """get and set p50: SharedDictCache beside LocMemCache, RedisCache and diskcache's DjangoCache."""
    from django.core.cache.backends.locmem import LocMemCache  # noqa: PLC0415

    from ipchannel.contrib.django import close_all  # noqa: PLC0415

    progress("django cache: get and set, one client")
    with _others(rd) as others, workers() as started, contextlib.ExitStack() as stack:
        started.append(Worker(cache_host, rd))
        backends: dict[str, Any] = {"SharedDictCache": _ours(rd), "LocMemCache": LocMemCache("bench", {})}
        stack.callback(close_all)
        for parser in _baselines.redis_parsers() if others.redis else []:
            from django.core.cache.backends.redis import RedisCache  # noqa: PLC0415

            assert others.redis is not None
            options = {"OPTIONS": {"parser_class": _baselines.parser_class(parser)}}
            backends[REDIS[parser]] = RedisCache(f"unix://{others.redis.path}", options)
            stack.callback(backends[REDIS[parser]].close)
        if others.cache_dir:
            from diskcache import DjangoCache  # noqa: PLC0415 - an optional extra

            backends["diskcache DjangoCache"] = DjangoCache(others.cache_dir, {})
            stack.callback(backends["diskcache DjangoCache"].close)
        servers = [s.pid for s in started] + ([others.redis.pid] if others.redis else [])
        _label, here, there = placements()[0]
        with pinned({os.getpid(): here, **dict.fromkeys(servers, there)}):
            gets, sets = _measure(cfg, backends)
    notes = [
        _where(here, there),
        "SharedDictCache: its host is another process (the client is not the host), values pickled",
        f"a get's time: a batch's over its size ({ {name: BATCH[name] for name in backends} })",
        *others.notes(),
    ]
    return [
        Result("django cache: get(key)", gets[:1], gets[1:], "report p50 beside LocMemCache", notes),
        Result("django cache: set(key, value)", sets[:1], sets[1:], "report p50", list(notes)),
    ]


def _measure(cfg: Config, backends: dict[str, Any]) -> tuple[list[Series], list[Series]]:
    n = 200 if cfg.quick else 2000
    gets = [Series(f"{name}.get(key)") for name in backends]
    sets = [Series(f"{name}.set(key, value)") for name in backends]
    ops: list[tuple[Series, Callable[[], object], int]] = []
    for (name, cache), get, set_ in zip(backends.items(), gets, sets, strict=True):
        cache.set("k", VALUE, None)
        ops.append((get, _getter(cache, BATCH[name]), BATCH[name]))
        ops.append((set_, _setter(cache), 1))
    _interleave(n, ops)
    return gets, sets


def _getter(cache: Any, batch: int) -> Callable[[], object]:
    return lambda: [cache.get("k") for _ in range(batch)]


def _setter(cache: Any) -> Callable[[], object]:
    numbers = itertools.count()
    return lambda: cache.set("k", {**VALUE, "id": next(numbers)}, None)


SCENARIOS = {"djcache": bench_django_cache}
