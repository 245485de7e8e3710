"""The Channel API in this process, against real peer processes where a second process is needed."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import _peers
import pytest
from conftest import Peers, reap, wait_until

import ipchannel
from ipchannel import _hooks
from ipchannel._core.connect import Connector
from ipchannel._core.server import IDLE_THREADS, READY_THREADS, Server
from ipchannel._local.coordinator import read_record, write_record
from ipchannel._seams.record import HostRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def channel(runtime_dir: Path) -> Iterator[ipchannel.Channel]:  # noqa: ARG001 - sets IPCHANNEL_DIR
    ch = ipchannel.Channel("test", _peers.echo_handler)
    try:
        yield ch
    finally:
        ch.close()


def _ipc_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("ipchannel-"))


def _state(channel: ipchannel.Channel) -> str:
    return channel.state  # through a call, so the checker does not narrow it between steps


def test_lifecycle_state_threads_and_files(channel: ipchannel.Channel, runtime_dir: Path) -> None:
    assert _state(channel) == "initiated"
    assert not channel.connected
    assert channel.host_pid is None
    assert os.listdir(runtime_dir) == []  # nothing is created before the first connect()
    sock = channel.connect()
    assert isinstance(sock, socket.socket)
    assert _state(channel) == "connected"
    assert channel.connected
    assert channel.is_host
    assert channel.host_pid == os.getpid()
    # the host's own connection starts a handler thread; the ready ones start after it, off the election
    threads = ["ipchannel-handler:test"] * (READY_THREADS + 1) + [
        "ipchannel-monitor:test",
        "ipchannel-server:test",
    ]
    wait_until(lambda: _ipc_threads() == threads)
    assert sorted(os.listdir(runtime_dir)) == ["test.host", "test.lock", "test.sock"]
    assert stat.S_IMODE(os.stat(runtime_dir / "test.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    record = read_record(runtime_dir / "test.host")
    assert record is not None
    assert (record.pid, record.generation) == (os.getpid(), 1)
    channel.close()
    channel.close()  # idempotent
    assert _state(channel) == "closed"
    assert not channel.is_host
    assert os.listdir(runtime_dir) == ["test.lock"]
    wait_until(lambda: _ipc_threads() == [])
    with pytest.raises(ipchannel.ChannelClosed, match="is closed"):
        channel.connect()
    with pytest.raises(ipchannel.ChannelClosed):
        sock.recv(10)
    with pytest.raises(ipchannel.ChannelClosed):
        sock.sendall(b"x\n")


@pytest.mark.usefixtures("runtime_dir")
def test_handler_threads_wait_ready_and_grow_on_demand() -> None:
    served_by: list[int] = []

    def handler(conn: socket.socket) -> None:
        served_by.append(threading.get_ident())
        conn.sendall(b"x")
        conn.recv(1)  # until the client closes

    def handler_threads() -> int:
        return sum(t.name == "ipchannel-handler:pool" for t in threading.enumerate())

    with ipchannel.Channel("pool", handler) as channel:
        first = [channel.connect() for _ in range(IDLE_THREADS + 4)]
        assert [sock.recv(1) for sock in first] == [b"x"] * len(first)
        assert len(set(served_by)) == len(first)  # the ready threads, then one new thread per connection
        assert handler_threads() == len(first)
        for sock in first:
            sock.close()
        wait_until(lambda: handler_threads() == IDLE_THREADS)  # the others exit, the rest wait ready
        again = channel.connect()
        assert again.recv(1) == b"x"
        assert served_by[-1] in served_by[: len(first)]  # an idle thread took it: none was started
        assert handler_threads() == IDLE_THREADS
        again.close()
    wait_until(lambda: handler_threads() == 0)  # close() ends the idle ones too


@pytest.mark.usefixtures("runtime_dir")
def test_context_manager_and_open_channel() -> None:
    with ipchannel.open_channel(_peers.echo_handler) as ch:
        assert ch.name == "ipchannel"
        sock = ch.connect()
        sock.sendall(b"a\n")
        assert _peers.read_line(sock) == f"{os.getpid()} a\n".encode()
    assert ch.state == "closed"
    with ipchannel.open_channel("named", _peers.echo_handler) as ch2:
        assert ch2.name == "named"


def test_each_connect_is_a_new_independent_connection(channel: ipchannel.Channel) -> None:
    a, b = channel.connect(), channel.connect()
    assert a.fileno() != b.fileno()
    a.sendall(b"to a\n")
    b.sendall(b"to b\n")
    assert _peers.read_line(b) == f"{os.getpid()} to b\n".encode()
    assert _peers.read_line(a) == f"{os.getpid()} to a\n".encode()
    a.close()
    b.sendall(b"still\n")
    assert _peers.read_line(b).endswith(b"still\n")


def test_socket_works_with_makefile_selectors_and_timeouts(channel: ipchannel.Channel) -> None:
    sock = channel.connect()
    with sock.makefile("rwb") as stream:
        stream.write(b"via file\n")
        stream.flush()
        assert stream.readline() == f"{os.getpid()} via file\n".encode()
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        assert sel.select(0) == []
        sock.sendall(b"ping\n")
        assert sel.select(5)
    assert _peers.read_line(sock).endswith(b"ping\n")
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(10)


class _UpperHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


@pytest.mark.usefixtures("runtime_dir")
def test_base_request_handler_subclass_is_used_as_is() -> None:
    with ipchannel.Channel("upper", _UpperHandler) as ch:
        sock = ch.connect()
        sock.sendall(b"hello\n")
        assert _peers.read_line(sock) == b"HELLO\n"


@pytest.mark.parametrize("handler", [42, "echo", None, int, object])
def test_bad_handler_is_a_type_error(runtime_dir: Path, handler: object) -> None:
    with pytest.raises(TypeError, match=r"handler.*(callable|BaseRequestHandler)"):
        ipchannel.Channel("x", handler)  # type: ignore[arg-type]
    assert os.listdir(runtime_dir) == []


@pytest.mark.parametrize("name", ["", ".x", "a/b", "x" * 65])
def test_bad_name_is_a_value_error_and_writes_nothing(runtime_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        ipchannel.Channel(name, _peers.echo_handler)
    assert os.listdir(runtime_dir) == []


@pytest.mark.usefixtures("runtime_dir")
def test_bad_auto_reconnect_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="auto_reconnect must be a bool"):
        ipchannel.Channel("x", _peers.echo_handler, auto_reconnect="yes")  # type: ignore[arg-type]


def test_bad_timeouts_leave_the_channel_usable(channel: ipchannel.Channel) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        channel.connect(timeout=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        channel.connect(timeout="5")  # type: ignore[arg-type]
    assert channel.state == "initiated"
    sock = channel.connect(timeout=0)  # zero: one attempt, and the lock is free
    sock.sendall(b"ok\n")
    assert _peers.read_line(sock).endswith(b"ok\n")


def _assert_refused(path: Path, match: str) -> None:
    with pytest.raises(ipchannel.RuntimeDirError, match=match) as info:
        ipchannel.Channel("x", _peers.echo_handler, runtime_dir=path)
    assert isinstance(info.value, ipchannel.ChannelError)
    assert info.value.path == str(path)


def test_runtime_dir_is_created_private(runtime_dir: Path) -> None:
    fresh = runtime_dir / "fresh"
    with ipchannel.Channel("x", _peers.echo_handler, runtime_dir=fresh):
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_runtime_dir_that_cannot_be_created(runtime_dir: Path) -> None:
    _assert_refused(runtime_dir / "missing" / "child", "cannot be created: its parent")


def test_runtime_dir_that_is_a_file(runtime_dir: Path) -> None:
    (runtime_dir / "file").write_text("")
    _assert_refused(runtime_dir / "file", "is not a directory")


def test_runtime_dir_that_is_a_symlink(runtime_dir: Path) -> None:
    (runtime_dir / "real").mkdir(mode=0o700)
    (runtime_dir / "link").symlink_to(runtime_dir / "real")
    _assert_refused(runtime_dir / "link", "is a symlink")
    assert os.listdir(runtime_dir / "real") == []


def test_runtime_dir_writable_by_others(runtime_dir: Path) -> None:
    (runtime_dir / "open").mkdir()
    (runtime_dir / "open").chmod(0o777)
    _assert_refused(runtime_dir / "open", r"writable by group or others \(mode 0777\); pass runtime_dir=")
    assert os.listdir(runtime_dir / "open") == []


def test_a_shared_sticky_directory_is_refused_without_advice_to_chmod_it(runtime_dir: Path) -> None:
    shared = runtime_dir / "tmp"  # as /tmp: mode 1777
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ipchannel.RuntimeDirError) as info:
        ipchannel.Channel("x", _peers.echo_handler, runtime_dir=shared)
    text = str(info.value)
    assert "chmod" not in text  # never advise opening or closing a directory others share
    private = shared / f"ipchannel-{os.geteuid()}"
    assert f"use a private subdirectory instead, such as {private}" in text
    assert os.listdir(shared) == []
    ipchannel.Channel("x", _peers.echo_handler, runtime_dir=private).close()  # the advice works
    assert private.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_runtime_dir_owned_by_someone_else(runtime_dir: Path) -> None:
    (runtime_dir / "theirs").mkdir(mode=0o700)
    os.chown(runtime_dir / "theirs", 65534, 65534)
    _assert_refused(runtime_dir / "theirs", "is owned by uid 65534, not by you")


def test_runtime_dir_environment_variable(runtime_dir: Path) -> None:
    ch = ipchannel.Channel("x", _peers.echo_handler)
    assert ch.runtime_dir == runtime_dir
    ch.close()


def test_long_names_in_a_long_directory_get_a_hashed_socket(runtime_dir: Path) -> None:
    deep = runtime_dir / ("d" * (80 - len(str(runtime_dir))))
    with ipchannel.Channel("n" * 64, _peers.echo_handler, runtime_dir=deep) as ch:
        sock = ch.connect()
        sock.sendall(b"long\n")
        assert _peers.read_line(sock).endswith(b"long\n")


def test_stale_record_and_socket_from_a_killed_host_do_not_block(runtime_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime_dir / "test.sock"))  # a socket file nobody listens on
    stale.close()
    write_record(
        runtime_dir / "test.host", HostRecord(2**22 + 7, 1.0, str(runtime_dir / "test.sock"), 41, 0.0)
    )
    with ipchannel.Channel("test", _peers.echo_handler) as ch:
        sock = ch.connect(timeout=2)
        assert ch.is_host
        assert ch.generation == 42
        sock.sendall(b"x\n")
        assert _peers.read_line(sock) == f"{os.getpid()} x\n".encode()


@pytest.mark.timeout(30)
def test_close_removes_the_private_sockets_of_processes_that_died_meanwhile(runtime_dir: Path) -> None:
    """A standby SIGKILLed while the next one was starting may not count as gone yet when that one
    tidies up (its lock is free a moment before it is a zombie): a closing channel tidies again."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with ipchannel.Channel("test", _peers.echo_handler) as ch:
            ch.connect(timeout=2)
            assert ch.is_host  # it has listened (and tidied) already: these come later
            left = [runtime_dir / f".test.{pid}.sock" for pid in (dead.pid, alive.pid)]
            left += [runtime_dir / f".test_{pid}.sock" for pid in (dead.pid, alive.pid)]
            for path in left:
                path.touch()
        remaining = sorted(p.name for p in runtime_dir.glob(".test*.sock"))
        assert remaining == sorted([f".test.{alive.pid}.sock", f".test_{alive.pid}.sock"])  # the live one's
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.timeout(60)
def test_closing_a_channel_leaves_the_standby_files_of_another_of_its_name_in_this_process(
    peers: Peers, runtime_dir: Path
) -> None:
    (host,) = peers.start(1)
    host.call("connect")  # it hosts; a channel of this process stands by
    group = [ipchannel.Channel("test", _peers.echo_handler) for _ in range(2)]
    try:
        for ch in group:
            ch.connect(timeout=5).close()
        (standby,) = wait_until(lambda: [ch for ch in group if ch._hosting.standing_by])  # noqa: SLF001
        (other,) = [ch for ch in group if ch is not standby]
        files = [runtime_dir / f".test.{os.getpid()}.sock", runtime_dir / f".test_{os.getpid()}.sock"]
        assert all(path.exists() for path in files)  # its server's socket, its side socket
        other.close()
        assert [path for path in files if not path.exists()] == []  # before the fix: both removed
        assert standby._hosting.standing_by  # noqa: SLF001
        host.kill()
        wait_until(lambda: standby.is_host)
        sock = standby.connect(timeout=5)
        sock.sendall(b"x\n")
        assert _peers.read_line(sock) == f"{os.getpid()} x\n".encode()
        assert standby.generation == 2  # it took over through its standby server, at the first try
    finally:
        for ch in group:
            ch.close()


