"""Child-process side of the tests: top-level functions, importable under the spawn start method.

A peer runs ``peer_main``: it owns one Channel and obeys commands sent over a
Pipe, answering each with a dict. The handler used by every peer is
``echo_handler``: it answers each line with ``"<host pid> <line>"``, so a
client can tell which process served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import ipchannel
from ipchannel._local.coordinator import LocalCoordinator

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection


def echo_handler(conn: socket.socket) -> None:
    """Answer each newline-terminated line with '<pid> <line>'."""
    buf = b""
    while True:
        data = conn.recv(4096)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"bye":  # the handler ends the conversation itself
                return
            conn.sendall(f"{os.getpid()} ".encode() + line + b"\n")


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (fewer only at EOF)."""
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


def read_line(sock: socket.socket) -> bytes:
    """Read one newline-terminated line (the echo replies are small: byte at a time is fine)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return buf
        buf += chunk
    return buf


def request(sock: socket.socket, text: str, deadline: float) -> tuple[str, int]:
    """Send a line, return (reply, resends); resend on HostChanged as docs/explanation/failover.rst says."""
    resends = 0
    while True:
        sock.sendall(text.encode() + b"\n")
        try:
            reply = read_line(sock)
        except ipchannel.HostChanged:
            resends += 1
            if time.monotonic() > deadline:
                raise
            continue
        return reply.decode().rstrip("\n"), resends


class _Peer:
    def __init__(self, name: str, runtime_dir: str) -> None:
        self.channel = ipchannel.Channel(name, echo_handler, runtime_dir=runtime_dir)
        self.sock: ipchannel.ChannelSocket | None = None

    def info(self) -> dict[str, Any]:
        ch = self.channel
        return {
            "pid": os.getpid(),
            "state": ch.state,
            "is_host": ch.is_host,
            "host_pid": ch.host_pid,
            "generation": ch.generation,
            "sock_id": id(self.sock) if self.sock is not None else None,
            "fileno": self.sock.fileno() if self.sock is not None else None,
            "standby": ch._hosting.standing_by,  # noqa: SLF001 - stands by to host next
        }

    def fork_child(self) -> int:
        """Fork a child that uses the channel (0: it was answered and is not the standby), reap it."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock = self.channel.connect(timeout=5)
                reply, _ = request(sock, "child", time.monotonic() + 5)
                code = 0 if not self.channel._hosting.standing_by and reply.endswith(" child") else 2  # noqa: SLF001
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "connect":
            self.sock = self.channel.connect(timeout=args.get("timeout", 5.0))
            return self.info()
        if cmd == "request":
            assert self.sock is not None
            deadline = time.monotonic() + args.get("timeout", 5.0)
            start = time.perf_counter()
            reply, resends = request(self.sock, args["text"], deadline)
            return {**self.info(), "reply": reply, "resends": resends, "seconds": time.perf_counter() - start}
        if cmd == "send_then_recv_error":
            # send a request, then report what recv raises (used with auto_reconnect=False)
            assert self.sock is not None
            try:
                self.sock.sendall(args["text"].encode() + b"\n")
                return {"data": read_line(self.sock).decode()}
            except OSError as exc:
                return {"error": type(exc).__name__}
        if cmd == "leak_lock":
            # Start a process that inherits the lock's open file description (pass_fds) and
            # outlives us: after our death it holds the lock without hosting.
            coordinator = self.channel._backend.coordinator  # noqa: SLF001
            assert isinstance(coordinator, LocalCoordinator)
            fd = coordinator.lock_fd
            assert fd is not None
            sleeper = subprocess.Popen(["sleep", "60"], pass_fds=[fd])  # noqa: S607
            return {"sleeper": sleeper.pid}
        if cmd == "join":
            self.channel.join(timeout=args.get("timeout", 5.0))
            return self.info()
        if cmd == "fork_child":
            return {**self.info(), "child_exit": self.fork_child()}
        if cmd == "set_monitor_interval":  # before the first connect or join: the monitor reads it then
            self.channel.monitor_interval = args["value"]
            return self.info()
        if cmd == "set_may_host":
            self.channel.may_host = args["value"]
            return self.info()
        if cmd == "set_auto_reconnect":
            self.channel.auto_reconnect = args["value"]
            return self.info()
        if cmd == "info":
            return self.info()
        if cmd == "close":
            self.channel.close()
            return self.info()
        raise ValueError(f"unknown command {cmd!r}")


