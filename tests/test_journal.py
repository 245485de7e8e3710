"""A durable SharedDict (``appendonly=True``): its state outlives every process, damage, a full disk.

Real processes (``peers.start_dicts``), real files: the journal is damaged by hand as a crash
or a disk would damage it, and a full disk is a real, small tmpfs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import reap, wait_until

import ipchannel
from ipchannel import JournalError, SharedDict
from ipchannel._shareddict import journal as journal_module
from ipchannel._shareddict.journal_files import parse_header, scan

if TYPE_CHECKING:
    from conftest import Peers

NAME = "jd"


def _durable(journal_dir: Path, policy: str = "always") -> dict[str, Any]:
    return {"appendonly": True, "appendfsync": policy, "journal_dir": str(journal_dir)}


def _items(peers: Peers, **options: Any) -> dict[str, Any]:
    """Open the dict in a new process and return what it holds."""
    (reader,) = peers.start_dicts(1, NAME, **options)
    items = dict(reader.call("copy")["items"])
    reader.exit()
    return items


def _frames(log: Path) -> list[tuple[int, bytes]]:
    blob = log.read_bytes()
    parsed = parse_header(blob)
    assert parsed is not None
    frames, end, problem = scan(blob, parsed[1])
    assert (end, problem) == (len(blob), "")
    return frames


# -- options -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("runtime_dir")
def test_bad_options_are_refused_naming_the_option_and_the_rule(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="appendonly must be True or False, not str"):
        SharedDict(NAME, appendonly="yes")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"appendfsync must be one of 'always', 'everysec', 'no', not 'sometimes'"
    ):
        SharedDict(NAME, appendonly=True, appendfsync="sometimes")
    with pytest.raises(TypeError, match="appendfsync must be one of"):
        SharedDict(NAME, appendonly=True, appendfsync=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"appendfsync applies only with appendonly=True"):
        SharedDict(NAME, appendfsync="always")
    with pytest.raises(ValueError, match=r"journal_dir applies only with appendonly=True"):
        SharedDict(NAME, journal_dir=str(tmp_path))
    with pytest.raises(TypeError, match=r"journal_dir must be a str or os\.PathLike path"):
        SharedDict(NAME, appendonly=True, journal_dir=b"/tmp")  # type: ignore[arg-type]


@pytest.mark.usefixtures("runtime_dir")
def test_a_durable_dict_across_machines_is_refused_with_the_reason() -> None:
    # A journal on one machine cannot serve a next host elected on another.
    with pytest.raises(ValueError, match="for processes on one machine") as caught:
        SharedDict(NAME, appendonly=True, coordinator="redis://127.0.0.1:1/0", authkey=b"k" * 32)
    assert "coordinator" in str(caught.value)


def test_processes_that_disagree_on_appendonly_are_refused(peers: Peers, tmp_path: Path) -> None:
    (host,) = peers.start_dicts(1, NAME, **_durable(tmp_path))
    host.call("incr", key="n", times=1)
    with pytest.raises(ValueError, match="every process must open a dict with the same appendonly"):
        SharedDict(NAME, timeout=5)


# -- what survives -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
def test_the_state_survives_every_process_exiting(peers: Peers, tmp_path: Path, policy: str) -> None:
    options = _durable(tmp_path, policy)
    a, b = peers.start_dicts(2, NAME, **options)
    a.call("incr", key="n", times=10)
    b.call("fill_keys", prefix="k", times=3, size=4)
    a.exit()  # one of them hosts: the other takes over, then goes too
    b.exit()
    assert _items(peers, **options) == {"n": 10, "k0": "xxxx", "k1": "xxxx", "k2": "xxxx"}
    (killed,) = peers.start_dicts(1, NAME, **options)
    killed.call("incr", key="n", times=5)
    killed.kill()  # SIGKILL: the kernel still has every write, whatever the policy
    assert _items(peers, **options)["n"] == 15


def test_without_appendonly_the_last_process_to_close_takes_the_state_along(peers: Peers) -> None:
    # The default stays as documented: state lives only in the processes' memory.
    (a,) = peers.start_dicts(1, NAME)
    a.call("incr", key="n", times=10)
    a.exit()
    assert _items(peers) == {}


def test_a_new_host_replays_the_journal_while_others_keep_their_replicas(
    peers: Peers, tmp_path: Path
) -> None:
    options = _durable(tmp_path)
    group = peers.start_dicts(3, NAME, **options)
    for peer in group:
        peer.call("incr", key="n", times=20)
    host = peers.host(group)
    host.kill()
    others = [peer for peer in group if peer is not host]
    results = [peer.call("incr", key="n", times=1)["results"][0] for peer in others]
    assert sorted(results) == [61, 62]  # nothing lost, nothing applied twice
    for peer in others:
        peer.kill()
    assert _items(peers, **options)["n"] == 62


# -- damage --------------------------------------------------------------------------------------


def test_a_torn_tail_is_cut_with_a_warning_and_kept_aside(peers: Peers, tmp_path: Path) -> None:
    options = _durable(tmp_path / "j")
    (writer,) = peers.start_dicts(1, NAME, **options)
    writer.call("incr", key="n", times=20)  # one record per write: one writer, one at a time
    writer.kill()
    log = tmp_path / "j" / f"{NAME}.journal" / "log.1"
    frames = _frames(log)
    assert len(frames) == 21  # the empty record opening the term, then one per write
    torn = log.read_bytes()[frames[-1][0] : -5]
    with log.open("r+b") as file:  # a crash halfway through writing the last record
        file.truncate(log.stat().st_size - 5)
    messages = tmp_path / "reader.log"
    (reader,) = peers.start_dicts(1, NAME, log=str(messages), **options)
    assert dict(reader.call("copy")["items"]) == {"n": 19}
    text = messages.read_text()
    assert "WARNING" in text
    assert "a torn frame" in text
    assert "dropped every record from number 21 on" in text
    (kept,) = (tmp_path / "j" / f"{NAME}.journal").glob("log.1.dropped-*")
    assert kept.read_bytes() == torn  # the torn record, not destroyed
    assert reader.call("incr", key="n", times=1)["results"] == [20]  # the log goes on after the cut
    reader.kill()
    assert _items(peers, **options) == {"n": 20}


def test_a_flipped_byte_cuts_the_log_at_the_damaged_record(peers: Peers, tmp_path: Path) -> None:
    options = _durable(tmp_path / "j")
    (writer,) = peers.start_dicts(1, NAME, **options)
    for i in range(20):
        writer.call("set_then_get", key=f"k{i}", value=i)
    writer.kill()
    log = tmp_path / "j" / f"{NAME}.journal" / "log.1"
    offset, payload = _frames(log)[10]  # record 11, the tenth write (record 1 opens the term)
    blob = bytearray(log.read_bytes())
    blob[offset + 8 + len(payload) // 2] ^= 0x10  # one bit, inside the payload: the checksum catches it
    log.write_bytes(bytes(blob))
    messages = tmp_path / "reader.log"
    (reader,) = peers.start_dicts(1, NAME, log=str(messages), **options)
    assert dict(reader.call("copy")["items"]) == {f"k{i}": i for i in range(9)}
    text = messages.read_text()
    assert "checksum does not match" in text
    assert f"at byte {offset} of log.1" in text
    assert "dropped every record from number 11 on" in text
    (kept,) = (tmp_path / "j" / f"{NAME}.journal").glob("log.1.dropped-*")
    assert kept.read_bytes() == bytes(blob[offset:])


@pytest.mark.usefixtures("runtime_dir")
def test_a_damaged_snapshot_is_refused_not_half_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 2048)
    options = _durable(tmp_path)
    with SharedDict(NAME, **options) as d:
        for i in range(200):
            d[f"k{i}"] = "x" * 20
        directory = tmp_path / f"{NAME}.journal"
        wait_until(lambda: list(directory.glob("snapshot.*")))
    (snapshot,) = directory.glob("snapshot.*")
    blob = bytearray(snapshot.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    snapshot.write_bytes(bytes(blob))
    with pytest.raises(JournalError, match="is damaged") as caught:
        SharedDict(NAME, **options)
    assert str(snapshot) in str(caught.value)
    assert "restore the file from a backup" in str(caught.value)


@pytest.mark.usefixtures("runtime_dir")
def test_compaction_keeps_the_state_and_bounds_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 4096)
    options = _durable(tmp_path)
    directory = tmp_path / f"{NAME}.journal"
    with SharedDict(NAME, **options) as d:
        for i in range(2000):
            d.incr(f"k{i % 10}")
        wait_until(lambda: len(list(directory.glob("snapshot.*"))) == 1)
        size = sum(file.stat().st_size for file in directory.iterdir())
    assert size < 3 * 4096  # 2,000 records of ~60 bytes each: compacted
    with SharedDict(NAME, **options) as d:
        assert d.copy() == {f"k{i}": 200 for i in range(10)}


# -- one writer ------------------------------------------------------------------------------------


def test_two_dicts_of_one_name_cannot_share_a_journal(peers: Peers, tmp_path: Path) -> None:
    options = _durable(tmp_path / "j")
    (first,) = peers.start_dicts(1, NAME, **options)
    first.call("incr", key="n", times=1)
    other_runtime = Path(tempfile.mkdtemp(prefix="ipc-", dir="/tmp"))  # another channel, same journal
    try:
        with pytest.raises(JournalError, match=rf"is being written by another process \(pid {first.pid}\)"):
            SharedDict(NAME, runtime_dir=other_runtime, **options)
    finally:
        shutil.rmtree(other_runtime, ignore_errors=True)


def _journal_fds(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
# The fork is the point (as gunicorn --preload forks its master); the child only looks and _exits.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.usefixtures("runtime_dir")
def test_a_forked_child_drops_the_journal_and_the_parent_keeps_it(tmp_path: Path) -> None:
    options = _durable(tmp_path)
    directory = tmp_path / f"{NAME}.journal"
    with SharedDict(NAME, **options) as d:
        d["before"] = 1
        assert _journal_fds(directory)  # the host holds its journal open
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: what the at-fork hook left open
            os.write(write, repr(_journal_fds(directory)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            assert pipe.read() == "[]"
        reap(pid)
        lock = os.open(directory / "lock", os.O_RDWR)
        try:  # the child's exit let go of nothing: the parent still holds the journal
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)
        d["after"] = 2
    with SharedDict(NAME, **options) as d:
        assert d.copy() == {"before": 1, "after": 2}


# -- a full disk -----------------------------------------------------------------------------------

_FULL_DISK = """
import errno, logging, os, subprocess, sys
logging.basicConfig(level=logging.ERROR)
mount, runtime = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mount], check=True)
from ipchannel import JournalError, SharedDict
with open(os.path.join(mount, "filler"), "wb") as filler:  # room made later by removing it
    filler.write(b"f" * 64 * 1024)
