"""Spawn targets for opening a SharedDict while its last other holder closes (``test_shareddict``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ipchannel import SharedDict, _hooks

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


def holder(conn: Connection, runtime_dir: str) -> None:
    """Hold the dict until told to close it."""
    d = SharedDict("opening", runtime_dir=runtime_dir, timeout=30)
    d["hits"] = 80
    conn.send("ready")
    conn.recv()
    d.close()
    conn.send("closed")


def newcomer(conn: Connection, runtime_dir: str) -> None:
    """Open the dict, held just before its first snapshot until told to go on; say how long it took."""
    first = [True]

    def pause(point: str, _detail: Any) -> None:
        if point == "shareddict.resyncing" and first[0]:
            first[0] = False
            conn.send("at snapshot")
            conn.recv()

    _hooks.pause = pause
    start = time.monotonic()
    d = SharedDict("opening", runtime_dir=runtime_dir, timeout=30)
    opened = time.monotonic() - start
    d["after"] = 1
    conn.send({"opened": opened, "items": d.copy()})
    d.close()
