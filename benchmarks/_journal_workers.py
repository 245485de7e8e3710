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

#: the journal module's compaction threshold (a log is compacted once larger than it and than the
#: last snapshot); set in a writer process only: high, to keep every write in the log; 0, to compact
#: whenever the log outgrows the last snapshot
COMPACT_MODULE, COMPACT_CONSTANT = "ipchannel._shareddict.journal", "COMPACT_MIN_BYTES"
NO_COMPACTION, EAGER_COMPACTION = 1 << 62, 0
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
    """On ``(name, runtime_dir, journal_dir, want)``: time a SharedDict's open and first read in this process.

    From ``SharedDict(...)`` (durable on ``journal_dir``; None: not durable) to ``d.get(key) ==
    value`` for ``want`` = (key, value): the host replaying its journal, in this fresh process;
    ``want`` None times the open alone. Report the time, what was read, and the dict's size.
    """
    conn.send({"pid": os.getpid()})
    name, runtime_dir, journal_dir, want = conn.recv()
    options = {} if journal_dir is None else {"appendonly": True, "journal_dir": journal_dir}
    try:
        start = time.monotonic_ns()
        shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir, timeout=OPEN_TIMEOUT, **options)
        deadline = time.monotonic() + OPEN_TIMEOUT
        while want is not None and shared.get(want[0]) != want[1] and time.monotonic() < deadline:
            time.sleep(0)
        ns = time.monotonic_ns() - start
        found = None if want is None else shared.get(want[0])
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
