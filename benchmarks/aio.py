"""The asyncio API side by side: ``python -m benchmarks --only aio``.

``await AsyncRequestChannel.request(obj)`` beside the blocking ``RequestChannel.request(obj)``
of the same channel (its ``.sync``) and ``redis.asyncio`` ECHO; ``await AsyncSharedDict.set``
and ``.incr`` beside the same dict's blocking ``d[k] = v`` and ``incr``, ``redis.asyncio`` SET
and INCR, and redis-py's blocking ones, on our redis-server (``_baselines``; each redis-py
client names its parser, hiredis's in rows of their own if installed). ``asyncio.to_thread`` of
the blocking call is the floor of any thread-backed async wrapper (ipchannel's runs the blocking
client in worker threads). Each channel's host is another process, as for the blocking figures.
Everything runs on one event loop in this process: an awaited variant is awaited, a blocking one
blocks the loop (nothing else is on it); the variants interleave sample by sample in shuffled
order (``run._interleave``), pinned on one CPU and on two (``run.placements``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import random
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

from benchmarks import _baselines
from benchmarks import _workers as w
from benchmarks._stats import Result, Series
from benchmarks.run import Config, Worker, _where, pinned, placements, progress, workers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict

#: a variant: its series, a call (returning an awaitable, which is awaited, or not), operations per call
Op = tuple[Series, "Callable[[], Awaitable[object] | object]", int]
MESSAGE = "x" * 60  # as the blocking request scenario sends
BLOCKING = "redis-py {}, blocking"  # the label of the blocking redis-py rows
#: a table's ops: (its scenario, our variants (label, call), the redis command, client -> its call)
_Table = tuple[str, list[tuple[str, "Callable[[], object]"]], str, "Callable[[Any], Callable[[], object]]"]


async def interleave(n: int, ops: list[Op]) -> None:
    """``run._interleave`` on an event loop: an op whose call returns an awaitable is timed to its end."""
    rng = random.Random(n)  # noqa: S311 - an order, not a secret
    order = list(ops)
    for i in range(n):
        rng.shuffle(order)
        for series, op, batch in order:
            start = time.perf_counter_ns()
            outcome = op()
            if inspect.isawaitable(outcome):
                await outcome
            elapsed = time.perf_counter_ns() - start
            if i >= n // 10:
                series.samples.append(elapsed / batch)


@contextlib.contextmanager
def _redis(rd: str) -> Iterator[tuple[_baselines.RedisServer | None, list[str]]]:
    """Our redis-server if redis-py and the server are installed (else None), and the skip notes."""
    skipped = [n for n in (_baselines.redis_missing(),) if n]
    if skipped:
        yield None, skipped
        return
    skipped += [n for n in (_baselines.hiredis_missing(),) if n]
    tmp = tempfile.mkdtemp(prefix="aio-", dir=rd)
    try:
        with _baselines.redis_server(tmp) as server:
            yield server, skipped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_aio(cfg: Config, rd: str) -> list[Result]:
    """request, set and incr: the asyncio API beside the blocking one and redis.asyncio, per placement."""
    progress("aio: await request(), set and incr, beside the blocking calls and redis.asyncio")
    with _redis(rd) as (server, skipped), workers() as started:
        started.append(Worker(w.request_host, "aior", rd))
        started.append(Worker(w.dict_host, "aiod", rd))
        servers = [s.pid for s in started] + ([server.pid] if server else [])
        results = asyncio.run(_measure(cfg, rd, server, servers))
    notes = [
        "each channel's host is another process; this process runs one event loop",
        "blocking variants: the same channel's / dict's .sync, called on the loop (nothing else is on it)",
        *([server.version, _baselines.parsers_note()] if server else []),
        *skipped,
    ]
    for result in results:
        result.notes.extend(notes)
    return results


async def _measure(
    cfg: Config, rd: str, server: _baselines.RedisServer | None, servers: list[int]
) -> list[Result]:
    from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict  # noqa: PLC0415 - imports asyncio's parts

    n = 200 if cfg.quick else 2000
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(AsyncRequestChannel("aior", w.on_request, runtime_dir=rd))
        shared = await stack.enter_async_context(AsyncSharedDict("aiod", runtime_dir=rd))
        await channel.request("warm up")
        if channel.channel.is_host or shared.channel.is_host:
            raise RuntimeError("this process was elected: a host started for the aio scenario was not up")
        clients = await _redis_clients(stack, server)
        results: list[Result] = []
        for label, here, there in placements():
            progress(f"aio: {label}")
            tables = _ops(channel, shared, clients)
            with pinned({os.getpid(): here, **dict.fromkeys(servers, there)}):
                await interleave(n, [op for _scenario, _ours, _base, ops in tables for op in ops])
            how = f"the variants interleaved sample by sample, {n} rounds in shuffled order"
            results.extend(
                Result(f"aio: {scenario}, {label}", [ours], base, "report", [_where(here, there), how])
                for scenario, ours, base, _ops_ in tables
            )
    return results


async def _redis_clients(
    stack: contextlib.AsyncExitStack, server: _baselines.RedisServer | None
) -> dict[str, Any]:
    """Connected redis-py clients by row label, ``{}`` standing for the command; none without redis.

    A redis.asyncio client per parser, and one blocking client (redis-py's own parser).
    """
    if server is None:
        return {}
    clients: dict[str, Any] = {}
    for parser in _baselines.redis_parsers():
        client = _baselines.redis_client(server.path, parser, asyncio=True)
        stack.push_async_callback(getattr(client, "aclose", None) or client.close)  # aclose: redis-py 5.0.1+
        await client.set("k", "v")  # connect now, not in the first sample
        clients[_baselines.WHO[parser].replace("redis-py", "await redis.asyncio") + " {}"] = client
    blocking = _baselines.redis_client(server.path, _baselines.PLAIN)
    stack.callback(blocking.close)
    blocking.set("k", "v")
    clients[BLOCKING] = blocking
    return clients


def _ops(
    channel: AsyncRequestChannel, shared: AsyncSharedDict, clients: dict[str, Any]
) -> list[tuple[str, Series, list[Series], list[Op]]]:
    """Each table: (scenario, our series, its baselines, the ops of all of them)."""
    values = itertools.count()
    blocking = shared.sync
    request: _Table = (
        "request(obj)",
        [
            ("await AsyncRequestChannel.request(obj), json", lambda: channel.request(MESSAGE)),
            ("RequestChannel.request(obj), same channel, blocking", lambda: channel.sync.request(MESSAGE)),
            (
                "await asyncio.to_thread(RequestChannel.request, obj)",
                lambda: asyncio.to_thread(channel.sync.request, MESSAGE),
            ),
        ],
        "ECHO",
        lambda client: lambda: client.echo(MESSAGE),
    )
    set_: _Table = (
        "d[k] = v",
        [
            ("await AsyncSharedDict.set(k, v)", lambda: shared.set("k", next(values))),
            ("SharedDict d[k] = v, same dict, blocking", lambda: blocking.__setitem__("k", next(values))),
            (
                "await asyncio.to_thread(SharedDict.__setitem__, k, v)",
                lambda: asyncio.to_thread(blocking.__setitem__, "k", next(values)),
            ),
        ],
        "SET",
        lambda client: lambda: client.set("k", next(values)),
    )
    incr: _Table = (
        "incr(k)",
        [
            ("await AsyncSharedDict.incr(k)", lambda: shared.incr("n")),
            ("SharedDict d.incr(k), same dict, blocking", lambda: blocking.incr("n")),
            ("await asyncio.to_thread(SharedDict.incr, k)", lambda: asyncio.to_thread(blocking.incr, "n")),
        ],
        "INCR",
        lambda client: lambda: client.incr("n"),
    )
    tables = []
    for scenario, ours, command, call in (request, set_, incr):
        series = [Series(name) for name, _ in ours]
        ops: list[Op] = [(s, op, 1) for s, (_, op) in zip(series, ours, strict=True)]
        for label, client in clients.items():
            if label == BLOCKING and command == "ECHO":
                continue  # blocking round trips: the request scenario, beside multiprocessing.connection
            series.append(Series(label.format(command)))
            ops.append((series[-1], call(client), 1))
        tables.append((scenario, series[0], series[1:], ops))
    return tables


SCENARIOS = {"aio": bench_aio}
