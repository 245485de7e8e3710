"""Child-process entry points of the journal's benchmarks (``benchmarks/journal.py``), importable under spawn.

Each reports over its Pipe first (its imports done) and times with ``time.monotonic_ns()``.
A failure inside a measurement is reported as ``{"error": ...}``: the parent raises it.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, NamedTuple

import ipchannel
from benchmarks import _workers as w

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

#: the journal module's compaction threshold (bytes of log before a snapshot); set high in a writer
#: process only, to leave an uncompacted journal of every write
COMPACT_MODULE, COMPACT_CONSTANT = "ipchannel._shareddict.journal", "_COMPACT_MIN_BYTES"
NO_COMPACTION = 1 << 62
OPEN_TIMEOUT = 120.0  # seconds a replaying host may take before it serves


class Recipe(NamedTuple):
    """A journal's writes: ``writes`` increments over ``keys`` keys from ``threads`` threads.

    ``compaction``: the journal's compaction threshold in the writer (None: the library's).
    """

    writes: int
    keys: int
    threads: int
    compaction: int | None


def durable(policy: str | None, journal_dir: str) -> dict[str, Any]:
    """SharedDict's keywords for ``policy`` ("always", "everysec", "no"; None: not durable)."""
    if policy is None:
        return {}
    return {"appendonly": True, "appendfsync": policy, "journal_dir": journal_dir}


def encoded_size(shared: ipchannel.SharedDict) -> int:
    """The dict's size: its items encoded, ``len(json.dumps(list(d.items())))``."""
    return len(json.dumps(list(shared.items())))


def durable_host(conn: Connection, name: str, runtime_dir: str, options: dict[str, Any]) -> None:
    """Open the SharedDict first (so this process hosts, and writes its journal) and idle."""
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir, **options)
    conn.send({"pid": os.getpid(), "is_host": shared.channel.is_host})
    w._wait_for_stop(conn)  # noqa: SLF001 - the workers' shared idle loop
    shared.close()


def _set_compaction(threshold: int) -> None:
    """Set the journal's compaction threshold in this process (a private constant, for benchmarks alone)."""
    try:
        module = importlib.import_module(COMPACT_MODULE)
    except ImportError as exc:
        raise RuntimeError(f"{COMPACT_MODULE} is gone: the benchmark sets its {COMPACT_CONSTANT}") from exc
    if not isinstance(getattr(module, COMPACT_CONSTANT, None), int):
        raise TypeError(f"{COMPACT_MODULE}.{COMPACT_CONSTANT} is not an int constant any more")
    setattr(module, COMPACT_CONSTANT, threshold)


def journal_writer(conn: Connection, name: str, runtime_dir: str, journal_dir: str, recipe: Recipe) -> None:
    """On "go", write as ``recipe`` says: increments from threads of this process; report; close on "stop".

    The policy is "no": replay does not depend on it, and the kernel keeps what was written.
    """
    writes, keys, threads, compaction = recipe
    if compaction is not None:
        _set_compaction(compaction)
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir, timeout=60, **durable("no", journal_dir))
    conn.send({"pid": os.getpid(), "is_host": shared.channel.is_host})
    conn.recv()  # go

    def write(first: int) -> None:
        for i in range(first, writes, threads):
            shared.incr(f"k{i % keys}")

    start = time.monotonic_ns()
    running = [threading.Thread(target=write, args=(k,), name=f"writer-{k}") for k in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    conn.send({"ns": time.monotonic_ns() - start, "size": encoded_size(shared), "keys": len(shared)})
    w._wait_for_stop(conn)  # noqa: SLF001
    shared.close()


def journal_reader(conn: Connection) -> None:
    """On ``(name, runtime_dir, journal_dir, key, expected)``: time a durable SharedDict's open, first read.

    From ``SharedDict(...)`` to ``d.get(key) == expected`` (the host replaying its journal, in this
    fresh process); ``key`` None times the open alone. Then check every key against the writes.
    """
    conn.send({"pid": os.getpid()})
    name, runtime_dir, journal_dir, key, expected = conn.recv()
    try:
        start = time.monotonic_ns()
        shared = ipchannel.SharedDict(
            name, runtime_dir=runtime_dir, timeout=OPEN_TIMEOUT, appendonly=True, journal_dir=journal_dir
        )
        deadline = time.monotonic() + OPEN_TIMEOUT
        while key is not None and shared.get(key) != expected and time.monotonic() < deadline:
            time.sleep(0)
        ns = time.monotonic_ns() - start
        found = shared.get(key) if key is not None else None
        report = {
            "ns": ns,
            "is_host": shared.channel.is_host,
            "size": encoded_size(shared),
            "keys": len(shared),
        }
        conn.send({**report, "found": found})
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send({"error": traceback.format_exc()})
        return
    w._wait_for_stop(conn)  # noqa: SLF001
    shared.close()


def diskcache_reader(conn: Connection) -> None:
    """On ``(directory, key)``: time ``diskcache.Cache(directory)`` and its first ``get(key)``."""
    import diskcache  # noqa: PLC0415 - an optional extra

    conn.send({"pid": os.getpid()})
    directory, key = conn.recv()
    start = time.monotonic_ns()
    cache = diskcache.Cache(directory)
    value = cache.get(key)
    conn.send({"ns": time.monotonic_ns() - start, "value": value})
    w._wait_for_stop(conn)  # noqa: SLF001
    cache.close()