class _Commandable(Protocol):
    @property
    def channel(self) -> ipchannel.Channel | ipchannel.RequestChannel | ipchannel.SharedDict: ...

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]: ...


def _serve_commands(conn: Connection, peer: _Commandable) -> None:
    """Answer the test's commands until it says exit or hangs up; errors are reported, not raised."""
    # The test kills peers with SIGKILL; SIGTERM would run no atexit either, so make it exit cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn.send({"ready": os.getpid()})
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            break
        if cmd == "exit":
            peer.channel.close()
            conn.send({"exited": True})
            break
        try:
            if cmd in _HOOK_COMMANDS:
                _HOOK_COMMANDS[cmd](**args)
                conn.send({"ok": True})
                continue
            conn.send({"ok": True, **peer.do(cmd, args)})
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
            conn.send({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    with contextlib.suppress(OSError):
        conn.close()


def peer_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Entry point of a peer process owning a Channel."""
    _serve_commands(conn, _Peer(name, runtime_dir))


def fds_pointing_to(path: str) -> list[int]:
    """Return this process's descriptors open on ``path``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                found.append(int(fd))
    return found


def _forked_child(
    conn: Connection, channel: ipchannel.Channel, sock: ipchannel.ChannelSocket, parent: int
) -> None:
    """Body of a child forked from a hosting parent; reports over the inherited pipe, then waits."""
    lock_path = str(channel.runtime_dir / f"{channel.name}.lock")
    conn.send(
        {
            "pid": os.getpid(),
            "event": "forked",
            "is_host": channel.is_host,
            "state": channel.state,
            "lock_fds": fds_pointing_to(lock_path),
        }
    )
    deadline = time.monotonic() + 20
    reply, _ = request(sock, "first use", deadline)  # the inherited socket, first use in the child
    conn.send({"pid": os.getpid(), "event": "first_reply", "reply": reply, "sock_id": id(sock)})
    while time.monotonic() < deadline:  # until a host other than the parent answers
        reply, _ = request(sock, "poll", deadline)
        if int(reply.split()[0]) != parent:
            conn.send({"pid": os.getpid(), "event": "new_host", "reply": reply, "is_host": channel.is_host})
            break
        time.sleep(0.005)
    stop = channel.runtime_dir / "stop"
    while not stop.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def fork_main(conn: Connection, name: str, runtime_dir: str, children: int) -> None:
    """Host a channel, fork ``children`` children that share it, then obey 'request' until killed."""
    channel = ipchannel.Channel(name, echo_handler, runtime_dir=runtime_dir)
    sock = channel.connect()
    request(sock, "before fork", time.monotonic() + 5)
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _forked_child(conn, channel, sock, os.getppid())
            except BaseException as exc:  # noqa: BLE001 - reported, then the child dies hard
                conn.send({"pid": os.getpid(), "event": "error", "error": repr(exc)})
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    conn.send({"pid": os.getpid(), "event": "parent", "children": pids, "is_host": channel.is_host})
    while True:
        cmd = conn.recv()
        if cmd == "request":
            reply, _ = request(sock, "parent", time.monotonic() + 5)
            conn.send({"pid": os.getpid(), "event": "parent_reply", "reply": reply})


# -- RequestChannel peers -----------------------------------------------------------------------

_BARRIER = threading.Barrier(8)


def _runtime_dir() -> str:
    return os.environ["IPCHANNEL_DIR"]


def log_to(path: str) -> None:
    """Append this process's ipchannel log, DEBUG and up, to ``path`` (the test reads it to time a kill)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(threadName)s %(levelname)s %(message)s"))
    logger = logging.getLogger("ipchannel")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


_PAUSES: list[tuple[str, str, str, str | None]] = []  # (point, marker, flag, release) installed so far


def pause_at(point: str, marker: str, flag: str, release: str | None = None) -> None:
    """Install a test hook: at ``point``, for a detail that mentions ``marker``, touch ``flag`` and hang.

    It hangs until the file ``release`` exists (at most 60 s; "" does not hang), or, without one,
    for 60 s: the host is SIGKILLed while it hangs there. The race window, held open on purpose.
    """
    from ipchannel import _hooks  # noqa: PLC0415 - the library's test hook

    def pause(where: str, detail: object) -> None:
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else json.dumps(detail)
        for at, mark, touch, until in _PAUSES:
            if where == at and mark in text:
                open(touch, "w").close()
                if until != "":
                    wait_for(lambda u=until: u is not None and os.path.exists(u), timeout=60)

    _PAUSES.append((point, marker, flag, release))
    _hooks.pause = pause


def handshake_timeout(seconds: float) -> None:
    """Give this process's host a shorter deadline for a whole handshake (``_auth.HANDSHAKE_TIMEOUT``).

    As test_security does in its own process: a test that waits the deadline out waits less.
    """
    from ipchannel import _auth  # noqa: PLC0415 - read by the host at each accepted connection

    _auth.HANDSHAKE_TIMEOUT = seconds


#: Commands every RequestChannel and SharedDict peer obeys, to widen a race window or watch its log.
_HOOK_COMMANDS: dict[str, Callable[..., None]] = {
    "log_to": log_to,
    "pause_at": pause_at,
    "handshake_timeout": handshake_timeout,
}


def on_request(message: Any) -> Any:
    """The request handler every RequestChannel peer uses; what it does depends on the message."""
    op = message.get("op") if isinstance(message, dict) else None
    if op == "raise":
        raise ValueError(f"refused {message['value']!r}")
    if op == "big":  # a reply of ``size`` bytes and more: a frame many reads long, in flight for a while
        return {"pid": os.getpid(), "blob": "x" * message["size"]}
    if op == "barrier":  # returns only once 8 requests are inside the handler at the same time
        _BARRIER.wait(timeout=10)
    if op == "hold":  # blocks while a hold file names this host; logs its entry first
        fd = os.open(
            os.path.join(_runtime_dir(), f"entered-{os.getpid()}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        os.write(fd, b".")
        os.close(fd)
        while os.path.exists(os.path.join(_runtime_dir(), f"hold-{os.getpid()}")):
            time.sleep(0.005)
    return {"pid": os.getpid(), "message": message}


class ReversingCodec:
    """A custom codec: UTF-8 text, reversed on the wire."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return str(obj)[::-1].encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return data.decode()[::-1]


class _RequestPeer:
    def __init__(
        self, name: str, runtime_dir: str, codec: str, authkey: bytes | None, options: dict[str, Any]
    ) -> None:
        chosen: Any = ReversingCodec() if codec == "reversing" else codec
        self.channel = ipchannel.RequestChannel(
            name, on_request, codec=chosen, runtime_dir=runtime_dir, authkey=authkey, **options
        )
        self.received: list[Any] = []
        self.missed: list[int | None] = []
        self.lock = threading.Lock()
        self.channel.on_missed(self._on_missed)

    def _on_missed(self, count: int | None) -> None:
        with self.lock:
            self.missed.append(count)

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "is_host": self.channel.channel.is_host,
            "host_pid": self.channel.channel.host_pid,
            "standby": self.channel.channel._hosting.standing_by,  # noqa: SLF001 - stands by to host next
        }

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd == "request":
            return {
                **self.info(),
                "reply": self.channel.request(args["message"], timeout=args.get("timeout", 5.0)),
            }
        if cmd == "concurrent_requests":
            return {**self.info(), "replies": self._concurrently(args["messages"], args.get("timeout", 10.0))}
        if cmd == "subscribe":
            self.channel.subscribe(self._on_message)
            return self.info()
        if cmd == "run_on_host":  # append "<pid> <monotonic time>" to a file, every interval, host only
            path, duration = args["path"], args.get("duration")  # with a duration: "<pid> <start> <end>"

            def job() -> None:
                start = time.monotonic()
                if duration is not None:
                    time.sleep(duration)
                line = f"{os.getpid()} {start}" + ("" if duration is None else f" {time.monotonic()}")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, f"{line}\n".encode())
                finally:
                    os.close(fd)

            ipchannel.run_on_host(self.channel, job, every=args["every"])
            return self.info()
        if cmd == "received":
            with self.lock:
                return {"received": list(self.received), "missed": list(self.missed)}
        if cmd == "publish_many":  # {"i": i, "pad": size bytes}; the slowest publish() in seconds
            slowest = 0.0
            for i in range(args["times"]):
                start = time.monotonic()
                self.channel.publish({"i": i, "pad": "x" * args["size"]}, timeout=args["each"])
                slowest = max(slowest, time.monotonic() - start)
            return {"slowest": slowest}
        if cmd == "publish":
            self.channel.publish(args["message"], timeout=args.get("timeout", 5.0))
            return self.info()
        if cmd == "info":
            return self.info()
        raise ValueError(f"unknown command {cmd!r}")

    def _on_message(self, message: Any) -> None:
        with self.lock:
            self.received.append(message)

    def _concurrently(self, messages: list[Any], timeout: float) -> list[Any]:
        results: list[Any] = [None] * len(messages)

        def one(i: int) -> None:
            try:
                results[i] = self.channel.request(messages[i], timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results[i] = {"error": type(exc).__name__, "message": str(exc)}

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(messages))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


