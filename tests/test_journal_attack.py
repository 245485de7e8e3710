"""Attacks on a durable SharedDict's journal, one per test: what an operator's bad day does to it.

A host killed in the middle of a batch (the window held open by a test hook), journal files
replaced by symlinks, garbage appended to a log (with and without a host writing it), logs cut
at every byte of their last record, two channels sharing one journal, a host's forked child
exiting, a frozen host, the last process closing under ``appendfsync="everysec"``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import freeze, reap, wait_until

import ipchannel
from ipchannel._codecs import resolve_codec
from ipchannel._shareddict import journal as journal_module
from ipchannel._shareddict.journal_files import Directory, scan
from ipchannel._shareddict.journal_replay import replay

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import Peer, Peers

_WRITER = Path(__file__).resolve().parent / "_journal_writer.py"
_ALWAYS: dict[str, Any] = {"appendonly": True, "appendfsync": "always"}


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


def _files(journal_dir: Path, name: str = "test") -> Path:
    return journal_dir / f"{name}.journal"


def _host(group: list[Peer]) -> Peer:
    (host,) = [p for p in group if p.alive and p.call("info")["is_host"]]
    return host


def _reopen(journal_dir: Path, name: str = "test", **options: Any) -> dict[Any, Any]:
    """Open the dict in this process (it hosts, so it replays the journal); return its content."""
    with ipchannel.SharedDict(name, appendonly=True, journal_dir=journal_dir, **options) as d:
        return d.copy()


def _log(journal_dir: Path) -> Path:
    (log,) = sorted(_files(journal_dir).glob("log.*[0-9]"))
    return log


def _settle(peer: Peer) -> None:
    """Wait until ``peer``'s replica has not moved for 0.3 s."""
    seen = [peer.call("info")["position"]]

    def still() -> bool:
        time.sleep(0.3)
        seen.append(peer.call("info")["position"])
        return bool(seen[-1] == seen[-2])

    wait_until(still, timeout=10)


# -- a host killed between journaling a batch and answering it ---------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("point", ["shareddict.journaled", "shareddict.published"])
def test_a_host_killed_after_journaling_a_batch_answers_its_writes_once_through_the_next_host(
    peers: Peers, journal_dir: Path, tmp_path: Path, point: str
) -> None:
    """journaled: nobody else has the batch but the journal; published: the replicas have it too."""
    holder, writer, other = peers.start_dicts(3, **_ALWAYS, journal_dir=str(journal_dir))
    assert _host([holder, writer, other]) is holder
    writer.call("incr", key="n", times=10)
    flag = tmp_path / "paused"
    holder.call("pause_at", point=point, marker='"n"', flag=str(flag))
    writer.call("count", key="n", threads=4)  # several writes per batch, and a queue behind it
    wait_until(flag.exists, timeout=10)  # the batch is in the journal; its writers have no answer
    holder.kill()
    new_host = wait_until(lambda: next((p for p in (writer, other) if p.call("info")["is_host"]), None))
    at_kill = new_host.call("copy")["items"][0][1]
    wait_until(lambda: new_host.call("copy")["items"][0][1] > at_kill + 50, timeout=30)  # it goes on
    stopped = writer.call("stop_count", timeout=60)
    assert stopped["errors"] == []
    expected = 10 + stopped["returned"]  # the batch's writes were resent, answered from the journal
    position = writer.call("info")["position"]
    for p in (writer, other):
        p.call("wait_position", position=position)
        assert p.call("copy")["items"] == [("n", expected)]
    writer.kill()
    other.kill()
    assert _reopen(journal_dir) == {"n": expected}  # and the journal holds each write once


@pytest.mark.timeout(90)
def test_a_write_resent_to_a_host_that_cannot_open_the_journal_is_not_said_to_be_applied_nowhere(
    peers: Peers, journal_dir: Path, tmp_path: Path
) -> None:
    # Its host had applied and published it, then died; the next could not replay the journal and
    # refused it with JournalError, which says "applied nowhere": a caller who trusted that and
    # wrote again would apply it twice.
    holder, writer, other = peers.start_dicts(3, **_ALWAYS, journal_dir=str(journal_dir))
    assert _host([holder, writer, other]) is holder
    writer.call("incr", key="n", times=10)
    flag = tmp_path / "paused"
    holder.call("pause_at", point="shareddict.published", marker='"n"', flag=str(flag))
    writer.call("count", key="n", threads=1)
    wait_until(flag.exists, timeout=10)  # applied and published: no answer yet
    log, elsewhere = _log(journal_dir), tmp_path / "elsewhere"
    log.rename(elsewhere)
    log.symlink_to(elsewhere)  # never followed: the next host cannot replay the journal
    holder.kill()
    stopped = writer.call("stop_count", timeout=60)  # the write in flight is resent, and refused
    assert stopped["returned"] == 0
    assert len(stopped["errors"]) == 1
    (error,) = stopped["errors"]
    assert error.startswith("JournalError: ")
    assert "is a symlink" in error
    assert "may have been applied by that host" in error
    wait_until(lambda: other.call("copy")["items"] == [("n", 11)])  # it was: the replicas hold it