def test_record_of_a_reused_pid_does_not_block(runtime_dir: Path) -> None:
    # A live, unrelated process has the recorded pid, with another create time.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime_dir / "test.sock"))
    stale.close()
    write_record(
        runtime_dir / "test.host", HostRecord(os.getppid(), 12345.0, str(runtime_dir / "test.sock"), 3, 0.0)
    )
    with ipchannel.Channel("test", _peers.echo_handler) as ch:
        ch.connect(timeout=2)
        assert ch.is_host
        assert ch.generation == 4


def test_garbage_record_does_not_block(runtime_dir: Path) -> None:
    (runtime_dir / "test.host").write_bytes(b"\x00garbage{")
    with ipchannel.Channel("test", _peers.echo_handler) as ch:
        ch.connect(timeout=2)
        assert ch.is_host
        assert ch.generation == 1


def test_this_process_follows_a_killed_host(peers: Peers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ipchannel")
    (host,) = peers.start(1)
    host.call("connect")
    with ipchannel.Channel("test", _peers.echo_handler) as ch:
        sock = ch.connect(timeout=5)
        assert not ch.is_host
        assert ch.host_pid == host.pid
        sock.sendall(b"one\n")
        assert _peers.read_line(sock) == f"{host.pid} one\n".encode()
        # a recv blocked on the host when it dies raises HostChanged, already reconnected
        errors: list[BaseException] = []

        def blocked_recv() -> None:
            try:
                sock.recv(100)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        reader = threading.Thread(target=blocked_recv)
        reader.start()
        time.sleep(0.05)  # let the reader block in recv (the assertion below holds either way)
        host.kill()
        reader.join(5)
        assert not reader.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], ipchannel.HostChanged)
        assert isinstance(errors[0], ConnectionResetError)
        assert (errors[0].old_generation, errors[0].new_generation) == (1, 2)
        assert ch.is_host  # the only process left
        sock.sendall(b"two\n")  # the same socket object now talks to the new host
        assert _peers.read_line(sock) == f"{os.getpid()} two\n".encode()
    messages = caplog.text
    assert f"host pid {host.pid} (generation 1) lost" in messages
    assert f"pid {os.getpid()} elected host (generation 2" in messages
    assert "socket reconnected to host pid" in messages