def request_peer_main(  # noqa: PLR0917 - a spawn target takes positional arguments
    conn: Connection,
    name: str,
    runtime_dir: str,
    codec: str = "json",
    authkey: bytes | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Entry point of a peer process owning a RequestChannel (``options``: more keyword arguments)."""
    _serve_commands(conn, _RequestPeer(name, runtime_dir, codec, authkey, options or {}))


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _request_fork_child(channel: ipchannel.RequestChannel, got: list[Any], ready: int) -> dict[str, Any]:
    """In the forked child: the subscription comes back by itself; then request and publish."""
    resumed = wait_for(lambda: channel.subscribed_generation is not None)  # no call of ours needed
    os.write(ready, b"s")
    heard_parent = wait_for(lambda: "parent after fork" in got)
    reply = channel.request({"child": os.getpid()}, timeout=5)
    channel.publish("from child", timeout=5)  # numbered like the parent's next one, from another id
    wait_for(lambda: "from child" in got)
    return {
        "event": "child",
        "pid": os.getpid(),
        "reply": reply,
        "is_host": channel.channel.is_host,
        "got": got,
        "resumed": resumed,
        "heard_parent": heard_parent,
    }


def request_fork_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Host a RequestChannel, fork while another thread waits inside a request, report both sides.

    At fork time the waiting thread holds the request connection's read lock; the child must not
    inherit it held, must subscribe afresh (by itself), must publish as a publisher of its own, and
    must not write into the parent's connections.
    """
    channel = ipchannel.RequestChannel(name, on_request, runtime_dir=runtime_dir)
    channel.request("parent first")
    got: list[Any] = []
    channel.subscribe(got.append)
    channel.publish("parent before fork")
    hold = os.path.join(runtime_dir, f"hold-{os.getpid()}")
    open(hold, "w").close()
    held: list[Any] = []
    waiter = threading.Thread(target=lambda: held.append(channel.request({"op": "hold"}, timeout=20)))
    waiter.start()
    entered = os.path.join(runtime_dir, f"entered-{os.getpid()}")
    while not os.path.exists(entered):
        time.sleep(0.005)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            conn.send(_request_fork_child(channel, got, ready_w))
        except BaseException as exc:  # noqa: BLE001 - reported, then the child dies hard
            conn.send({"event": "error", "error": repr(exc)})
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    select.select([ready_r], [], [], 10)  # the child is subscribed: what we publish now reaches it
    os.close(ready_r)
    channel.publish("parent after fork")
    _, status = os.waitpid(pid, 0)
    os.unlink(hold)
    waiter.join(20)
    wait_for(lambda: "from child" in got)
    after = channel.request("parent after", timeout=5)
    conn.send(
        {
            "event": "parent",
            "status": status,
            "got": got,
            "reply": after,
            "is_host": channel.channel.is_host,
            "held": held,
        }
    )
    channel.close()


class _DictPeer:
    """A process with a SharedDict; "count" runs incr in a background thread until "stop_count"."""

    def __init__(
        self, name: str, runtime_dir: str, log: str | None = None, options: dict[str, Any] | None = None
    ) -> None:
        if log is not None:
            log_to(log)
        self._name, self._runtime_dir, self._options = name, runtime_dir, {"timeout": 10, **(options or {})}
        self.dict = ipchannel.SharedDict(name, runtime_dir=runtime_dir, **self._options)
        self.channel = self.dict.channel
        self._stop = threading.Event()
        self._counters: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._returned = 0
        self._errors: list[str] = []

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:  # noqa: PLR0912 - one branch per command
        d = self.dict
        if cmd == "info":
            return {"pid": os.getpid(), "is_host": self.channel.is_host, "position": d.position}
        if cmd == "close":
            d.close()
            return {}
        if cmd == "reopen":  # close the dict and open it again in this process
            d.close()
            self.dict = ipchannel.SharedDict(self._name, runtime_dir=self._runtime_dir, **self._options)
            self.channel = self.dict.channel
            return {"position": self.dict.position}
        if cmd == "incr":
            results = [d.incr(args["key"]) for _ in range(args["times"])]
            return {"results": results, "seen": d[args["key"]]}
        if cmd == "set_then_get":
            d[args["key"]] = args["value"]
            return {"got": d[args["key"]]}
        if cmd == "fill":  # set key to size bytes, times over; the slowest write in seconds
            slowest = 0.0
            for i in range(args["times"]):
                start = time.monotonic()
                d.__setitem__(args["key"], f"{i:08d}" + "x" * args["size"])
                slowest = max(slowest, time.monotonic() - start)
            return {"slowest": slowest, "position": d.position}
        if cmd == "fill_keys":  # set prefix0 .. prefix<times - 1> to size bytes each
            for i in range(args["times"]):
                d[f"{args['prefix']}{i}"] = "x" * args["size"]
            return {"position": d.position}
        if cmd == "count_prefix":  # keys starting with prefix, in the local replica
            return {"count": sum(1 for key in d if str(key).startswith(args["prefix"]))}
        if cmd == "pop_in_background":  # pop prefix0 .. in two threads: large answers on their way
            for first in (0, 1):
                keys = [f"{args['prefix']}{i}" for i in range(first, args["times"], 2)]
                threading.Thread(target=lambda k=keys: [d.pop(key, None) for key in k], daemon=True).start()
            return {}
        if cmd == "setdefault":  # of a value of size bytes; the length of what it returned
            return {"length": len(d.setdefault(args["key"], "x" * args["size"]))}
        if cmd == "digest":  # what the replica holds at one position, without sending it whole
            while True:
                position, copy = d.position, d.copy()
                if d.position == position:
                    break
            items = sorted((k, hashlib.sha256(json.dumps(v).encode()).hexdigest()) for k, v in copy.items())
            return {"items": items, "position": position}
        if cmd == "copy":
            return {"items": sorted(d.copy().items()), "position": d.position}
        if cmd == "wait_position":
            return {"position": self._wait_position(tuple(args["position"]))}
        if cmd == "end_subscription":  # as if the host had closed it: the subscriber connects again
            subscriber = d._requests._subscriber  # noqa: SLF001 - the connection a test ends
            sock = subscriber._sock  # noqa: SLF001
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)
            return {}
        if cmd == "count":  # several threads: several writes in flight when the host dies
            for _ in range(args.get("threads", 1)):
                self._counters.append(threading.Thread(target=self._count, args=(args["key"],), daemon=True))
                self._counters[-1].start()
            return {}
        if cmd == "stop_count":
            self._stop.set()
            for t in self._counters:
                t.join(30)
            return {"returned": self._returned, "errors": self._errors}
        raise ValueError(cmd)

    def _wait_position(self, position: tuple[int, int]) -> tuple[int, int]:
        deadline = time.monotonic() + 10
        while self.dict.position < position and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.dict.position

    def _count(self, key: str) -> None:
        while not self._stop.is_set():
            try:
                self.dict.incr(key)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                self._errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self._returned += 1


