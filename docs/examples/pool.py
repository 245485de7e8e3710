"""spawn and forkserver children open the dict by name, in a Pool's initializer (docs: failover)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, PLW0603, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import multiprocessing

from ipchannel import SharedDict


def init(name):
    global counter
    counter = SharedDict(name)


def count(_):
    return counter.incr("tasks")


if __name__ == "__main__":
    counter = SharedDict("counter")  # this process holds a replica too, and hosts
    with multiprocessing.get_context("forkserver").Pool(4, init, ("counter",)) as pool:
        pool.map(count, range(100))
    print(counter["tasks"])  # 100: every child counted in the same dict
    counter.close()