# -- files that are not what the journal wrote ---------------------------------------------------


def _content(path: Path) -> bytes | dict[str, bytes]:
    return {f.name: f.read_bytes() for f in path.iterdir()} if path.is_dir() else path.read_bytes()


@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.parametrize("kind", ["log", "snapshot", "directory"])
def test_a_journal_file_replaced_by_a_symlink_is_never_followed_and_named_in_a_journal_error(
    journal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 0)  # every batch compacts: a snapshot
    with ipchannel.SharedDict("test", appendonly=True, journal_dir=journal_dir) as d:
        d["a"] = 1
        wait_until(lambda: list(_files(journal_dir).glob("snapshot.*")))
        d["b"] = 2
    numbered = [
        f for f in _files(journal_dir).iterdir() if f.name.startswith(kind) and f.suffix[1:].isdigit()
    ]
    # the newest (replay reads it), or the journal's directory itself
    file = max(numbered, key=lambda f: int(f.suffix[1:])) if numbered else _files(journal_dir)
    elsewhere = tmp_path / "elsewhere"
    file.rename(elsewhere)  # a valid journal: following the link would "work"
    content = _content(elsewhere)
    file.symlink_to(elsewhere)
    with pytest.raises(ipchannel.JournalError, match="is a symlink") as raised:
        ipchannel.SharedDict("test", appendonly=True, journal_dir=journal_dir)
    assert file.name in str(raised.value)
    assert file.is_symlink()
    assert _content(elsewhere) == content  # neither read as the state nor cut


