"""Filesystem faults under a live host: each is repaired or reported clearly, and nothing hangs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import _peers
import pytest
from conftest import wait_until

import ipchannel
from ipchannel._local.coordinator import LocalCoordinator, read_record
from ipchannel._local.paths import ChannelPaths

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import Peer, Peers


def _delete_at_once(directory: Path) -> None:
    """Take ``directory`` away in one step, then delete it.

    A plain ``rmtree`` deletes one file at a time: a host that finds its record gone before its lock
    file rewrites the record, and ``rmtree`` fails with "Directory not empty" (seen in CI).
    """
    removed = directory.with_name(directory.name + ".removed")
    directory.rename(removed)
    shutil.rmtree(removed)


def _hosts(group: list[Peer]) -> list[int]:
    return [p.pid for p in group if p.call("info")["is_host"]]


def _everyone_answered_by_one_host(group: list[Peer]) -> int:
    hosts: set[int] = {p.call("request", message="who", timeout=10)["reply"]["pid"] for p in group}
    assert len(hosts) == 1, hosts
    return hosts.pop()


@pytest.mark.timeout(60)
def test_runtime_dir_deleted_under_a_live_host(peers: Peers, runtime_dir: Path) -> None:
    group = peers.start_requests(3)
    old_host = _everyone_answered_by_one_host(group)
    _delete_at_once(runtime_dir)  # lock, record and socket file all gone; the host still listens
    # the host notices at its next monitor tick and steps down; whoever wins the new lock hosts
    coordinator = LocalCoordinator("test", ChannelPaths.for_channel("test", runtime_dir))
    wait_until(lambda: (record := coordinator.read()) and coordinator.assess(record).serving, timeout=10)
    # until its next tick (0.1 s) the old host may still answer its own connections: the documented window
    wait_until(lambda: len(_hosts(group)) == 1, timeout=5)
    new_host = _everyone_answered_by_one_host(group)
    assert _hosts(group) == [new_host]
    record = read_record(runtime_dir / "test.host")
    assert record is not None
    assert record.pid == new_host
    assert record.generation >= 2 or new_host != old_host
    with ipchannel.RequestChannel("test", None) as late:  # a newcomer finds it too
        assert late.request("hi", timeout=10)["pid"] == new_host
    # one standby: one whose lock file went with the directory stops standing by
    wait_until(lambda: sum(p.call("info")["standby"] for p in group) == 1, timeout=10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", [b"", b'{"pid": 1, "create', b"\x00garbage\xff"])
def test_corrupted_or_truncated_record_is_rewritten(peers: Peers, runtime_dir: Path, damage: bytes) -> None:
    group = peers.start_requests(2)
    host = _everyone_answered_by_one_host(group)
    before = read_record(runtime_dir / "test.host")
    (runtime_dir / "test.host").write_bytes(damage)
    wait_until(lambda: read_record(runtime_dir / "test.host") == before, timeout=5)
    with ipchannel.RequestChannel("test", None) as late:
        assert late.request("hi", timeout=10)["pid"] == host  # same host, same term


@pytest.mark.timeout(60)
def test_socket_file_removed_under_a_live_host(peers: Peers, runtime_dir: Path) -> None:
    group = peers.start_requests(3)
    _everyone_answered_by_one_host(group)
    (runtime_dir / "test.sock").unlink()  # nobody new could connect: the host steps down
    wait_until((runtime_dir / "test.sock").exists, timeout=10)
    new_host = _everyone_answered_by_one_host(group)
    with ipchannel.RequestChannel("test", None) as late:
        assert late.request("hi", timeout=10)["pid"] == new_host


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), to fill up; skipped where it cannot be mounted."""
    mountpoint = Path(tempfile.mkdtemp(prefix="ipc-full-", dir="/tmp"))
    try:
        mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)],  # noqa: S607
                capture_output=True,
                check=False,
                timeout=30,
            ).returncode
            == 0
        )
        if not mounted:
            pytest.skip("cannot mount a small tmpfs here (needs root); the disk-full case is untested")
        yield mountpoint
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False, timeout=30)  # noqa: S607
        shutil.rmtree(mountpoint, ignore_errors=True)


@pytest.mark.timeout(60)
def test_disk_full_when_writing_the_record_is_a_clear_error(small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        f.write(b"x" * (1 << 20))  # until ENOSPC
    channel = ipchannel.Channel("full", _peers.echo_handler, runtime_dir=small_tmpfs)
    try:
        with pytest.raises(ipchannel.ChannelError, match=r"cannot host in .*No space left on device"):
            channel.connect(timeout=2)
        assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "full.lock"]  # nothing half-made
        filler.unlink()  # space again: the same channel works
        sock = channel.connect(timeout=5)
        sock.sendall(b"after\n")
        assert _peers.read_line(sock) == f"{os.getpid()} after\n".encode()
    finally:
        channel.close()


