"""Processes with an ipchannel:// limits storage, driven by the tests over a Pipe (see conftest's Peer)."""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import TYPE_CHECKING, Any

import _peers
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ipchannel._shareddict.dict import SharedDict
    from ipchannel.contrib.limits import SharedDictStorage

STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed": FixedWindowRateLimiter,
    "moving": MovingWindowRateLimiter,
    "sliding": SlidingWindowCounterRateLimiter,
}


def open_storage(name: str, runtime_dir: str) -> SharedDictStorage:
    """The storage as an application makes it: from its URI, after importing the module."""
    import ipchannel.contrib.limits  # noqa: F401, PLC0415 - registers the scheme

    storage: SharedDictStorage = storage_from_string(f"ipchannel://{name}?runtime_dir={runtime_dir}")  # type: ignore[assignment]
    return storage


class _LimitsPeer:
    def __init__(self, name: str, runtime_dir: str) -> None:
        self.storage = open_storage(name, runtime_dir)
        self.go = threading.Event()

    @property
    def channel(self) -> SharedDict:
        return self.storage.shared  # what "exit" closes

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "info":
            return {"is_host": self.channel.channel.is_host}
        if cmd == "hits":  # args: strategy, limit, key, times; the outcome of each hit, in order
            limiter, item = STRATEGIES[args["strategy"]](self.storage), parse(args["limit"])
            return {"passed": [limiter.hit(item, args["key"]) for _ in range(args["times"])]}
        if cmd == "stats":
            limiter, item = STRATEGIES[args["strategy"]](self.storage), parse(args["limit"])
            stats = limiter.get_window_stats(item, args["key"])
            return {"reset": stats.reset_time, "remaining": stats.remaining}
        raise ValueError(cmd)


def limits_peer_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Entry point of a peer process with an ``ipchannel://NAME`` storage."""
    _peers._serve_commands(conn, _LimitsPeer(name, runtime_dir))  # noqa: SLF001


def fork_main(conn: Connection, runtime_dir: str) -> None:
    """gunicorn --preload's order: make the storage (opens nothing), fork; then use it, fork again."""
    storage = open_storage("forked", runtime_dir)
    limiter, item = MovingWindowRateLimiter(storage), parse("5/minute")
    # The counts live in the processes that hold the dict: the children overlap (as workers do),
    # each holding it before any hits and until every one has hit.
    opened, done = (multiprocessing.get_context("fork").Barrier(4, timeout=30) for _ in range(2))

    def child(_: int) -> dict[str, Any]:
        storage.check()  # opens it in this child
        opened.wait()
        passed = [limiter.hit(item, "k") for _ in range(3)]
        done.wait()
        return {"passed": passed, "pid": os.getpid()}

    threads_before = sorted(t.name for t in threading.enumerate() if t.name.startswith("ipchannel-"))
    unused = _peers.fork_children(4, runtime_dir, child)  # 12 hits from 4 processes: 5 may pass
    parent_hits = [limiter.hit(item, "k2") for _ in range(2)]  # now the parent opens it (and hosts)
    limiter_k2 = MovingWindowRateLimiter(storage)

    def child_k2(_: int) -> dict[str, Any]:
        return {"passed": [limiter_k2.hit(item, "k2") for _ in range(3)]}

    used = _peers.fork_children(4, runtime_dir, child_k2)  # 12 more: 3 may pass
    conn.send(
        {
            "threads_before": threads_before,
            "unused": unused,
            "parent_hits": parent_hits,
            "used": used,
            "after": limiter.get_window_stats(item, "k2").remaining,
        }
    )
    conn.recv()
    storage.shared.close()
