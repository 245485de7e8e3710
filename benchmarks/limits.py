"""A rate limit check, storages side by side: ``python -m benchmarks --only limits``.

``limits``' ``FixedWindowRateLimiter.hit`` and ``MovingWindowRateLimiter.hit`` (what Flask-Limiter
and slowapi call once per request) on ``ipchannel://`` (its host in another process, as for a
gunicorn worker that does not host), beside ``memory://`` (one count per process: the floor, and
not shared) and ``redis+unix://`` on our own redis-server (``_baselines``). Every hit passes (the
limit is far away), so each is a full check-and-count; the variants interleaved sample by sample.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from benchmarks import _workers as w
from benchmarks._stats import Result, Series
from benchmarks.run import Config, Worker, _interleave, _others, _where, pinned, placements, progress, workers

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

NAME = "bench-limits"
LIMIT = "100000/hour"  # never reached: every hit is counted


def _ours(rd: str) -> Any:
    from limits.storage import storage_from_string  # noqa: PLC0415

    import ipchannel.contrib.limits  # noqa: F401, PLC0415 - registers ipchannel://; limits is an extra

    return storage_from_string(f"ipchannel://{NAME}?runtime_dir={rd}")


def limits_host(conn: Connection, rd: str) -> None:
    """Open the storage first (so this process hosts) and idle."""
    from ipchannel.contrib.limits import close_all  # noqa: PLC0415

    storage = _ours(rd)
    conn.send({"pid": os.getpid(), "is_host": storage.shared.channel.is_host})
    w._wait_for_stop(conn)  # noqa: SLF001 - the workers' shared idle loop
    close_all()


def bench_limits(cfg: Config, rd: str) -> list[Result]:
    """hit() p50 and p99 of the fixed and moving window: ipchannel:// beside memory:// and redis://."""
    from limits.storage import storage_from_string  # noqa: PLC0415

    from ipchannel.contrib.limits import close_all  # noqa: PLC0415

    progress("limits: FixedWindowRateLimiter.hit and MovingWindowRateLimiter.hit, one client")
    with _others(rd) as others, workers() as started:
        started.append(Worker(limits_host, rd))
        storages: dict[str, Any] = {"ipchannel://": _ours(rd), "memory://": storage_from_string("memory://")}
        if others.redis:
            storages["redis://"] = storage_from_string(f"redis+unix://{others.redis.path}")
        servers = [s.pid for s in started] + ([others.redis.pid] if others.redis else [])
        _label, here, there = placements()[0]
        try:
            with pinned({os.getpid(): here, **dict.fromkeys(servers, there)}):
                fixed, moving = _measure(cfg, storages)
        finally:
            close_all()
    notes = [
        _where(here, there),
        "ipchannel://: its host is another process (the client is not the host); memory:// is per process",
        f"limit {LIMIT}: every hit passes and is counted",
        *others.notes(),
    ]
    return [
        Result("limits: FixedWindowRateLimiter.hit", fixed[:1], fixed[1:], "report p50 and p99", notes),
        Result(
            "limits: MovingWindowRateLimiter.hit", moving[:1], moving[1:], "report p50 and p99", list(notes)
        ),
    ]


def _measure(cfg: Config, storages: dict[str, Any]) -> tuple[list[Series], list[Series]]:
    from limits import parse  # noqa: PLC0415
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter  # noqa: PLC0415

    n = 200 if cfg.quick else 2000
    item = parse(LIMIT)
    fixed = [Series(f"{name} fixed window hit") for name in storages]
    moving = [Series(f"{name} moving window hit") for name in storages]
    ops: list[tuple[Series, Callable[[], object], int]] = []
    for storage, fixed_series, moving_series in zip(storages.values(), fixed, moving, strict=True):
        storage.reset()
        ops.append((fixed_series, _hit(FixedWindowRateLimiter(storage), item, "fixed"), 1))
        ops.append((moving_series, _hit(MovingWindowRateLimiter(storage), item, "moving"), 1))
    _interleave(n, ops)
    return fixed, moving


def _hit(limiter: Any, item: Any, key: str) -> Callable[[], object]:
    def hit() -> None:
        if not limiter.hit(item, key):  # a key per strategy: redis keeps a window as a list
            raise AssertionError("a hit of a limit that is far away was refused")

    return hit


SCENARIOS = {"limits": bench_limits}
