"""Durable writes side by side: ``python -m benchmarks --only journal``.

A SharedDict with ``appendonly=True`` under each ``appendfsync`` policy ("always", "everysec",
"no"), each beside redis-server with ``--appendonly yes --appendfsync`` the same policy
(``_baselines``), diskcache (``synchronous=FULL`` beside "always", its default WAL with
``synchronous=NORMAL`` beside "no"), and the SharedDict without a journal. ``d[k] = v`` and
``incr``, one writer (this process), each dict's host in another process; every variant
interleaved sample by sample in shuffled order (``run._interleave``), client and servers pinned
to one CPU as the shared dict scenario. Every file (journals, append-only files, SQLite) is in
one temporary directory, so every fsync lands on the same filesystem.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Any

import psutil

import ipchannel
from benchmarks import _baselines
from benchmarks import _journal_workers as jw
from benchmarks._stats import Result, Series
from benchmarks.run import Config, Worker, _interleave, _where, pinned, placements, progress, workers

POLICIES = _baselines.POLICIES
#: diskcache's ``sqlite_synchronous`` beside a policy: FULL (2) syncs every commit; NORMAL (1,
#: its default) in WAL mode syncs only at checkpoints
DISKCACHE = {"always": ("synchronous=FULL", 2), "no": ("default: WAL, synchronous=NORMAL", 1)}
Op = tuple[Series, Callable[[], object], int]
OPS = ("d[k] = v", "incr")  # the two tables of each policy


def filesystem(path: str) -> str:
    """``"ext4 on /dev/vda"``: the filesystem ``path`` is on (the longest mount point above it)."""
    real = os.path.realpath(path)
    mounts = [p for p in psutil.disk_partitions(all=True) if real.startswith(p.mountpoint.rstrip("/") + "/")]
    if not mounts:
        return "an unknown filesystem"
    best = max(mounts, key=lambda p: len(p.mountpoint))
    return f"{best.fstype} on {best.device} (mounted at {best.mountpoint})"


def bench_journal_write(cfg: Config, rd: str) -> list[Result]:
    """``d[k] = v`` and ``incr`` per policy, beside redis-server's AOF, diskcache and no journal."""
    progress("journal: durable writes, one writer, each policy beside redis AOF and diskcache")
    tmp = tempfile.mkdtemp(prefix="journal-", dir=rd)  # rd is under /tmp, as every file here
    n = 200 if cfg.quick else 2000
    skipped = [note for note in (_baselines.redis_missing(), _baselines.diskcache_missing()) if note]
    with workers() as started, contextlib.ExitStack() as stack:
        dicts: dict[str | None, ipchannel.SharedDict] = {}
        for policy in (*POLICIES, None):
            name, options = f"jw-{policy or 'memory'}", jw.durable(policy, tmp)
            started.append(Worker(jw.durable_host, name, rd, options))
            dicts[policy] = stack.enter_context(ipchannel.SharedDict(name, runtime_dir=rd, **options))
        if any(not s.info["is_host"] for s in started):
            raise RuntimeError("a dict's host is not the process started for it")
        servers, clients = _redis(stack, tmp)
        caches = _diskcaches(stack, tmp)
        series, ops = _ops(dicts, clients, caches)
        fsync, fsync_op = _fsync_floor(stack, tmp)
        ops.append(fsync_op)
        _label, here, there = placements()[0]
        everyone = [s.pid for s in started] + [s.pid for s in servers.values()]
        with pinned({os.getpid(): here, **dict.fromkeys(everyone, there)}):
            _interleave(n, ops)
    notes = [
        _where(here, there),
        f"one writer; the variants interleaved sample by sample, {n} rounds in shuffled order",
        f"journals, append-only files and SQLite files in one directory: {filesystem(tmp)}",
    ]
    ends = [_baselines.diskcache_version().split(" (")[0]] if caches else []
    ends += skipped
    parsers = _baselines.parsers_note(hiredis=False)
    return [
        _result(
            series,
            (op, policy),
            [*notes, *([servers[policy].version, parsers] if policy in servers else []), *ends],
            fsync if policy == "always" else None,
        )
        for op in OPS
        for policy in POLICIES
    ]


