"""Children started by ``spawn`` and ``forkserver`` (Python 3.14's default on Linux): they inherit no object.

A child of those start methods begins with a fresh interpreter, so it opens its own SharedDict or
RequestChannel by name (in its target, or a Pool's ``initializer``), and finds the same state as
every other process. Sending an opened one instead (pickling it) is refused with a TypeError that
says so, not with whatever inner lock happened to be found first.
"""

from __future__ import annotations

import copy as copy_module
import multiprocessing
import os
import pickle
from typing import TYPE_CHECKING, Any

import pytest
from conftest import spawned, wait_until

import ipchannel

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkServerContext, SpawnContext
    from pathlib import Path

METHODS = ["spawn", "forkserver"]
_opened: dict[str, Any] = {}  # in each Pool worker: what its initializer opened


def _open_dict(name: str, runtime_dir: str) -> None:
    """A Pool ``initializer``: open the dict once per worker process."""
    _opened["dict"] = ipchannel.SharedDict(name, runtime_dir=runtime_dir, timeout=10)


def _incr(times: int) -> tuple[int, list[int]]:
    d = _opened["dict"]
    return os.getpid(), [d.incr("n") for _ in range(times)]


def _request_and_publish(name: str, runtime_dir: str, queue: Any) -> None:
    """A Process target: open the RequestChannel by name, ask the host, publish to every subscriber."""
    with ipchannel.RequestChannel(name, None, runtime_dir=runtime_dir) as channel:
        queue.put(channel.request({"from": os.getpid()}, timeout=10))
        channel.publish({"published by": os.getpid()}, timeout=10)


def _pool_main(conn: Connection, method: str, runtime_dir: str) -> None:
    """Host the dict, have a Pool of ``method`` increment it, report (in a process of its own)."""
    with ipchannel.SharedDict("counter", runtime_dir=runtime_dir, timeout=10) as d:
        d["n"] = 0  # this process hosts; the workers open it by name
        with _context(method).Pool(3, _open_dict, ("counter", runtime_dir)) as pool:
            done = pool.map(_incr, [10] * 9, chunksize=1)
        conn.send({"done": done, "final": d["n"], "pid": os.getpid()})


def _channel_main(conn: Connection, method: str, runtime_dir: str) -> None:
    """Host the channel, subscribed; a child of ``method`` requests and publishes; report."""
    received: list[Any] = []
    with ipchannel.RequestChannel("service", _echo, runtime_dir=runtime_dir) as channel:
        channel.subscribe(received.append)
        channel.request("warm up", timeout=10)  # this process hosts
        context = _context(method)
        queue = context.SimpleQueue()
        child = context.Process(target=_request_and_publish, args=("service", runtime_dir, queue))
        child.start()
        child.join(30)
        reply = queue.get() if child.exitcode == 0 else None
        wait_until(lambda: {"published by": child.pid} in received, timeout=10)
        conn.send({"exitcode": child.exitcode, "child": child.pid, "reply": reply, "received": received})


def _context(method: str) -> SpawnContext | ForkServerContext:
    if method == "spawn":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("forkserver")


def _echo(message: Any) -> Any:
    return {"echo": message}


def _report(main: Any, method: str, runtime_dir: Path) -> dict[str, Any]:
    with spawned(main, method, str(runtime_dir), daemon=False) as (_, conn):  # it starts children
        assert conn.poll(60), "no report within 60 s"
        report: dict[str, Any] = conn.recv()
        return report


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_pool_workers_of_a_start_method_open_the_dict_by_name_and_count_once(
    method: str, runtime_dir: Path
) -> None:
    report = _report(_pool_main, method, runtime_dir)
    values = sorted(value for _, values in report["done"] for value in values)
    assert values == list(range(1, 91))  # every increment once
    assert report["final"] == 90
    assert report["pid"] not in {pid for pid, _ in report["done"]}  # all of them in the pool's workers


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_a_child_of_a_start_method_requests_from_the_host_and_publishes_to_the_parent(
    method: str, runtime_dir: Path
) -> None:
    report = _report(_channel_main, method, runtime_dir)
    assert report["exitcode"] == 0
    assert report["reply"] == {"echo": {"from": report["child"]}}
    assert {"published by": report["child"]} in report["received"]


@pytest.mark.timeout(30)
def test_an_opened_object_refuses_to_be_pickled_and_says_what_to_do(runtime_dir: Path) -> None:
    with (
        ipchannel.SharedDict("d", runtime_dir=runtime_dir) as d,
        ipchannel.RequestChannel("r", None, runtime_dir=runtime_dir) as r,
    ):
        for obj, name in ((d, "SharedDict"), (r, "RequestChannel"), (r.channel, "Channel")):
            with pytest.raises(TypeError, match=rf"cannot send a {name} to another process.*open it there"):
                pickle.dumps(obj)
            for copy in (copy_module.copy, copy_module.deepcopy):
                with pytest.raises(TypeError, match=rf"cannot copy a {name}: .* use it as it is"):
                    copy(obj)
        with pytest.raises(TypeError, match="cannot send a SharedDict"):
            multiprocessing.get_context("spawn").Process(target=print, args=(d,)).start()