@pytest.mark.usefixtures("runtime_dir")
def test_garbage_appended_to_a_log_is_cut_with_a_warning_and_kept(
    journal_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ipchannel.SharedDict("test", appendonly=True, journal_dir=journal_dir) as d:
        d.update({"a": 1, "b": 2})
        d.incr("n")
    log = _log(journal_dir)
    written, garbage = log.read_bytes(), b"\x00\x01 not a frame, appended by somebody else\n" * 3
    size = len(written)
    with log.open("ab") as f:
        f.write(garbage)
    with caplog.at_level(logging.WARNING, logger="ipchannel"):
        assert _reopen(journal_dir) == {"a": 1, "b": 2, "n": 1}
    assert f"at byte {size} of {log.name}" in caplog.text
    (kept,) = _files(journal_dir).glob(f"{log.name}.dropped-*")
    assert kept.read_bytes() == garbage
    assert log.read_bytes().startswith(written)  # the next host's records follow the last good one
    assert garbage not in log.read_bytes()


@pytest.mark.timeout(60)
def test_garbage_appended_to_the_log_a_host_writes_loses_none_of_its_later_writes(
    peers: Peers, journal_dir: Path, tmp_path: Path
) -> None:
    said = tmp_path / "ipchannel.log"
    (host,) = peers.start_dicts(1, log=str(said), **_ALWAYS, journal_dir=str(journal_dir))
    host.call("fill_keys", prefix="before", times=3, size=10)
    log = _log(journal_dir)
    garbage = b"appended by somebody else " * 20
    with log.open("ab") as f:
        f.write(garbage)
    host.call("fill_keys", prefix="after", times=3, size=10)  # acknowledged: in the journal, synced
    host.kill()
    content = _reopen(journal_dir)
    assert sorted(content) == [*(f"after{i}" for i in range(3)), *(f"before{i}" for i in range(3))]
    assert f"{len(garbage)} bytes this host did not write" in said.read_text()  # said, and kept aside
    (kept,) = _files(journal_dir).glob(f"{log.name}.dropped-*")
    assert kept.read_bytes() == garbage


@pytest.mark.usefixtures("runtime_dir")
def test_a_cut_never_overwrites_what_an_earlier_cut_kept(journal_dir: Path) -> None:
    with ipchannel.SharedDict("test", appendonly=True, journal_dir=journal_dir) as d:
        d["a"] = 1
    log = _log(journal_dir)
    now = time.time()
    earlier = {  # dropped-<second> for this second and the next few: whichever the cut is stamped with
        log.with_name(f"{log.name}.dropped-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now + s))}")
        for s in range(5)
    }
    for path in earlier:
        path.write_bytes(b"kept by an earlier cut")
    with log.open("ab") as f:
        f.write(b"torn")
    assert _reopen(journal_dir) == {"a": 1}
    assert {path.read_bytes() for path in earlier} == {b"kept by an earlier cut"}
    kept = set(_files(journal_dir).glob(f"{log.name}.dropped-*")) - earlier
    assert [path.read_bytes() for path in kept] == [b"torn"]


# -- torn tails ----------------------------------------------------------------------------------


def _torn_copy(source: Path, destination: Path, log_name: str, size: int) -> Path:
    shutil.copytree(source, destination)
    os.truncate(destination / f"test.journal/{log_name}", size)
    return destination


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("runtime_dir")
def test_a_log_cut_at_every_byte_of_its_last_record_replays_the_records_before_it(
    journal_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ipchannel.SharedDict("test", appendonly=True, journal_dir=journal_dir) as d:
        d.update({"a": 1, "b": [1, 2]})
        d.incr("n")
        before = d.copy()
        d["last"] = "x" * 40
    log = _log(journal_dir)
    blob = log.read_bytes()
    frames, end, problem = scan(blob, blob.index(b"\n") + 1)
    assert (end, problem) == (len(blob), "")
    start = frames[-1][0]  # the last record's first byte
    codec = resolve_codec("json")
    for size in range(start, len(blob)):
        copy = _torn_copy(journal_dir, tmp_path / f"cut-{size}", log.name, size)
        directory = Directory.open(copy, "test", create_base=False)
        try:
            replayed = replay(directory, "test", codec, "json")
        finally:
            directory.close()
        assert (replayed.data, replayed.number, replayed.log) == (before, len(frames) - 1, (log.name, start))
        assert (copy / "test.journal" / log.name).stat().st_size == start, size
    # Through a dict: it opens on the records before, goes on from there, and the next opening agrees.
    for size in (start + 3, start + 8 + 5, len(blob) - 1):  # in the frame header, in the payload, 1 short
        copy = tmp_path / f"cut-{size}"
        shutil.rmtree(copy)
        _torn_copy(journal_dir, copy, log.name, size)
        with ipchannel.SharedDict("test", appendonly=True, journal_dir=copy) as d:
            assert d.copy() == before
            d["after"] = size
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ipchannel"):
            assert _reopen(copy) == {**before, "after": size}
        assert caplog.text == ""


# -- one writer ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_two_channels_of_one_name_sharing_a_journal_dir_refuse_the_second_with_a_journal_error(
    journal_dir: Path, tmp_path: Path
) -> None:
    first = ipchannel.SharedDict(
        "test", runtime_dir=tmp_path / "one", appendonly=True, journal_dir=journal_dir
    )
    try:
        first["a"] = 1
        with pytest.raises(ipchannel.JournalError, match=f"another process \\(pid {os.getpid()}\\)"):
            ipchannel.SharedDict(
                "test", runtime_dir=tmp_path / "two", appendonly=True, journal_dir=journal_dir
            )
        first["b"] = 2  # the first goes on
    finally:
        first.close()
    assert _reopen(journal_dir, runtime_dir=tmp_path / "two") == {"a": 1, "b": 2}


# -- a forked child of the host ------------------------------------------------------------------


@pytest.fixture
def scripts() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            reap(process.pid, timeout=0)
            process.wait(5)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "_exit"])