def _redis(stack: contextlib.ExitStack, tmp: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One redis-server per policy (each in its own directory) and a client of each; none if missing."""
    if _baselines.redis_missing():
        return {}, {}
    servers, clients = {}, {}
    for policy in POLICIES:
        where = os.path.join(tmp, f"redis-{policy}")
        os.mkdir(where)
        servers[policy] = stack.enter_context(_baselines.redis_server(where, policy))
        client = _baselines.redis_client(servers[policy].path, _baselines.PLAIN)  # redis-py's own parser
        clients[policy] = stack.enter_context(client)
    return servers, clients


def _diskcaches(stack: contextlib.ExitStack, tmp: str) -> dict[str, Any]:
    """A diskcache Cache per entry of DISKCACHE, in directories of their own; none if it is missing."""
    if _baselines.diskcache_missing():
        return {}
    import diskcache  # noqa: PLC0415 - an optional extra

    return {
        policy: stack.enter_context(
            diskcache.Cache(os.path.join(tmp, f"diskcache-{policy}"), sqlite_synchronous=sync)
        )
        for policy, (_how, sync) in DISKCACHE.items()
    }


def _ops(
    dicts: dict[str | None, ipchannel.SharedDict], clients: dict[str, Any], caches: dict[str, Any]
) -> tuple[dict[tuple[str, str], Series], list[Op]]:
    """Each variant's set and incr: their series by (variant, op), and the ops ``_interleave`` runs.

    Variants: "ours <policy>", "ours memory", "redis <policy>", "diskcache <policy>".
    """
    series: dict[tuple[str, str], Series] = {}
    ops: list[Op] = []

    def add(
        variant: str, labels: tuple[str, str], calls: tuple[Callable[..., object], Callable[..., object]]
    ) -> None:
        set_, incr = calls
        values = itertools.count()
        for op, label, call in zip(
            OPS, labels, (lambda: set_("k", next(values)), lambda: incr("n")), strict=True
        ):
            series[variant, op] = Series(label)
            ops.append((series[variant, op], call, 1))

    for policy, shared in dicts.items():
        how = f"appendonly, appendfsync={policy!r}" if policy else "not durable (reference)"
        labels = (f"SharedDict d[k] = v, {how}", f"SharedDict d.incr(k), {how}")
        add(f"ours {policy or 'memory'}", labels, (shared.__setitem__, shared.incr))
    for policy, client in clients.items():
        labels = (f"redis-py SET, appendfsync {policy}", f"redis-py INCR, appendfsync {policy}")
        add(f"redis {policy}", labels, (client.set, client.incr))
    for policy, cache in caches.items():
        how = DISKCACHE[policy][0]
        add(
            f"diskcache {policy}",
            (f"diskcache cache[k] = v, {how}", f"diskcache cache.incr(k), {how}"),
            (cache.__setitem__, cache.incr),
        )
    return series, ops


def _fsync_floor(stack: contextlib.ExitStack, tmp: str) -> tuple[Series, Op]:
    """The floor of a write synced before it is acknowledged: 64 bytes appended to a file, then fsync."""
    fd = os.open(os.path.join(tmp, "floor"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stack.callback(os.close, fd)
    line = b"x" * 63 + b"\n"
    floor = Series("floor: os.write(64 B) + os.fsync(), in this process")

    def write_and_sync() -> None:
        os.write(fd, line)
        os.fsync(fd)

    return floor, (floor, write_and_sync, 1)


def _result(
    series: dict[tuple[str, str], Series], which: tuple[str, str], notes: list[str], floor: Series | None
) -> Result:
    """One (op, policy)'s table: ours, then redis and diskcache with that policy, no journal, the floor."""
    op, policy = which
    ours = [series[f"ours {policy}", op]]
    others = [f"redis {policy}", f"diskcache {policy}", "ours memory"]
    baselines = [series[v, op] for v in others if (v, op) in series] + ([floor] if floor else [])
    what = {
        "always": "synced before each write is acknowledged",
        "everysec": "synced once a second",
        "no": "sync left to the OS",
    }[policy]
    return Result(f"journal: {op}, appendfsync={policy} ({what})", ours, baselines, "report", notes)


SCENARIOS = {"journal": bench_journal_write}