def test_sendall_to_a_dead_host_is_delivered_to_the_new_one(peers: Peers) -> None:
    (host,) = peers.start(1)
    host.call("connect")
    with ipchannel.Channel("test", _peers.echo_handler) as ch:
        sock = ch.connect()
        fileno = sock.fileno()
        host.kill()
        sock.sendall(b"after death\n")  # no error: delivered once a new host is up
        assert _peers.read_line(sock) == f"{os.getpid()} after death\n".encode()
        assert sock.fileno() == fileno


def test_no_host_within_timeout_names_the_lock_holder_then_recovers(
    peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    (host,) = peers.start(1)
    host.call("connect")
    sleeper = host.call("leak_lock")["sleeper"]  # inherits the host's lock, then outlives it
    try:
        with ipchannel.Channel("test", _peers.echo_handler) as ch:
            sock = ch.connect(timeout=0.5)
            host.kill()
            start = time.monotonic()
            with pytest.raises(ipchannel.ChannelTimeout) as info:
                sock.sendall(b"x\n")
            assert 0.4 < time.monotonic() - start < 3
            assert isinstance(info.value, TimeoutError)
            assert info.value.last_host_pid == host.pid
            assert f"held by pid(s) [{sleeper}]" in str(info.value)
            # the monitor says so too, once
            wait_until(lambda: f"held by pid(s) [{sleeper}]" in caplog.text, timeout=5)
            os.kill(sleeper, signal.SIGKILL)
            reap(sleeper)
            sock.sendall(b"back\n")  # the channel and the socket are still usable
            assert _peers.read_line(sock) == f"{os.getpid()} back\n".encode()
            assert ch.is_host
    finally:
        reap(sleeper, timeout=0)


def test_monitor_restarts_a_dead_server_thread(
    channel: ipchannel.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    channel.connect()
    term = channel._hosting.term  # noqa: SLF001
    assert term is not None
    server = term[0]
    assert isinstance(server, Server)
    first = server._thread  # noqa: SLF001
    assert first is not None

    def boom() -> None:
        del server._server.service_actions  # noqa: SLF001 - fail once, then behave
        raise RuntimeError("injected fault")

    server._server.service_actions = boom  # type: ignore[method-assign]  # noqa: SLF001
    channel.connect()  # a request makes serve_forever go round its loop
    first.join(5)
    assert not first.is_alive()

    def restarted() -> bool:
        thread = server._thread  # noqa: SLF001
        return thread is not None and thread is not first and thread.is_alive()

    wait_until(restarted)
    sock = channel.connect()
    sock.sendall(b"alive\n")
    assert _peers.read_line(sock).endswith(b"alive\n")
    assert "server thread had died; restarting it" in caplog.text


def test_close_from_another_thread_interrupts_a_waiting_connect(peers: Peers) -> None:
    (host,) = peers.start(1)
    host.call("connect")
    sleeper = host.call("leak_lock")["sleeper"]
    host.kill()  # the lock stays held by the sleeper: nobody can host
    try:
        ch = ipchannel.Channel("test", _peers.echo_handler)
        errors: list[BaseException] = []

        def waiting_connect() -> None:
            try:
                ch.connect(timeout=None)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        waiter = threading.Thread(target=waiting_connect)
        waiter.start()
        wait_until(lambda: ch.state == "connecting")
        ch.close()
        waiter.join(5)
        assert not waiter.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], ipchannel.ChannelClosed)
    finally:
        reap(sleeper, timeout=0)