def dict_peer_main(
    conn: Connection,
    name: str,
    runtime_dir: str,
    log: str | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Entry point of a peer process owning a SharedDict (``options``: more keyword arguments for it)."""
    _serve_commands(conn, _DictPeer(name, runtime_dir, log, options))


def fork_children(
    children: int, runtime_dir: str, body: Callable[[int], dict[str, Any]]
) -> tuple[list[int], list[dict[str, Any]]]:
    """Fork ``children`` children, child ``i`` running ``body(i)``; wait; return statuses and reports.

    Each child writes what ``body`` returned (or ``{"error": ...}``, exiting 1) to a file
    of ``runtime_dir`` and exits hard, as a forked worker that must not run the parent's code.
    """
    pids = []
    for i in range(children):
        out = os.path.join(runtime_dir, f"child-{i}.json")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                result = body(i)
            except BaseException as exc:  # noqa: BLE001 - reported, then the child dies hard
                result, code = {"error": repr(exc)}, 1
            with open(out, "w") as f:
                json.dump(result, f)
            os._exit(code)
        pids.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    results = []
    for i in range(children):
        with open(os.path.join(runtime_dir, f"child-{i}.json")) as f:
            results.append(json.load(f))
    return statuses, results


def dict_fork_main(  # noqa: PLR0917 - a spawn target takes positional arguments
    conn: Connection, name: str, runtime_dir: str, children: int, times: int, write_first: bool
) -> None:
    """Open a SharedDict (it hosts), maybe write, fork children that increment; report every value."""
    d = ipchannel.SharedDict(name, runtime_dir=runtime_dir, timeout=10)
    if write_first:
        d["x"] = 0
    statuses, results = fork_children(
        children, runtime_dir, lambda _i: {"values": [d.incr("x") for _ in range(times)]}
    )
    conn.send({"statuses": statuses, "results": results, "final": d.get("x"), "is_host": d.channel.is_host})
    conn.recv()  # the test's go-ahead to close
    d.close()


_POOL_DICT: ipchannel.SharedDict | None = None  # opened by the pool's parent, inherited by its workers


def _pool_incr(times: int) -> tuple[int, list[Any]]:
    assert _POOL_DICT is not None
    return os.getpid(), [_POOL_DICT.incr("x") for _ in range(times)]


def dict_pool_main(conn: Connection, name: str, runtime_dir: str, tasks: int, times: int) -> None:
    """Open a SharedDict, write, then have a multiprocessing fork Pool of 4 increment it."""
    global _POOL_DICT  # noqa: PLW0603 - a Pool worker reaches its parent's objects through globals
    _POOL_DICT = ipchannel.SharedDict(name, runtime_dir=runtime_dir, timeout=10)
    _POOL_DICT["x"] = 0
    with multiprocessing.get_context("fork").Pool(4) as pool:
        done = pool.map(_pool_incr, [times] * tasks, chunksize=1)
    conn.send({"results": [values for _, values in done], "workers": sorted({pid for pid, _ in done})})
    conn.recv()
    _POOL_DICT.close()


def job_fork_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Host a channel that runs a job, fork while it runs; the child must start with no job of its own."""
    channel = ipchannel.Channel(name, echo_handler, runtime_dir=runtime_dir)
    job = ipchannel.run_on_host(channel, lambda: None, every=0.01)
    wait_for(lambda: job.runs >= 3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = {"runs": job.runs, "running": job.running, "repr": repr(job), "is_host": channel.is_host}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    conn.send({"child": child, "status": status, "parent_runs": job.runs, "parent_running": job.running})
    channel.close()


def fork_request_timeout_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Subscribe to another process's host, fork once told the host is frozen; time a request in the child."""
    channel = ipchannel.RequestChannel(name, on_request, runtime_dir=runtime_dir)
    channel.subscribe(lambda _message: None)
    conn.send({"subscribed": os.getpid()})
    conn.recv()  # the host is SIGSTOPped now: the child's background re-subscription hangs on it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        start = time.monotonic()
        try:
            channel.request("hi", timeout=1)
            outcome = "answered"
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome = type(exc).__name__
        os.write(write, json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        report = json.loads(f.read() or "{}")
    os.kill(pid, signal.SIGKILL)  # its re-subscription may still be trying
    os.waitpid(pid, 0)
    conn.send(report)


# -- ipchannel.aio peers --------------------------------------------------------------------------


async def _aio_use(channel: Any, shared: Any, label: str) -> dict[str, Any]:
    """Request, publish to our own stream, increment the shared dict: what each process reports."""
    reply = await asyncio.wait_for(channel.request({"from": label}, timeout=5), 10)
    async with channel.messages() as stream:
        await asyncio.wait_for(channel.publish(label, timeout=5), 10)
        heard = await asyncio.wait_for(stream.__anext__(), 10)
    value = await asyncio.wait_for(shared.incr("x"), 10)
    workers = sorted(t.native_id or 0 for t in channel._runner.threads)  # noqa: SLF001 - fresh per process
    return {"reply": reply, "heard": heard, "value": value, "read": shared["x"], "workers": workers}


def aio_fork_main(conn: Connection, name: str, runtime_dir: str) -> None:
    """Use an AsyncRequestChannel and an AsyncSharedDict (hosting both), fork, use them in the child too.

    The child must start workers of its own (the parent's are not there), must not await on
    the parent's loop, and must see the dict as the parent left it, then share it.
    """
    from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict  # noqa: PLC0415

    channel = AsyncRequestChannel(name, on_request, runtime_dir=runtime_dir, workers=3)
    shared = AsyncSharedDict(f"{name}-dict", runtime_dir=runtime_dir)
    asyncio.run(shared.open())
    before = asyncio.run(_aio_use(channel, shared, "parent"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            report = {"child": asyncio.run(_aio_use(channel, shared, "child")), "pid": os.getpid()}
        except BaseException as exc:  # noqa: BLE001 - reported, then the child dies hard
            report, code = {"error": repr(exc)}, 1
        os.write(write, json.dumps(report).encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        child = json.loads(f.read() or "{}")
    _, status = os.waitpid(pid, 0)
    after = asyncio.run(_aio_use(channel, shared, "parent again"))
    conn.send({"before": before, "child": child, "status": status, "after": after, "pid": os.getpid()})
    conn.recv()  # the test's go-ahead to close
    channel.close()
    shared.close()


def fork_warning_main(conn: Connection, runtime_dir: str) -> None:
    """Fork after only making ipchannel objects, then after opening a SharedDict; report Python's warnings.

    Run in a fresh process, so no thread of another test is there to cause the warning.
    """
    import warnings  # noqa: PLC0415

    from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict  # noqa: PLC0415

    def fork_and_record() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - does nothing in the child
                os._exit(0)
            os.waitpid(pid, 0)
        return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]

    made: list[Any] = [
        ipchannel.Channel("made-channel", echo_handler, runtime_dir=runtime_dir),
        ipchannel.RequestChannel("made-requests", on_request, runtime_dir=runtime_dir),
        AsyncRequestChannel("made-aio", on_request, runtime_dir=runtime_dir),
        AsyncSharedDict("made-aio-dict", runtime_dir=runtime_dir),
    ]
    only_made = fork_and_record()
    with ipchannel.SharedDict("opened", runtime_dir=runtime_dir) as d:
        d["k"] = 1
        opened = fork_and_record()
    for obj in made:
        obj.close()
    conn.send({"only_made": only_made, "opened": opened})
