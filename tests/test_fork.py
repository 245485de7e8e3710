"""Fork safety with a real os.fork(), as under gunicorn --preload: the parent hosts, its children share."""

from __future__ import annotations

import fcntl
import gc
import json
import os
import signal
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

import _peers
import pytest
from conftest import SPAWN, Peer, Peers, freeze, is_member, reap, spawned, wait_until

import ipchannel
from ipchannel import _hooks

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from pathlib import Path


class _Events:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seen: list[dict[str, Any]] = []

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        for event in self.seen:
            if predicate(event):
                return event

        def poll() -> dict[str, Any] | None:
            while self.conn.poll(0.01):
                event: dict[str, Any] = self.conn.recv()
                self.seen.append(event)
                assert event["event"] != "error", event
                if predicate(event):
                    return event
            return None

        result: dict[str, Any] = wait_until(poll, timeout=timeout)
        return result


@pytest.mark.timeout(60)
def test_forked_children_never_host_and_take_over_when_parent_dies(runtime_dir: Path) -> None:
    parent_conn, child_conn = SPAWN.Pipe()
    proc = SPAWN.Process(
        target=_peers.fork_main, args=(child_conn, "forked", str(runtime_dir), 2), daemon=True
    )
    proc.start()
    child_conn.close()
    events = _Events(parent_conn)
    children: list[int] = []
    try:
        parent = events.wait_for(lambda e: e["event"] == "parent")
        children = parent["children"]
        assert parent["is_host"]
        for pid in children:
            forked = events.wait_for(lambda e, pid=pid: e["event"] == "forked" and e["pid"] == pid)
            assert forked["is_host"] is False
            assert forked["state"] == "initiated"
            assert forked["lock_fds"] == []  # the parent's lock descriptor was closed in the child
            first = events.wait_for(lambda e, pid=pid: e["event"] == "first_reply" and e["pid"] == pid)
            assert first["reply"] == f"{proc.pid} first use"  # reconnected afresh, served by the parent
        # the parent's own connection was not written into by the children
        parent_conn.send("request")
        assert events.wait_for(lambda e: e["event"] == "parent_reply")["reply"] == f"{proc.pid} parent"

        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        # not join(): it waits on a sentinel pipe the forked children inherited; exitcode uses waitpid
        wait_until(lambda: proc.exitcode is not None)
        takeovers = [
            events.wait_for(lambda e, pid=pid: e["event"] == "new_host" and e["pid"] == pid)
            for pid in children
        ]
        new_hosts = {int(t["reply"].split()[0]) for t in takeovers}
        assert len(new_hosts) == 1
        assert new_hosts <= set(children)
        assert [t["is_host"] for t in takeovers].count(True) == 1
    finally:
        (runtime_dir / "stop").touch()
        if proc.exitcode is None:
            proc.kill()
            wait_until(lambda: proc.exitcode is not None)
        parent_conn.close()
        for pid in children:
            reap(pid)
        proc.close()


def _run_forker(target: Any, runtime_dir: Path, *args: Any) -> dict[str, Any]:
    """Run ``target(conn, "d", runtime_dir, *args)`` in a spawned process; return its report.

    Not a daemon process: a multiprocessing Pool refuses to start inside one.
    """
    with spawned(target, "d", str(runtime_dir), *args, daemon=False) as (proc, conn):
        assert conn.poll(60), "the forking process did not report"
        report: dict[str, Any] = conn.recv()
        conn.send("close")
        proc.join(20)
        assert proc.exitcode == 0
    return report


@pytest.mark.timeout(90)
@pytest.mark.parametrize("write_first", [True, False], ids=["parent-writes-first", "parent-only-opens"])
def test_forked_children_incrementing_a_shared_dict_get_every_value_once(
    runtime_dir: Path, write_first: bool
) -> None:
    report = _run_forker(_peers.dict_fork_main, runtime_dir, 4, 25, write_first)
    assert report["statuses"] == [0, 0, 0, 0], report["results"]
    values = sorted(v for result in report["results"] for v in result["values"])
    assert values == list(range(1, 101))  # each child is a writer of its own: no write taken for a resend
    assert report["final"] == 100
    assert report["is_host"]


@pytest.mark.timeout(90)
def test_a_multiprocessing_fork_pool_increments_a_shared_dict_exactly_once_per_call(
    runtime_dir: Path,
) -> None:
    report = _run_forker(_peers.dict_pool_main, runtime_dir, 8, 25)
    values = sorted(v for result in report["results"] for v in result)
    assert values == list(range(1, 201))
    assert len(report["workers"]) >= 2  # several forked workers wrote