@pytest.mark.timeout(30)
def test_a_host_that_cannot_start_undoes_everything_and_says_why(runtime_dir: Path) -> None:
    # A directory named like a stale temporary socket: the new host cannot clear it, so it cannot start.
    (runtime_dir / f".test.{os.getpid()}.sock").mkdir()
    channel = ipchannel.Channel("test", _peers.echo_handler)
    try:
        with pytest.raises(ipchannel.ChannelError, match="cannot host in"):
            channel.connect(timeout=1)
        assert not channel.is_host
        assert not (runtime_dir / "test.host").exists()
        (runtime_dir / f".test.{os.getpid()}.sock").rmdir()
        sock = channel.connect(timeout=5)  # the channel is still usable
        sock.sendall(b"x\n")
        assert _peers.read_line(sock) == f"{os.getpid()} x\n".encode()
    finally:
        channel.close()


@pytest.mark.timeout(90)
def test_a_record_deleted_again_and_again_under_a_live_host_loses_no_client(
    peers: Peers, runtime_dir: Path, tmp_path: Path
) -> None:
    host, subscriber, requester = peers.start_requests(3)
    host.call("request", message="elect me")
    logs = [tmp_path / "subscriber.log", tmp_path / "requester.log"]
    subscriber.call("log_to", path=str(logs[0]))
    requester.call("log_to", path=str(logs[1]))
    subscriber.call("subscribe")
    requester.call("request", message="before")
    record = runtime_dir / "test.host"
    before = read_record(record)
    # Long enough for an idle client's monitor to tick at least twice (every 2 s with an exit
    # notice) while the record is missing; the host rewrites it within a tick each time.
    started, deletions = time.monotonic(), 0
    while deletions < 25 or time.monotonic() - started < 4.5:
        wait_until(lambda: read_record(record) == before, timeout=5)
        record.unlink(missing_ok=True)
        deletions += 1
    wait_until(lambda: read_record(record) == before, timeout=5)
    for i in range(5):  # the subscription and the request connections survived, on the same host
        assert requester.call("request", message=i)["reply"]["pid"] == host.pid
        requester.call("publish", message=i)
    wait_until(lambda: subscriber.call("received")["received"] == [0, 1, 2, 3, 4], timeout=10)
    for log in logs:  # it was never taken for a host that handed over
        assert " lost" not in log.read_text(), log.read_text()


@pytest.mark.timeout(60)
def test_a_failure_to_host_while_a_reader_waits_for_the_next_host_is_retried(
    peers: Peers, runtime_dir: Path
) -> None:
    (host,) = peers.start(1)
    host.call("connect")
    host.call("set_may_host", value=False)  # once it steps down, only this process may host
    with ipchannel.Channel("test", _peers.echo_handler) as channel:
        sock = channel.connect(timeout=5)
        sock.sendall(b"x\n")
        assert _peers.read_line(sock) == f"{host.pid} x\n".encode()
        wait_until(lambda: channel._hosting.standing_by)  # noqa: SLF001
        # Its standby server's socket file goes with the directory: its first try to host fails.
        _delete_at_once(runtime_dir)
        with pytest.raises(ipchannel.HostChanged):  # before the fix: ChannelError "cannot host in ..."
            sock.recv(1)  # the host steps down and ends the connection; no deadline to wait within
        assert channel.is_host
        sock.sendall(b"y\n")
        assert _peers.read_line(sock) == f"{os.getpid()} y\n".encode()


@pytest.mark.timeout(60)
def test_a_subscription_outlives_a_failure_to_host_on_its_way_to_the_next_host(
    peers: Peers, runtime_dir: Path
) -> None:
    (host,) = peers.start_requests(1)
    host.call("request", message="elect me")
    received: list[object] = []
    with ipchannel.RequestChannel("test", None) as subscriber:
        subscriber.subscribe(received.append)
        wait_until(lambda: subscriber.channel._hosting.standing_by)  # noqa: SLF001
        _delete_at_once(runtime_dir)  # the host steps down; this standby's first try to host fails
        # it hosts: generation 2, or 3 if its failed try had published its record before it failed
        wait_until(lambda: (record := read_record(runtime_dir / "test.host")) and record.pid == os.getpid())
        for i in range(5):
            host.call("publish", message=i, timeout=10)
        wait_until(lambda: received == [0, 1, 2, 3, 4], timeout=10)  # before the fix: its thread died