def test_a_forked_child_of_the_host_exiting_leaves_the_journal_locked_and_written_by_the_host(
    runtime_dir: Path, journal_dir: Path, tmp_path: Path, scripts: list[subprocess.Popen[str]], how: str
) -> None:
    args = [sys.executable, str(_WRITER), "fork", "test", str(runtime_dir), str(journal_dir), how]
    process = subprocess.Popen(
        [*args, str(tmp_path / "fork")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    scripts.append(process)
    assert process.stdout is not None
    assert process.stdout.readline().split() == ["done", "0"]  # the child incremented, and exited 0
    fd = os.open(_files(journal_dir) / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # still the host's: the child closed it, never unlocked it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)
    assert _reopen(journal_dir) == {"before": 1, "child": 1, "after": 1}


# -- a frozen host ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_writers_of_a_frozen_host_time_out_and_once_it_runs_again_nothing_is_lost(
    peers: Peers, journal_dir: Path
) -> None:
    holder, writer = peers.start_dicts(2, **_ALWAYS, journal_dir=str(journal_dir), timeout=1.5)
    assert _host([holder, writer]) is holder
    writer.call("count", key="n", threads=2)
    wait_until(lambda: writer.call("copy")["items"] and writer.call("copy")["items"][0][1] > 50)
    freeze(holder.pid)
    try:
        time.sleep(3.5)  # longer than a write waits: the writers' calls raise, they do not hang
        during = writer.call("stop_count", timeout=10)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert during["errors"]
    assert {error.split(":")[0] for error in during["errors"]} == {"ChannelTimeout"}
    assert holder.call("info")["is_host"]  # frozen, not dead: nobody took its place
    writer.call("incr", key="n", times=10)  # goes on once it runs
    returned = during["returned"] + 10
    _settle(holder)  # timed-out writes still on their way may yet be applied: wait for them
    final = holder.call("copy")["items"][0][1]
    # a write that timed out may have been applied once the host ran again; none twice, none lost
    assert returned <= final <= returned + len(during["errors"])
    holder.kill()
    writer.kill()
    assert _reopen(journal_dir) == {"n": final}


# -- graceful exits ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["everysec", "no"])
def test_the_last_processes_closing_lose_nothing(peers: Peers, journal_dir: Path, policy: str) -> None:
    first, second = peers.start_dicts(2, appendonly=True, appendfsync=policy, journal_dir=str(journal_dir))
    assert _host([first, second]) is first
    second.call("incr", key="n", times=200)
    first.call("close")  # hands over: the second replays the journal and goes on
    second.call("incr", key="n", times=200)
    second.call("close")  # the last one
    first.exit()
    second.exit()
    assert _reopen(journal_dir, appendfsync=policy) == {"n": 400}


# -- a host term that wrote nothing --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_host_killed_before_it_wrote_leaves_its_successor_no_false_alarm(
    peers: Peers, journal_dir: Path, tmp_path: Path
) -> None:
    options = {**_ALWAYS, "journal_dir": str(journal_dir)}
    (first,) = peers.start_dicts(1, **options)
    first.call("fill_keys", prefix="k", times=5, size=1)
    first.kill()
    log = tmp_path / "ipchannel.log"
    second, third = peers.start_dicts(2, log=str(log), **options)  # the second replays, hosts, writes nothing
    assert _host([second, third]) is second
    second.kill()
    wait_until(lambda: third.call("info")["is_host"], timeout=10)
    assert third.call("copy")["items"] == [(f"k{i}", "x") for i in range(5)]
    third.call("fill_keys", prefix="later", times=1, size=1)
    text = log.read_text()
    assert "behind" not in text  # the journal holds all it has: no warning, no rewrite
    assert list(_files(journal_dir).glob("snapshot.*")) == []


# -- a replica cut off while frozen, the only survivor ---------------------------------------------


@pytest.mark.timeout(90)
def test_a_replica_cut_off_while_frozen_that_outlives_every_member_takes_over_from_the_journal(
    peers: Peers, journal_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "ipchannel.log"
    holder, writer, stale = peers.start_dicts(3, log=str(log), **_ALWAYS, journal_dir=str(journal_dir))
    assert _host([holder, writer, stale]) is holder
    writer.call("incr", key="n", times=10)
    stale.call("wait_position", position=writer.call("info")["position"])
    freeze(stale.pid)
    try:
        writer.call("incr", key="n", times=10)  # waits max_lag (2 s) for the stale one, then cuts it off
        wait_until(lambda: "did not confirm" in log.read_text())
        writer.call("incr", key="n", times=100)
        holder.kill()  # every member is gone; the stale replica holds 10 of the 120 acknowledged
        writer.kill()
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    wait_until(lambda: stale.call("info")["is_host"], timeout=20)
    # it hosts from the journal, not from its replica; and its replica, which reads answer from, catches up
    wait_until(lambda: stale.call("copy")["items"] == [("n", 120)])
    assert stale.call("incr", key="n", times=1)["results"] == [121]
    stale.kill()
    assert _reopen(journal_dir) == {"n": 121}
