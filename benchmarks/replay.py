"""A durable SharedDict's journal replayed, and its size: ``python -m benchmarks --only journal-replay``.

WRITES increments (100,000; 5,000 with ``--quick``) over KEYS keys, from WRITER_THREADS threads of
one process (the dict's host), ``appendfsync="no"`` (replay does not depend on the policy), then
closed; twice: with compaction held off (the journal module's threshold set high in the writer
process only, so every write stays in the log) and as the library compacts. Each trial then
times, in a fresh process (spawned and imported before the clock), ``SharedDict(...)`` until its
first read returns the last key's count: its host replaying the journal, on a fresh copy of it
(the page cache warm, as after the workers restart; not a reboot). Beside it, in shuffled order
each trial: redis-server started on an append-only file of the same INCRs (as written, and after
BGREWRITEAOF) until its first GET answers with the value, diskcache's ``Cache(dir)`` and first
``get`` after the same increments, and the floors: a durable SharedDict opened on an empty
directory, redis-server started on an empty one. Sizes: the journal's files against the dict's
items encoded (``len(json.dumps(list(d.items())))``), redis's append-only files, diskcache's files.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any

from benchmarks import _baselines
from benchmarks import _journal_workers as jw
from benchmarks._stats import Result, Series
from benchmarks.journal import filesystem
from benchmarks.run import Config, Worker, progress, workers

if TYPE_CHECKING:
    from collections.abc import Callable

KEYS = 1000
WRITER_THREADS = 4
NAME = "replay"
AOF_DIR = "appendonlydir"  # redis-server's default appenddirname
REDIS = {"redis written": "as written", "redis rewritten": "after BGREWRITEAOF"}  # its files, each
FULL_WRITES = 100_000


def _kinds(writes: int) -> dict[str, int | None]:
    """Each journal's compaction threshold in its writer: held off, and the library's own.

    With fewer writes than FULL_WRITES (``--quick``) the library's is scaled down alike, so
    that the journal is compacted at the same point of the writes.
    """
    default = getattr(importlib.import_module(jw.COMPACT_MODULE), jw.COMPACT_CONSTANT)
    return {
        "held off": jw.NO_COMPACTION,
        "compacted": None if writes >= FULL_WRITES else default * writes // FULL_WRITES,
    }


def bench_journal_replay(cfg: Config, rd: str) -> list[Result]:
    """Replay time of a journal of WRITES increments beside redis's AOF load and diskcache's open; sizes."""
    writes, trials = (5_000, 3) if cfg.quick else (FULL_WRITES, 10)
    tmp = tempfile.mkdtemp(prefix="replay-", dir=rd)  # rd is under /tmp, as every file here
    last, count = f"k{KEYS - 1}", len(range(KEYS - 1, writes, KEYS))  # the last key, and its count
    kinds = _kinds(writes)
    journals, written = {}, {}
    for kind, compaction in kinds.items():
        journals[kind], written[kind] = _write_journal(rd, tmp, kind, writes, compaction)
    redis_dirs = {} if _baselines.redis_missing() else _redis_files(tmp, writes)
    cache_dir = None if _baselines.diskcache_missing() else _diskcache_files(tmp, writes)
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    variants: dict[str, tuple[str, Callable[[str], int]]] = {
        **{
            kind: (
                f"SharedDict(...) -> first read, journal {kind}",
                _ours(rd, jd, (last, count), written[kind]),
            )
            for kind, jd in journals.items()
        },
        "empty": ("SharedDict(...) -> open, appendonly, empty journal dir (floor)", _ours(rd, empty)),
        "memory": ("SharedDict(...) -> open, not durable (floor)", _ours(rd, None)),
        **{
            kind: (f"redis-server start -> first GET, AOF {REDIS[kind]}", _theirs(where, last, count))
            for kind, where in redis_dirs.items()
        },
    }
    if redis_dirs:
        variants["redis empty"] = ("redis-server start -> first GET, empty dir (floor)", _theirs(empty))
    if cache_dir:
        variants["diskcache"] = ("diskcache Cache(dir) -> first get", _diskcache(cache_dir, last, count))
    series = _trials(trials, tmp, variants)
    took = ", ".join(f"{writes / (r['ns'] / 1e9):,.0f}/s ({kind})" for kind, r in written.items())
    module = f"{jw.COMPACT_MODULE}.{jw.COMPACT_CONSTANT}"
    how = f"{writes:,} incr over {KEYS:,} keys from {WRITER_THREADS} threads of one process (the host)"
    notes = [
        f"{how}, appendfsync 'no', written at {took}",
        *(
            f"journal {kind} ({module} = {'its default' if value is None else f'{value:,}'} in the writer):"
            f" {_listing(_journal(journals[kind]))}"
            for kind, value in kinds.items()
        ),
        f"each trial a fresh process and a fresh copy of the files, page cache warm; {filesystem(tmp)}",
    ]
    if redis_dirs:
        notes.append(f"redis: {writes:,} INCR pipelined 1,000 at a time, SIGKILL; rewritten by BGREWRITEAOF")
    notes += [n for n in (_baselines.redis_missing(), _baselines.diskcache_missing()) if n]
    floors = [series[k] for k in ("empty", "memory", "redis empty") if k in series]
    net = ", ".join(
        f"{kind} {(series[kind].median() - series['empty'].median()) / 1e6:.1f} ms" for kind in journals
    )
    notes.insert(1, f"the replay itself (median less the empty journal's open): {net}")
    return [
        Result(
            f"journal replay: {writes:,} writes, compaction held off",
            [series["held off"]],
            [series[k] for k in ("redis written",) if k in series] + floors,
            "report",
            notes,
        ),
        Result(
            f"journal replay: {writes:,} writes, compacted",
            [series["compacted"]],
            [series[k] for k in ("redis rewritten", "diskcache") if k in series] + floors,
            "report",
            list(notes),
        ),
        *_sizes(writes, journals, written["compacted"], (redis_dirs, cache_dir), notes[:3]),
    ]


def _trials(
    trials: int, tmp: str, variants: dict[str, tuple[str, Callable[[str], int]]]
) -> dict[str, Series]:
    """Run each variant once per trial, in an order shuffled each trial; each on a fresh copy of its files."""
    series = {variant: Series(label, unit="ms") for variant, (label, _) in variants.items()}
    for trial in range(trials):
        progress(f"journal replay: trial {trial + 1} of {trials}")
        order = list(variants)
        random.Random(trial).shuffle(order)  # noqa: S311 - an order, not a secret
        for variant in order:
            copy = os.path.join(tmp, f"trial-{variant}")
            series[variant].samples.append(variants[variant][1](copy))
            shutil.rmtree(copy, ignore_errors=True)
    return series


def _sizes(
    writes: int,
    journals: dict[str, str],
    written: dict[str, Any],
    theirs: tuple[dict[str, str], str | None],
    notes: list[str],
) -> list[Result]:
    """Journal bytes on disk (as written; the compacted one's snapshot), then redis's and diskcache's files.

    Two tables, each against the dict's encoded items, so that every ratio is "times the dict".
    """
    redis_dirs, cache_dir = theirs

    def one(name: str, size: int) -> Series:
        return Series(name, [float(size)], unit="kB")

    ours = [one(f"journal {kind}: {NAME}.journal/", _size(_journal(jd))) for kind, jd in journals.items()]
    compacted = _journal(journals["compacted"])
    snapshots = [n for n in os.listdir(compacted) if n.startswith("snapshot.")]
    if snapshots:
        ours.append(one("journal compacted: its snapshot alone", _size(compacted, snapshots)))
    the_dict = one("the dict: len(json.dumps(list(d.items())))", written["size"])
    theirs_now = [
        one(f"redis AOF {REDIS[kind]} ({AOF_DIR})", _size(os.path.join(where, AOF_DIR)))
        for kind, where in redis_dirs.items()
    ]
    if cache_dir:
        theirs_now.append(one("diskcache directory (SQLite) after the same incr", _size(cache_dir)))
    what = f"{writes:,} writes over {KEYS:,} keys"
    results = [Result(f"journal size: {what}", ours, [the_dict], "report", notes)]
    if theirs_now:
        results.append(
            Result(f"redis and diskcache files: {what}", theirs_now, [the_dict], "report", [notes[0]])
        )
    return results


def _write_journal(
    rd: str, tmp: str, kind: str, writes: int, compaction: int | None
) -> tuple[str, dict[str, Any]]:
    """Write the journal in a process of its own (the host), close it; return its journal_dir and report."""
    journal_dir = os.path.join(tmp, kind.replace(" ", "-"))
    os.mkdir(journal_dir)
    runtime_dir = tempfile.mkdtemp(prefix="writer-", dir=rd)
    progress(f"journal replay: {writes:,} increments, journal {kind}")
    with workers() as started:
        recipe = jw.Recipe(writes, KEYS, WRITER_THREADS, compaction)
        writer = Worker(jw.journal_writer, NAME, runtime_dir, journal_dir, recipe)
        started.append(writer)
        if not writer.info["is_host"]:
            raise RuntimeError("the journal's writer is not its dict's host")
        writer.send("go")
        report: dict[str, Any] = writer.recv(900)
        _close(writer)
    return journal_dir, report


def _close(worker: Worker) -> None:
    """Close the worker's dict gracefully and wait until its process exits (a host may write on close)."""
    worker.send("stop")
    worker.proc.join(120)
    if worker.proc.exitcode != 0:
        raise RuntimeError(f"worker {worker.pid} did not close cleanly (exit code {worker.proc.exitcode})")


def _ours(
    rd: str,
    journal_dir: str | None,
    want: tuple[str, int] | None = None,
    written: dict[str, Any] | None = None,
) -> Callable[[str], int]:
    """A trial of ours: a fresh process opens the dict on a copy of ``journal_dir`` (None: not durable).

    Timed until ``want`` (key, value) is read (None: the open alone); then every key is checked.
    """

    def trial(copy: str) -> int:
        with workers() as started:
            reader = Worker(jw.journal_reader)
            started.append(reader)
            if journal_dir is not None:
                shutil.copytree(journal_dir, copy, symlinks=True)
            runtime_dir = tempfile.mkdtemp(prefix="reader-", dir=rd)
            reader.send((NAME, runtime_dir, None if journal_dir is None else copy, want))
            report = reader.recv(jw.OPEN_TIMEOUT + 30)
            if "error" in report:
                raise RuntimeError(f"replay failed in {reader.pid}:\n{report['error']}")
            if want is not None and report["found"] != want[1]:
                raise RuntimeError(f"{want[0]} is {report['found']!r} after replay, not {want[1]}")
            if written is not None and (report["size"], report["keys"]) != (written["size"], written["keys"]):
                raise RuntimeError(f"replayed {report['keys']} keys ({report['size']} B), wrote {written}")
            if not report["is_host"]:
                raise RuntimeError("the fresh process did not host: something else held the dict")
            _close(reader)
            shutil.rmtree(runtime_dir, ignore_errors=True)
        return int(report["ns"])

    return trial


def _theirs(where: str, key: str | None = None, count: int | None = None) -> Callable[[str], int]:
    """A trial of redis-server: start it on a copy of ``where``'s append-only files; time its first GET."""

    def trial(copy: str) -> int:
        source = os.path.join(where, AOF_DIR)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(copy, AOF_DIR))
        else:
            os.mkdir(copy)
        ns, value = _baselines.redis_reload(copy, key)
        if key is not None and value != str(count).encode():
            raise RuntimeError(f"redis-server loaded {key} = {value!r}, not {count}")
        return ns

    return trial


