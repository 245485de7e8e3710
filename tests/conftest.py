"""Fixtures: a private runtime directory, real peer processes, and leak checks after every test."""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import gc
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _metrics_peers
import _peers
import psutil
import pytest
from _certs import Certificates

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

SPAWN = multiprocessing.get_context("spawn")
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def recorded_members(runtime_dir: Path, name: str = "test") -> list[str]:
    """Return the members the local record of SharedDict ``name`` holds (``.NAME.members``)."""
    return list(json.loads((runtime_dir / f".{name}.members").read_text())["members"])


def is_member(runtime_dir: Path, pid: int, name: str = "test") -> bool:
    """Tell whether a dict that process ``pid`` opened is a recorded member."""
    return any(member.startswith(f"pid {pid}@") for member in recorded_members(runtime_dir, name))


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped.

    The signal lands asynchronously: ``kill`` wakes one thread, which stops the others
    once it runs; under load the others go on for milliseconds (a replica applies and
    confirms the next change meanwhile). A test that writes "while it is stopped" waits here.
    """
    os.kill(pid, signal.SIGSTOP)

    def all_stopped() -> bool:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        return all(state in {"T", "t"} for state in states)

    wait_until(all_stopped, timeout=5)


@contextlib.contextmanager
def spawned(
    target: Callable[..., None], *args: Any, daemon: bool = True
) -> Iterator[tuple[BaseProcess, Connection]]:
    """Run ``target(conn, *args)`` in a spawned process; yield it and our end of ``conn``; reap it."""
    parent_conn, child_conn = SPAWN.Pipe()
    proc = SPAWN.Process(target=target, args=(child_conn, *args), daemon=daemon)
    proc.start()
    child_conn.close()
    try:
        yield proc, parent_conn
    finally:
        proc.join(10)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        proc.close()
        parent_conn.close()


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, short runtime directory (AF_UNIX paths are short), also set as IPCHANNEL_DIR."""
    path = Path(tempfile.mkdtemp(prefix="ipc-", dir="/tmp"))
    monkeypatch.setenv("IPCHANNEL_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Peer:
    """A real spawned process owning one Channel, driven by commands over a Pipe."""

    def __init__(
        self,
        name: str,
        runtime_dir: Path,
        target: Callable[..., None] = _peers.peer_main,
        extra: tuple[Any, ...] = (),
    ) -> None:
        parent, child = SPAWN.Pipe()
        self._conn: Connection = parent
        self.process: BaseProcess = SPAWN.Process(
            target=target, args=(child, name, str(runtime_dir), *extra), daemon=True
        )
        self.process.start()
        child.close()
        self.pid: int = self._recv(30.0)["ready"]

    def _recv(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            pytest.fail(f"peer {self.process.pid} did not answer within {timeout} s")
        reply: dict[str, Any] = self._conn.recv()
        return reply

    def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """Run a command in the peer; fail the test if it raised there."""
        reply = self.try_call(cmd, timeout, **args)
        assert reply["ok"], f"peer {self.pid} {cmd}: {reply}"
        return reply

    def start_call(self, cmd: str, **args: Any) -> None:
        """Send a command without waiting (several peers can then work at once); see finish_call."""
        self._conn.send((cmd, args))

    def finish_call(self, timeout: float = 10.0) -> dict[str, Any]:
        """The reply to the command sent by start_call; fail the test if it raised there."""
        reply = self._recv(timeout)
        assert reply["ok"], f"peer {self.pid}: {reply}"
        return reply

    def try_call(self, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """Run a command in the peer and return its reply, error or not."""
        self._conn.send((cmd, args))
        return self._recv(timeout)

    def exit(self, timeout: float = 10.0) -> None:
        """Close the channel and end the process cleanly."""
        self._conn.send(("exit", {}))
        self._recv(timeout)
        self.process.join(timeout)
        self._conn.close()
        assert self.process.exitcode == 0
        self.process.close()

    def kill(self) -> None:
        """SIGKILL and reap the process."""
        if self.process.exitcode is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.join(10)
        self._conn.close()
        if self.process.exitcode is not None:
            self.process.close()  # releases the sentinel pipe

    @property
    def alive(self) -> bool:
        return not self._conn.closed and self.process.is_alive()


def kill_all(started: list[Peer]) -> None:
    """Kill every peer still running, and check that each was reaped (``Peers``, ``Workers``)."""
    for peer in started:
        if not peer._conn.closed:  # noqa: SLF001
            peer.kill()
    for peer in started:
        assert not psutil.pid_exists(peer.pid) or psutil.Process(peer.pid).ppid() != os.getpid(), (
            f"peer {peer.pid} was not reaped"
        )


class Peers:
    """Starts peers and guarantees they are killed and reaped."""

    def __init__(self, runtime_dir: Path) -> None:
        self._runtime_dir = runtime_dir
        self.started: list[Peer] = []

    def start(self, n: int = 1, name: str = "test") -> list[Peer]:
        """Start ``n`` peers owning a Channel."""
        new = [Peer(name, self._runtime_dir) for _ in range(n)]
        self.started.extend(new)
        return new

    def start_requests(
        self,
        n: int = 1,
        name: str = "test",
        codec: str = "json",
        authkey: bytes | None = None,
        **options: Any,
    ) -> list[Peer]:
        """Start ``n`` peers owning a RequestChannel (handler: ``_peers.on_request``; options: its)."""
        extra = (codec, authkey, options)
        new = [Peer(name, self._runtime_dir, _peers.request_peer_main, extra) for _ in range(n)]
        self.started.extend(new)
        return new

    def start_dicts(
        self, n: int = 1, name: str = "test", log: str | None = None, **options: Any
    ) -> list[Peer]:
        """Start ``n`` peers owning a SharedDict (``log``: a file for their ipchannel log; options: its)."""
        new = [Peer(name, self._runtime_dir, _peers.dict_peer_main, (log, options)) for _ in range(n)]
        self.started.extend(new)
        return new

    def host(self, peers: list[Peer]) -> Peer:
        hosts = [p for p in peers if p.alive and p.call("info")["is_host"]]
        assert len(hosts) == 1, [p.call("info") for p in peers if p.alive]
        return hosts[0]

    def close_all(self) -> None:
        kill_all(self.started)


@pytest.fixture
def peers(runtime_dir: Path) -> Iterator[Peers]:
    pool = Peers(runtime_dir)
    try:
        yield pool
    finally:
        pool.close_all()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Test certificates, each made once per session (generating their keys is slow)."""
    return Certificates(lambda: tmp_path_factory.mktemp("certs"))


class Workers:
    """Spawned workers sharing prometheus_client metrics (``_metrics_peers``), reaped at the end."""

    def __init__(self, runtime_dir: Path) -> None:
        self._runtime_dir = runtime_dir
        self.started: list[Peer] = []

    def start(self, n: int, **options: Any) -> list[Peer]:
        new = [Peer("metrics", self._runtime_dir, _metrics_peers.main, (options,)) for _ in range(n)]
        self.started.extend(new)
        return new

    def host(self) -> Peer:
        hosts = [peer for peer in self.started if peer.alive and peer.call("host")["is_host"]]
        assert len(hosts) == 1
        return hosts[0]


@pytest.fixture
def workers(runtime_dir: Path) -> Iterator[Workers]:
    pool = Workers(runtime_dir)
    try:
        yield pool
    finally:
        kill_all(pool.started)


def _ipchannel_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ipchannel-")}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def reap(pid: int, timeout: float = 5.0) -> None:
    """Wait up to ``timeout`` for ``pid`` (a descendant) to exit, SIGKILL it if it has not, and reap it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            return
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    with contextlib.suppress(ChildProcessError):  # not ours to reap, or already reaped
        os.waitpid(pid, 0)


def pytest_configure(config: pytest.Config) -> None:
    """Compile ipchannel and the tests' modules to bytecode once, before any peer process starts.

    The suite starts hundreds of Python processes, each importing ipchannel and a helper
    module of the tests from this checkout. Where ``PYTHONDONTWRITEBYTECODE`` is set (the
    machines this suite runs on set it) none of them writes its bytecode, so each compiled them
    all again: about a tenth of a second of CPU per process. Reading bytecode is not affected by
    that setting, so one compilation here serves them all (``__pycache__`` is git-ignored).
    """
    del config
    spec = importlib.util.find_spec("ipchannel")
    places = [*(spec.submodule_search_locations or [] if spec else []), str(Path(__file__).parent)]
    for place in places:
        compileall.compile_dir(place, quiet=1)


@pytest.fixture(scope="session", autouse=True)
def _session_processes() -> None:
    """Session-wide process set-up, before any leak baseline.

    - spawn starts multiprocessing's resource tracker once per session: start it now;
    - become a child subreaper, so processes orphaned by a killed peer (forked
      children, a helper it started) are re-parented to this process and reaped here.
    """
    from multiprocessing import resource_tracker  # noqa: PLC0415

    resource_tracker.ensure_running()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@pytest.fixture(autouse=True)
def no_leaks(_session_processes: None) -> Iterator[None]:
    """After each test: no ipchannel thread, file descriptor or child process is left behind."""
    threads, fds = _ipchannel_threads(), _open_fds()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 15  # a monitor's join alone may take 5 s; a pass costs no wait
    while time.monotonic() < deadline:
        extra_threads = _ipchannel_threads() - threads
        extra_fds = _open_fds() - fds
        extra_children = {p.pid for p in psutil.Process().children(recursive=True)} - children
        for pid in list(extra_children):
            with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(pid, 0)  # an orphan that exited and was re-parented to us
                    extra_children.discard(pid)
        if not (extra_threads or extra_fds or extra_children):
            return
        time.sleep(0.01)
    fd_targets = {fd: _described_fd(int(fd)) for fd in extra_fds}
    pytest.fail(f"leaked threads {extra_threads}, fds {fd_targets}, child processes {extra_children}")


def process_connections(kind: str) -> list[Any]:
    """Return this process's connections of ``kind`` (psutil 6 renamed the method; we allow 5.9)."""
    process = psutil.Process()
    listed = getattr(process, "net_connections", None) or process.connections
    return list(listed(kind))


def _described_fd(fd: int) -> str:
    """Say what ``fd`` is, for a leak report: its target; for a socket, its ends and who holds it."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
    if not target.startswith("socket:"):
        return target
    ends = [f"{c.laddr}->{c.raddr} {c.status}" for c in process_connections("all") if c.fd == fd]
    holders = [
        _holders(thing)
        for thing in gc.get_objects()
        if isinstance(thing, socket.socket) and thing.fileno() == fd
    ]
    return f"{target} {ends} held by {holders or 'nothing the collector tracks'}"


_NOT_OWNERS = (list, tuple, types.CellType, types.FrameType)  # the leak check's own, and closures


def _holders(thing: object, depth: int = 4) -> str:
    """Name the chain of objects that hold ``thing`` (an instance's ``__dict__`` is named by the instance)."""
    chain = []
    for _ in range(depth):
        owners = [r for r in gc.get_referrers(thing) if not isinstance(r, _NOT_OWNERS)]
        if not owners:
            break
        owner = owners[0]
        if isinstance(owner, dict):
            instances = [r for r in gc.get_referrers(owner) if getattr(r, "__dict__", None) is owner]
            owner = instances[0] if instances else owner
        chain.append(type(owner).__qualname__)
        thing = owner
    return " <- ".join(chain) or "nothing"