@pytest.mark.timeout(60)
def test_a_request_in_a_forked_child_keeps_its_timeout_while_the_subscription_comes_back(
    peers: Peers, runtime_dir: Path
) -> None:
    (host,) = peers.start_requests(1)
    host.call("request", message="elect me")
    with spawned(_peers.fork_request_timeout_main, "test", str(runtime_dir)) as (_proc, conn):
        assert conn.poll(30)
        assert "subscribed" in conn.recv()
        freeze(host.pid)  # the host accepts connections but answers nothing
        try:
            conn.send("fork")
            assert conn.poll(20), "the child's request did not return"  # before the fix: it hung
            report = conn.recv()
        finally:
            os.kill(host.pid, signal.SIGCONT)
    assert report["outcome"] == "ChannelTimeout"
    assert report["seconds"] < 5


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)  # as a preloaded server forks
def test_a_forked_child_stays_out_of_elections_until_its_replica_has_synced(
    runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hosting from the copy it had at fork time, a child would hand everyone a state without the
    # writes acknowledged since (seen with a parent killed 3-10 ms after forking writers).

    parent, release = os.getpid(), threading.Event()

    def hold_the_childs_resync(point: str, _detail: object) -> None:
        if point == "shareddict.resyncing" and os.getpid() != parent:
            release.wait(20)

    with ipchannel.SharedDict("forked", runtime_dir=runtime_dir) as d:
        d["n"] = 1
        monkeypatch.setattr(_hooks, "pause", hold_the_childs_resync)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                out_while_stale = not d.channel.may_host
                release.set()
                wait_until(lambda: d.channel.may_host, timeout=20)  # synced: back in elections
                code = 0 if out_while_stale else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert d.channel.may_host  # the parent's own switch is untouched


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_after_its_parent_wrote_becomes_a_member(peers: Peers, runtime_dir: Path) -> None:
    # The parent's last batch was its own writes alone, which it need not confirm. A child that
    # kept that flag confirmed nothing until someone else wrote: never a member while all was quiet.
    (host,) = peers.start_dicts(1)
    with ipchannel.SharedDict("test", runtime_dir=runtime_dir) as d:
        wait_until(lambda: host.call("info")["is_host"])
        d["k"] = "v"  # applied here as a batch of this process's writes alone
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                joined = wait_until(lambda: is_member(runtime_dir, os.getpid()), timeout=10)
                code = 0 if joined else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_a_thread_holds_the_members_lock_does_not_keep_it(
    peers: Peers, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host records a new member under the flock of .test.members.lock. A child forked then
    # has a copy of that descriptor; closing the parent's alone left the lock held while the child
    # lived, and every later change of the record (a member joining or leaving) waited for it.
    parent, locked, forked = os.getpid(), threading.Event(), threading.Event()

    def hold_the_lock_until_forked(point: str, _detail: object) -> None:
        if point == "members.locked" and os.getpid() == parent and not forked.is_set():
            locked.set()
            forked.wait(20)

    with ipchannel.SharedDict("test", runtime_dir=runtime_dir) as d:
        d["k"] = "v"  # hosting, with its own term recorded
        monkeypatch.setattr(_hooks, "pause", hold_the_lock_until_forked)
        started: list[Peer] = []  # a replica joins: the host records it, holding the flock
        starting = threading.Thread(target=lambda: started.extend(peers.start_dicts(1)))
        starting.start()  # its start returns once it is in: after the fork, here
        wait_until(locked.is_set, timeout=10)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - lives until told; says whether it kept a copy of the lock
            kept = _peers.fds_pointing_to(str(runtime_dir / ".test.members.lock"))
            os.read(read_end, 1)
            os._exit(3 if kept else 0)
        try:
            forked.set()
            starting.join(30)
            (replica,) = started
            wait_until(lambda: is_member(runtime_dir, replica.pid))
            fd = os.open(runtime_dir / ".test.members.lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before the fix: BlockingIOError
            finally:
                os.close(fd)
            replica.exit(timeout=10)  # leaves the members: takes the lock, as any process would
        finally:
            os.write(write_end, b"x")
            os.close(write_end)
            os.close(read_end)
            status = os.waitpid(pid, 0)[1]
        assert os.waitstatus_to_exitcode(status) == 0  # 3: the child kept the parent's descriptor open


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_leaves_no_resource_warning_behind(runtime_dir: Path) -> None:
    # A child drops the parent's connections: dropped without close(), each one is a ResourceWarning
    # (seen under python -X dev in every gunicorn --preload worker).
    with (
        ipchannel.RequestChannel("requests", _peers.on_request, runtime_dir=runtime_dir) as channel,
        ipchannel.SharedDict("dict", runtime_dir=runtime_dir) as d,
    ):
        channel.subscribe(lambda _message: None)
        channel.request("warm")  # an idle request connection to copy
        d["k"] = 1
        read_end, write_end = os.pipe()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - reports through the pipe
                try:
                    channel.request("again", timeout=10)
                    d["k"] = 2
                    gc.collect()
                    report = [f"{w.category.__name__}: {w.message}" for w in caught]
                    os.write(write_end, json.dumps(report).encode())
                finally:
                    os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            report = json.loads(pipe.read() or '["no report"]')
        reap(pid)
        assert [w for w in report if "multi-threaded" not in w] == []


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python warns of fork() with threads from 3.12")
def test_python_warns_of_a_fork_with_ipchannel_threads_only_once_something_is_open(runtime_dir: Path) -> None:
    # Not needlessly: making a Channel, RequestChannel or an ipchannel.aio object starts no thread
    # (a --preload master that only defines them forks quietly). Not hidden: with a SharedDict open,
    # Python's own warning reaches the application as it would for any thread.
    with spawned(_peers.fork_warning_main, str(runtime_dir)) as (_, conn):
        assert conn.poll(30), "no report"
        report = conn.recv()
    assert report["only_made"] == []
    assert len(report["opened"]) == 1, report
    assert "is multi-threaded, use of fork() may lead to deadlocks" in report["opened"][0]