def _diskcache(directory: str, key: str, count: int) -> Callable[[str], int]:
    """A trial of diskcache: a fresh process opens a copy of ``directory`` and gets ``key``."""

    def trial(copy: str) -> int:
        with workers() as started:
            reader = Worker(jw.diskcache_reader)
            started.append(reader)
            shutil.copytree(directory, copy)
            reader.send((copy, key))
            report = reader.recv(60)
            if report["value"] != count:
                raise RuntimeError(f"diskcache holds {key} = {report['value']!r}, not {count}")
        return int(report["ns"])

    return trial


def _redis_files(tmp: str, writes: int) -> dict[str, str]:
    """redis-server's append-only files after ``writes`` INCR: as written, and after BGREWRITEAOF."""
    import redis  # noqa: PLC0415 - an optional extra

    progress(f"journal replay: {writes:,} redis INCR, then BGREWRITEAOF")
    raw, rewritten = os.path.join(tmp, "redis-written"), os.path.join(tmp, "redis-rewritten")
    os.mkdir(raw)
    with _baselines.redis_server(raw, "no") as server, redis.Redis(unix_socket_path=server.path) as client:
        for first in range(0, writes, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(first, min(first + 1000, writes)):
                pipe.incr(f"k{i % KEYS}")
            pipe.execute()
    shutil.copytree(os.path.join(raw, AOF_DIR), os.path.join(rewritten, AOF_DIR))
    with (
        _baselines.redis_server(rewritten, "no") as server,
        redis.Redis(unix_socket_path=server.path) as client,
    ):
        client.bgrewriteaof()
        deadline = time.monotonic() + 60
        while _rewriting(client.info("persistence")):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not finish BGREWRITEAOF within 60 s")
            time.sleep(0.01)
        if (info := client.info("persistence"))["aof_last_bgrewrite_status"] != "ok":
            raise RuntimeError(f"BGREWRITEAOF failed: {info}")
    return {"redis written": raw, "redis rewritten": rewritten}


def _rewriting(info: dict[str, Any]) -> bool:
    return bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])


