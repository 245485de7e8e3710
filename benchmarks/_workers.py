"""Child-process entry points for the benchmarks (top-level, importable under spawn).

Every worker reports over its own Pipe and timestamps with ``time.monotonic_ns()``,
which on Linux is one clock for every process of the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socketserver
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import TYPE_CHECKING, Any

import psutil

import ipchannel

if TYPE_CHECKING:
    import socket

PAYLOAD = b"x" * 63 + b"\n"  # 64 bytes


def echo(conn: socket.socket) -> None:
    """Echo every byte back (the handler of every ipchannel echo host)."""
    while data := conn.recv(65536):
        conn.sendall(data)


def echo_line_with_pid(conn: socket.socket) -> None:
    """Answer each line with '<pid>\\n', except 'wait', never answered: failover clients park on it."""
    reply = f"{os.getpid()}\n".encode()
    buf = b""
    while data := conn.recv(4096):
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line != b"wait":
                conn.sendall(reply)


def on_request(message: Any) -> Any:
    """RequestChannel echo."""
    return message


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stats() -> dict[str, Any]:
    proc = psutil.Process()
    return {"rss": proc.memory_info().rss, "threads": proc.num_threads(), "pid": os.getpid()}


def _wait_for_stop(conn: Connection) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message == "stats":
            conn.send(_stats())
        else:
            return


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# -- hosts ------------------------------------------------------------------------------------------


def channel_host(conn: Connection, name: str, runtime_dir: str, handler: str = "echo") -> None:
    raise_fd_limit()
    chosen = echo if handler == "echo" else echo_line_with_pid
    channel = ipchannel.Channel(name, chosen, runtime_dir=runtime_dir)
    channel.connect()
    conn.send({"pid": os.getpid(), "is_host": channel.is_host})
    _wait_for_stop(conn)
    channel.close()


def request_host(conn: Connection, name: str, runtime_dir: str) -> None:
    channel = ipchannel.RequestChannel(name, on_request, runtime_dir=runtime_dir)
    channel.request("elect me")
    conn.send({"pid": os.getpid(), "is_host": channel.channel.is_host})
    _wait_for_stop(conn)
    channel.close()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        echo(self.request)


def socketserver_host(conn: Connection, path: str) -> None:
    server = socketserver.ThreadingUnixStreamServer(path, _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send({"pid": os.getpid()})
    _wait_for_stop(conn)
    server.shutdown()
    server.server_close()


def _mp_serve(client: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            client.send_bytes(client.recv_bytes())


def mp_host(conn: Connection, address: str) -> None:
    listener = Listener(address, family="AF_UNIX")

    def accept_forever() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=_mp_serve, args=(listener.accept(),), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    conn.send({"pid": os.getpid()})
    _wait_for_stop(conn)
    listener.close()


# -- failover ---------------------------------------------------------------------------------------


def failover_client(conn: Connection, name: str, runtime_dir: str) -> None:
    """Wait on the host with a request it never answers; when it dies, ask the new host and report when."""
    channel = ipchannel.Channel(name, echo_line_with_pid, runtime_dir=runtime_dir)
    sock = channel.connect(timeout=10)
    conn.send({"pid": os.getpid()})

    def ask_and_wait() -> None:
        while True:
            sock.sendall(b"?\n")
            try:
                pid = int(recv_line(sock))
            except ipchannel.HostChanged:
                continue
            at, moves = time.monotonic_ns(), sock.reconnects
            # Park on this host *before* reporting it: the benchmark kills it as soon as we report, and a
            # "wait" sent to a dead host is delivered to the new one, where recv would never end.
            sock.sendall(b"wait\n")
            if sock.reconnects != moves:
                continue  # the host died before "wait" reached it: ask the new one
            conn.send({"host": pid, "at": at})
            with contextlib.suppress(ipchannel.HostChanged):
                recv_line(sock)  # returns only by HostChanged, once the host has died

    threading.Thread(target=ask_and_wait, daemon=True).start()
    with contextlib.suppress(EOFError):
        conn.recv()  # "stop"
    os._exit(0)  # the waiting thread is parked on the host: leave without a goodbye


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise EOFError
        data += chunk
    return data


def flock_holder(conn: Connection, path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    conn.send({"pid": os.getpid()})
    _wait_for_stop(conn)


def flock_waiter(conn: Connection, path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    conn.send({"pid": os.getpid()})
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder dies
    conn.send({"at": time.monotonic_ns()})


# -- storm, load, capacity ------------------------------------------------------------------------


def storm_client(conn: Connection, name: str, runtime_dir: str) -> None:
    channel = ipchannel.Channel(name, echo, runtime_dir=runtime_dir)
    conn.send({"pid": os.getpid()})
    start_at = conn.recv()
    while (delay := start_at - time.monotonic_ns()) > 2_000_000:
        time.sleep(delay / 1e9 - 0.001)
    while time.monotonic_ns() < start_at:
        pass
    sock = channel.connect(timeout=30)
    done = time.monotonic_ns()
    sock.sendall(PAYLOAD)
    recv_exactly(sock, len(PAYLOAD))
    conn.send({"connected": done, "is_host": channel.is_host})
    _wait_for_stop(conn)
    channel.close()


def _load(threads: int, seconds: float, one_thread: Any) -> tuple[int, float]:
    counts = [0] * threads
    start = time.monotonic()
    stop = start + seconds

    def run(i: int) -> None:
        counts[i] = one_thread(stop)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts), time.monotonic() - start


def request_load_client(conn: Connection, name: str, runtime_dir: str, threads: int, seconds: float) -> None:
    channel = ipchannel.RequestChannel(name, on_request, runtime_dir=runtime_dir)
    channel.request("warm up")
    message = "x" * 60

    def one_thread(stop: float) -> int:
        n = 0
        while time.monotonic() < stop:
            channel.request(message)
            n += 1
        return n

    conn.send({"pid": os.getpid()})
    conn.recv()
    conn.send(_load(threads, seconds, one_thread))
    channel.close()


def mp_load_client(conn: Connection, address: str, threads: int, seconds: float) -> None:
    def one_thread(stop: float) -> int:
        client = Client(address, family="AF_UNIX")
        n = 0
        while time.monotonic() < stop:
            client.send_bytes(PAYLOAD)
            client.recv_bytes()
            n += 1
        client.close()
        return n

    conn.send({"pid": os.getpid()})
    conn.recv()
    conn.send(_load(threads, seconds, one_thread))


def capacity_client(conn: Connection, name: str, runtime_dir: str, connections: int) -> None:
    raise_fd_limit()
    channel = ipchannel.Channel(name, echo, runtime_dir=runtime_dir)
    socks = [channel.connect(timeout=30) for _ in range(connections)]
    conn.send({"pid": os.getpid()})
    conn.recv()
    start = time.monotonic_ns()
    for sock in socks:
        sock.sendall(PAYLOAD)
    served = sum(recv_exactly(sock, len(PAYLOAD)) == PAYLOAD for sock in socks)
    conn.send({"served": served, "ns": time.monotonic_ns() - start})
    _wait_for_stop(conn)
    channel.close()


# -- SharedDict ------------------------------------------------------------------------------------


def dict_host(conn: Connection, name: str, runtime_dir: str) -> None:
    """Open the SharedDict first (so this process hosts) and idle."""
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir)
    conn.send({"pid": os.getpid(), "is_host": shared.channel.channel.is_host})
    _wait_for_stop(conn)
    shared.close()


def dict_writer(conn: Connection, name: str, runtime_dir: str, writes: int, spacing: float) -> None:
    """Write ``writes`` times, ``spacing`` apart; report each write's start time and position."""
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir)
    shared["stamp"] = -1
    conn.send({"pid": os.getpid()})
    conn.recv()  # go
    done = []
    for i in range(writes):
        started = time.monotonic_ns()
        shared["stamp"] = i
        done.append((shared.position, started))
        time.sleep(spacing)
    conn.send(done)
    _wait_for_stop(conn)
    shared.close()


def dict_load(conn: Connection, name: str, runtime_dir: str, seconds: float) -> None:
    """incr one key in a loop for ``seconds``; report how many and how long."""
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir)
    shared.incr("load")
    conn.send({"pid": os.getpid()})
    conn.recv()  # go
    start, n = time.monotonic(), 0
    stop = start + seconds
    while time.monotonic() < stop:
        shared.incr("load")
        n += 1
    conn.send((n, time.monotonic() - start))
    _wait_for_stop(conn)
    shared.close()