def _closed_while_held(
    ch: ipchannel.Channel, step: Callable[[], object], held: threading.Event, closed: threading.Event
) -> object:
    """Run ``step`` on a thread until a hook holds it (``held``), close ``ch``, then let it go on.

    Returns what ``step`` returned or raised.
    """
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(step())
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert held.wait(10), f"the step was never held: {outcome}"
    finally:
        ch.close()
        closed.set()
        thread.join(10)
    assert len(outcome) == 1
    return outcome[0]


def test_a_connect_that_overlaps_close_returns_no_socket_and_leaves_none_open(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # connect() checks the channel's phase, then makes its socket: close() in between told every
    # socket of the channel to close, but not this one, which stayed open with nobody to close it
    (host,) = peers.start(1)
    host.call("connect")
    made, closed = threading.Event(), threading.Event()

    def hold(point: str, detail: object) -> None:  # noqa: ARG001 - on the connecting thread
        if point == "channel.connected":
            made.set()
            closed.wait(10)

    monkeypatch.setattr(_hooks, "pause", hold)
    ch = ipchannel.Channel("test", _peers.echo_handler)
    result = _closed_while_held(ch, lambda: ch.connect(timeout=5), made, closed)
    if isinstance(result, socket.socket):
        result.close()
    assert isinstance(result, ipchannel.ChannelClosed), f"connect() returned {result!r}"


def test_a_socket_moving_to_the_next_host_as_the_channel_closes_raises_channel_closed(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the channel closed the socket while it found the next host; it then dup2-ed the new
    # connection onto the closed descriptor: "Bad file descriptor", or, if the number was taken
    # again meanwhile, the connection put in place of whatever had it (a file, another socket)
    a, b = peers.start(2)
    a.call("connect")
    b.call("connect")
    first_host = peers.host([a, b])
    ch = ipchannel.Channel("test", _peers.echo_handler, may_host=False)
    sock = ch.connect(timeout=5)
    sock.sendall(b"hi\n")
    assert _peers.read_line(sock).endswith(b"hi\n")
    recover = Connector.recover
    found, closed = threading.Event(), threading.Event()

    def found_then_held(self: Connector, *args: Any) -> Any:  # on the writing thread
        result = recover(self, *args)
        found.set()
        closed.wait(10)
        return result

    monkeypatch.setattr(Connector, "recover", found_then_held)

    def writing() -> str:
        while not found.is_set():
            sock.sendall(b"x\n")
            time.sleep(0.01)
        sock.sendall(b"x\n")
        return "sent"

    first_host.kill()
    try:
        result = _closed_while_held(ch, writing, found, closed)
    finally:
        sock.close()
    assert isinstance(result, ipchannel.ChannelClosed), f"the write ended with {result!r}"


_CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"let me in\\n")
print(repr(s.recv(100)), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_peer_with_another_uid_is_refused(
    channel: ipchannel.Channel, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    channel.connect()
    # Open the door on purpose (the directory is 0700, the socket 0600): the uid check must still hold.
    runtime_dir.chmod(0o711)
    (runtime_dir / "test.sock").chmod(0o666)
    result = subprocess.run(
        [sys.executable, "-c", _CONNECT_AS_NOBODY, str(runtime_dir / "test.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # refused: EOF, or a reset/broken pipe if the refusal lands before the client's write
    refused = ("ConnectionResetError", "BrokenPipeError")
    assert result.stdout.strip() == "b''" or any(r in result.stderr for r in refused), result
    assert "refused a connection from uid 65534" in caplog.text
    sock = channel.connect()  # the host keeps serving its own user
    sock.sendall(b"me\n")
    assert _peers.read_line(sock) == f"{os.getpid()} me\n".encode()


def _blocked_signals(native_id: int) -> int:
    for line in Path(f"/proc/self/task/{native_id}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc/self/task")
def test_library_threads_leave_signals_to_the_application(channel: ipchannel.Channel) -> None:
    # Otherwise the kernel may hand SIGTERM to one of our threads while the main thread sleeps in a read,
    # and the application's handler never runs (seen: a SIGTERMed host that did not exit).
    sock = channel.connect()
    sock.sendall(b"x\n")
    _peers.read_line(sock)
    # the ready handler threads start after the first connection: each is looked at once it runs
    wait_until(lambda: _ipc_threads().count("ipchannel-handler:test") == READY_THREADS + 1)
    ours = [t for t in threading.enumerate() if t.name.startswith("ipchannel-")]
    wait_until(lambda: all(t.native_id is not None for t in ours))
    assert {t.name.split(":")[0] for t in ours} == {
        "ipchannel-monitor",
        "ipchannel-server",
        "ipchannel-handler",
    }
    sigterm = 1 << (signal.SIGTERM - 1)
    for thread in ours:
        assert thread.native_id is not None
        assert _blocked_signals(thread.native_id) & sigterm, thread.name
    assert not _blocked_signals(threading.main_thread().native_id or 0) & sigterm


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc/self/task")
def test_threads_of_a_host_elected_by_its_monitor_leave_signals_to_the_application(
    channel: ipchannel.Channel, peers: Peers
) -> None:
    # The monitor starts the server thread here, and that one its handler threads: each inherits the
    # mask of the thread that started it (leave_signals_to_the_application(inherited=True)).
    host = peers.start(1)[0]
    host.call("connect")
    channel.connect()
    assert channel.host_pid == host.pid
    host.kill()
    wait_until(lambda: channel.is_host, timeout=10)
    sock = channel.connect()
    sock.sendall(b"x\n")
    _peers.read_line(sock)
    ours = [t for t in threading.enumerate() if t.name.startswith(("ipchannel-server", "ipchannel-handler"))]
    wait_until(lambda: all(t.native_id is not None for t in ours))  # ready threads start after a connection
    assert {t.name.split(":")[0] for t in ours} == {"ipchannel-server", "ipchannel-handler"}
    sigterm = 1 << (signal.SIGTERM - 1)
    for thread in ours:
        assert thread.native_id is not None
        assert _blocked_signals(thread.native_id) & sigterm, thread.name


# -- what the refactoring into seams must keep (each test failed on a first version of it) ----------


def test_a_closed_channel_knows_no_host(channel: ipchannel.Channel, peers: Peers) -> None:
    host = peers.start(1)[0]
    host.call("connect")
    channel.connect()
    assert channel.host_pid == host.pid
    channel.close()
    assert channel.host_pid is None
    assert channel.generation is None
    assert "host_pid" not in repr(channel)


def test_a_closing_host_answers_nothing_from_the_moment_close_begins(
    channel: ipchannel.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipchannel._core.monitor import Monitor  # noqa: PLC0415 - to hold close() at its first step
    from ipchannel._core.port import port_of  # noqa: PLC0415 - the host side's own question

    channel.connect()
    assert channel.is_host
    may_serve = port_of(channel).may_serve
    assert may_serve()
    joining, release = threading.Event(), threading.Event()
    join = Monitor.join

    def slow_join(self: Monitor) -> None:
        joining.set()
        release.wait(10)
        join(self)

    monkeypatch.setattr(Monitor, "join", slow_join)
    closer = threading.Thread(target=channel.close)
    closer.start()
    try:
        assert joining.wait(10)
        assert channel.is_host  # it has not resigned yet...
        assert not may_serve()  # ...but a request answered now would be lost with the handover
    finally:
        release.set()
        closer.join(10)


def test_a_handler_sees_a_socketserver_server(runtime_dir: Path) -> None:
    seen: list[Any] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            server = cast("socketserver.UnixStreamServer", self.server)  # what socketserver's own have
            seen.append((server.socket.fileno() >= 0, server.server_address))
            self.request.sendall(b"ok")

    with ipchannel.Channel("server-view", Handler) as channel:
        assert channel.connect().recv(2) == b"ok"
    ((has_socket, address),) = seen
    assert has_socket
    assert address == str(
        runtime_dir / f".server-view.{os.getpid()}.sock"
    )  # where it bound, as socketserver's