def _diskcache_files(tmp: str, writes: int) -> str:
    """diskcache's directory after the same increments (its default settings), closed."""
    import diskcache  # noqa: PLC0415 - an optional extra

    progress(f"journal replay: {writes:,} diskcache incr")
    directory = os.path.join(tmp, "diskcache")
    with diskcache.Cache(directory) as cache:
        for i in range(writes):
            cache.incr(f"k{i % KEYS}")
    return directory


def _journal(journal_dir: str) -> str:
    """The journal's own directory, ``<journal_dir>/<name>.journal``; say what is there if it is not."""
    path = os.path.join(journal_dir, f"{NAME}.journal")
    if not os.path.isdir(path):
        raise RuntimeError(f"no journal at {path}; {journal_dir} holds {sorted(os.listdir(journal_dir))}")
    return path


def _size(directory: str, only: list[str] | None = None) -> int:
    """Bytes of every file under ``directory`` (st_size), or of the files ``only`` names in it."""
    total = 0
    for top, _dirs, names in os.walk(directory):
        for name in names if only is None else only:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(top, name)).st_size
        if only is not None:
            break
    return total


def _listing(directory: str) -> str:
    """``"log.1 3.9 MB, snapshot.2 21 kB"``: the journal's files and their sizes."""
    entries = sorted(os.listdir(directory))
    return ", ".join(f"{n} {_size_text(os.lstat(os.path.join(directory, n)).st_size)}" for n in entries)


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} B"


SCENARIOS = {"journal-replay": bench_journal_replay}