d = SharedDict("full", runtime_dir=runtime, appendonly=True, appendfsync="always", journal_dir=mount)
acknowledged = []
for i in range(100):
    try:
        d[f"k{i}"] = "v" * 16 * 1024
    except JournalError as exc:
        assert exc.errno == errno.ENOSPC, exc
        assert "No space left on device" in str(exc) and "applied nowhere" in str(exc), exc
        refused = f"k{i}"
        break
    acknowledged.append(f"k{i}")
else:
    raise AssertionError("the disk never filled")
assert refused not in d and d.get(refused) is None  # applied nowhere, not even in memory
assert all(len(d[key]) == 16 * 1024 for key in acknowledged)  # reads go on
os.remove(os.path.join(mount, "filler"))
d[refused] = "again"  # room again: writes go on by themselves
d.close()
with SharedDict("full", runtime_dir=runtime, appendonly=True, appendfsync="always", journal_dir=mount) as d:
    assert sorted(d) == sorted([*acknowledged, refused]), sorted(d)
    assert d[refused] == "again"
print("ok", len(acknowledged))
"""


def _mount_namespace() -> list[str] | None:
    """Return the command prefix that runs a process in a mount namespace of its own, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--mount"] if os.geteuid() == 0 else [unshare, "--map-root-user", "--mount"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    return prefix if probe.returncode == 0 else None


@pytest.mark.timeout(60)
def test_a_full_disk_refuses_writes_applied_nowhere_and_reads_go_on(tmp_path: Path) -> None:
    prefix = _mount_namespace()
    if prefix is None:
        pytest.skip("needs unshare --mount (root, or unprivileged user namespaces) for a small tmpfs")
    mount, runtime = tmp_path / "disk", tmp_path / "rt"
    mount.mkdir()
    result = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(_FULL_DISK), str(mount), str(runtime)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) >= 5  # the disk filled after some writes, not at once


def test_errors_are_ipchannel_errors_and_oserrors() -> None:
    error = JournalError(
        "/j", "cannot append to the log: No space left on device", "free space", errno.ENOSPC
    )
    assert isinstance(error, ipchannel.ChannelError)
    assert isinstance(error, OSError)
    assert error.errno == errno.ENOSPC
    assert str(error) == "journal /j: cannot append to the log: No space left on device; free space"
    import pickle  # noqa: PLC0415

    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # noqa: S301 - our own bytes
