"""Child-process entry points for the benchmarks (top-level, importable under spawn).

Every worker reports over its own Pipe and timestamps with ``time.monotonic_ns()``,
which on Linux is one clock for every process of the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
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
    from collections.abc import Callable

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


def echo_round_trip(sock: socket.socket) -> bytes:
    """Send PAYLOAD and read it back."""
    sock.sendall(PAYLOAD)
    return recv_exactly(sock, len(PAYLOAD))


def mp_round_trip(client: Connection, message: Any) -> Any:
    """multiprocessing.connection: send an object (pickled), receive the reply (unpickled)."""
    client.send(message)
    return client.recv()


def mp_bytes_round_trip(client: Connection) -> bytes:
    """multiprocessing.connection: send PAYLOAD as bytes, receive the reply's bytes."""
    client.send_bytes(PAYLOAD)
    return client.recv_bytes()


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


def _mp_serve(client: Connection, codec: str) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            if codec == "pickle":  # the same work as a RequestChannel host: decode, answer, encode
                client.send(client.recv())
            else:
                client.send_bytes(client.recv_bytes())


def mp_host(conn: Connection, address: str, codec: str = "bytes") -> None:
    """multiprocessing.connection echo: each object unpickled and pickled back ("pickle"), or raw bytes."""
    listener = Listener(address, family="AF_UNIX")

    def accept_forever() -> None:
        with contextlib.suppress(OSError):
            while True:
                client = listener.accept()
                threading.Thread(target=_mp_serve, args=(client, codec), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    conn.send({"pid": os.getpid()})
    _wait_for_stop(conn)
    listener.close()


def parked(conn: Connection) -> None:
    """A Python process doing nothing (blocked on its Pipe): the idle baseline."""
    conn.send({"pid": os.getpid()})
    _wait_for_stop(conn)


def idle_channel_client(conn: Connection, name: str, runtime_dir: str) -> None:
    """A connected Channel client that then does nothing."""
    channel = ipchannel.Channel(name, echo, runtime_dir=runtime_dir)
    sock = channel.connect(timeout=10)
    sock.sendall(PAYLOAD)
    recv_exactly(sock, len(PAYLOAD))
    conn.send({"pid": os.getpid(), "is_host": channel.is_host})
    _wait_for_stop(conn)
    channel.close()


def idle_request_client(conn: Connection, name: str, runtime_dir: str) -> None:
    """A RequestChannel client that has made one request and then does nothing (as a host would)."""
    request_host(conn, name, runtime_dir)


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


def _load(ops: list[Callable[[], object]], seconds: float) -> tuple[int, float]:
    """Call each op in a loop in a thread of its own for ``seconds``; return (calls, elapsed seconds)."""
    counts = [0] * len(ops)
    start = time.monotonic()
    stop = start + seconds

    def run(i: int) -> None:
        op, n = ops[i], 0
        while time.monotonic() < stop:
            op()
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ops))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.monotonic() - start


def _load_rounds(conn: Connection, ops: list[Callable[[], object]]) -> None:
    """Report ready; then run one round of ``_load`` per ("go", seconds) received, until anything else.

    The process, its connections and its warm caches live across rounds, so that rounds of
    different variants can alternate without starting a process inside any measurement.
    """
    conn.send({"pid": os.getpid()})
    with contextlib.suppress(EOFError):
        while isinstance(message := conn.recv(), tuple) and message[0] == "go":
            conn.send(_load(ops, message[1]))


def request_load_client(conn: Connection, name: str, runtime_dir: str, threads: int) -> None:
    channel = ipchannel.RequestChannel(name, on_request, runtime_dir=runtime_dir)
    channel.request("warm up")
    message = "x" * 60
    _load_rounds(conn, [lambda: channel.request(message)] * threads)
    channel.close()


def mp_load_client(conn: Connection, address: str, threads: int) -> None:
    """A connection per thread, each sending raw 64-byte messages."""
    clients = [Client(address, family="AF_UNIX") for _ in range(threads)]
    _load_rounds(conn, [functools.partial(mp_bytes_round_trip, c) for c in clients])
    for c in clients:
        c.close()


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
    conn.send({"pid": os.getpid(), "is_host": shared.channel.is_host})
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


def dict_load(conn: Connection, name: str, runtime_dir: str, threads: int) -> None:
    """One SharedDict (a replica) shared by ``threads`` threads, each incr-ing one key in a loop."""
    shared = ipchannel.SharedDict(name, runtime_dir=runtime_dir)
    shared.incr("load")
    _load_rounds(conn, [lambda: shared.incr("load")] * threads)
    shared.close()


def redis_load(conn: Connection, path: str, threads: int, parser: str) -> None:
    """redis-py INCR of one key from ``threads`` threads, a client (so a connection) per thread.

    ``parser``: the replies' parser, ``_baselines.PLAIN`` (redis-py's own) or ``HIREDIS``.
    """
    from benchmarks._baselines import redis_client  # noqa: PLC0415 - it needs redis-py, an optional extra

    clients = [redis_client(path, parser) for _ in range(threads)]
    for client in clients:
        client.incr("load")  # connect now, not in the first round
    _load_rounds(conn, [functools.partial(c.incr, "load") for c in clients])
    for client in clients:
        client.close()


def diskcache_load(conn: Connection, directory: str, threads: int) -> None:
    """diskcache Cache.incr of one key from ``threads`` threads sharing one Cache (it is thread-safe)."""
    import diskcache  # noqa: PLC0415 - an optional extra

    cache = diskcache.Cache(directory)
    cache.incr("load")
    _load_rounds(conn, [functools.partial(cache.incr, "load")] * threads)
    cache.close()


# -- across machines (benchmarks/across.py): a coordinator elects, hosts serve on TCP --------------

#: the authkey of every channel across machines, and of the multiprocessing.connection baseline
ACROSS_AUTHKEY = b"ipchannel benchmarks across, 32B"
ASK_TIMEOUT = 0.25  # seconds: the timeout of each "who hosts?" request of an across peer
ASK_PACE = 0.002  # seconds between two of a peer's requests: the resolution of the times it reports


def host_pid(message: Any) -> int:
    """RequestChannel handler: answer with this process's pid, so the caller knows who hosts."""
    del message
    return os.getpid()


def across_channel(
    name: str, handler: Any, coordinator: str, machine: tuple[str, str], ttl: float | None = None
) -> ipchannel.RequestChannel:
    """A RequestChannel as one machine opens it, elected through ``coordinator``.

    ``machine`` is (the address it listens on, its runtime directory).
    """
    address, runtime_dir = machine
    return ipchannel.RequestChannel(
        name,
        handler,
        coordinator=coordinator,
        authkey=ACROSS_AUTHKEY,
        listen=f"{address}:0",
        ttl=ttl,
        runtime_dir=runtime_dir,
    )


def across_host(conn: Connection, name: str, coordinator: str, machine: tuple[str, str]) -> None:
    """Host an echo RequestChannel across machines (the first to open it, so this process is elected)."""
    channel = across_channel(name, on_request, coordinator, machine)
    channel.request("elect me", timeout=30)  # the first claim on a new engine holds off up to a ttl
    conn.send({"pid": os.getpid(), "is_host": channel.channel.is_host})
    _wait_for_stop(conn)
    channel.close()


def across_dict(conn: Connection, name: str, coordinator: str, machine: tuple[str, str]) -> None:
    """One machine with a replica of a SharedDict across machines (the first opened hosts it); idle."""
    address, runtime_dir = machine
    shared = ipchannel.SharedDict(
        name,
        coordinator=coordinator,
        authkey=ACROSS_AUTHKEY,
        listen=f"{address}:0",
        runtime_dir=runtime_dir,
        timeout=30,  # the first claim on a new engine holds off up to a ttl
    )
    conn.send({"pid": os.getpid(), "is_host": shared.channel.is_host})
    _wait_for_stop(conn)
    shared.close()


def across_peer(conn: Connection, name: str, coordinator: str, machine: tuple[str, str], ttl: float) -> None:
    """One machine: ask who hosts every ASK_PACE s; report each new host's pid and when it first answered.

    A request that fails other than by its timeout is counted, and the counts go with the next
    report. "close" closes the channel (a graceful handover) and reports when close() was called
    and when it returned; the process then waits for "stop".
    """
    channel = across_channel(name, host_pid, coordinator, machine, ttl)
    first = channel.request("who", timeout=30)
    lock = threading.Lock()  # the asking thread and this one both send

    def report(message: dict[str, Any]) -> None:
        with lock:
            conn.send(message)

    report({"pid": os.getpid(), "host": first, "is_host": channel.channel.is_host})

    def ask() -> None:
        last = first
        errors: dict[str, int] = {}
        while True:
            try:
                pid = channel.request("who", timeout=ASK_TIMEOUT)
            except ipchannel.ChannelClosed:
                return
            except ipchannel.ChannelTimeout:
                continue
            except Exception as exc:  # noqa: BLE001 - counted and reported: request() should resend instead
                what = f"{type(exc).__name__}: {exc}"
                errors[what] = errors.get(what, 0) + 1
                continue
            at = time.monotonic_ns()
            if pid != last:
                last = pid
                report({"host": pid, "at": at, "is_host": channel.channel.is_host, "errors": errors})
                errors = {}
            time.sleep(ASK_PACE)

    threading.Thread(target=ask, daemon=True).start()
    with contextlib.suppress(EOFError):
        while conn.recv() == "close":
            at = time.monotonic_ns()
            channel.close()
            report({"at": at, "returned": time.monotonic_ns()})
    channel.close()


def mp_tcp_host(conn: Connection, address: str, authkey: bytes) -> None:
    """multiprocessing.connection over TCP with an authkey: answer each object with itself."""
    listener = Listener((address, 0), authkey=authkey)

    def serve(client: Connection) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                client.send(client.recv())

    def accept_forever() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept(),), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    conn.send({"pid": os.getpid(), "port": listener.address[1]})
    _wait_for_stop(conn)
    listener.close()


class _EtcdAlone:
    """etcd alone, the calls ipchannel makes: a lease, a create-if-absent, keep-alives, a watch."""

    def __init__(self, host: str, port: int) -> None:
        from etcd3gw.client import Etcd3Client  # noqa: PLC0415 - an optional extra

        self._client = Etcd3Client(host=host, port=port, api_path="/v3/")
        self._lease: Any = None
        self._watch: Any = None

    def claim(self, key: str, ttl_ms: int) -> bool:
        self._lease = self._client.lease(-(-ttl_ms // 1000))  # whole seconds, rounded up, as ipchannel asks
        return self._client.create(key, "x", lease=self._lease)

    def renew(self) -> None:
        self._lease.refresh()

    def release(self) -> None:
        self._lease.revoke()

    def arm(self, key: str) -> None:
        """Watch ``key`` from the revision after its current one: no change can be missed."""
        [(_, meta)] = self._client.get(key, metadata=True)
        self._watch = self._client.watch(key, start_revision=int(meta["mod_revision"]) + 1)

    def wait_gone(self) -> None:
        events, cancel = self._watch
        for event in events:
            if event.get("type") == "DELETE":
                break
        cancel()


class _RedisAlone:
    """Redis alone, the calls ipchannel makes: SET NX PX, PEXPIRE, DEL, keyspace events."""

    def __init__(self, host: str, port: int, db: int) -> None:
        import redis  # noqa: PLC0415 - an optional extra

        self._client = redis.Redis(host=host, port=port, db=db)
        self._db, self._key, self._ttl_ms, self._watched = db, "", 0, ""
        self._pubsub: Any = None

    def claim(self, key: str, ttl_ms: int) -> bool:
        self._key, self._ttl_ms = key, ttl_ms
        return bool(self._client.set(key, "x", nx=True, px=ttl_ms))

    def renew(self) -> None:
        self._client.pexpire(self._key, self._ttl_ms)

    def release(self) -> None:
        self._client.delete(self._key)

    def arm(self, key: str) -> None:
        """Subscribe to ``key``'s keyspace events; return once subscribed (and the key still exists)."""
        self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call,unused-ignore] # typed from redis-py 8.2
        self._pubsub.subscribe(f"__keyspace@{self._db}__:{key}")
        self._watched = key
        deadline = time.monotonic() + 10
        while (message := self._pubsub.get_message(timeout=1)) is None or message["type"] != "subscribe":
            if time.monotonic() > deadline:
                raise RuntimeError(f"no subscription to {key}'s keyspace events within 10 s")
        if not self._client.exists(key):
            raise RuntimeError(f"{key} was gone before it was watched")

    def wait_gone(self) -> None:
        """Return once the key is deleted or has expired.

        It is read every 10 ms too: a read expires a key whose TTL has passed at once, where
        Redis's own 10 Hz cycle takes up to 100 ms more (ipchannel's waiters read the key too).
        """
        deadline = time.monotonic() + 60
        while True:
            message = self._pubsub.get_message(timeout=0.01)
            if message is not None and message["data"] in {b"del", b"expired"}:
                break
            if message is None and not self._client.exists(self._watched):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the key was neither deleted nor expired within 60 s")
        self._pubsub.close()


def _engine_alone(endpoint: tuple[str, str, int, int]) -> _EtcdAlone | _RedisAlone:
    """``(engine, host, port, db)`` -> a client of that engine alone."""
    engine, host, port, db = endpoint
    return _EtcdAlone(host, port) if engine == "etcd" else _RedisAlone(host, port, db)


def engine_holder(conn: Connection, endpoint: tuple[str, str, int, int], key: str, ttl_ms: int) -> None:
    """The engine used as a host uses it: claim ``key`` for the ttl, renew it every ttl/3 until "release"."""
    engine = _engine_alone(endpoint)
    if not engine.claim(key, ttl_ms):
        raise RuntimeError(f"{key} is taken")
    conn.send({"pid": os.getpid()})
    with contextlib.suppress(EOFError):
        while not conn.poll(ttl_ms / 3000):
            engine.renew()
        if conn.recv() == "release":
            at = time.monotonic_ns()
            engine.release()
            conn.send({"at": at, "returned": time.monotonic_ns()})
            _wait_for_stop(conn)


def engine_waiter(conn: Connection, endpoint: tuple[str, str, int, int], ttl_ms: int) -> None:
    """The engine used as a waiting peer uses it: watch each key it is sent; once it is gone, claim it."""
    engine = _engine_alone(endpoint)
    conn.send({"pid": os.getpid()})
    with contextlib.suppress(EOFError):
        while (message := conn.recv()) != "stop":
            engine.arm(message["watch"])
            conn.send({"watching": message["watch"]})
            engine.wait_gone()
            seen = time.monotonic_ns()
            claimed = engine.claim(message["watch"], ttl_ms)
            conn.send({"seen": seen, "claimed": time.monotonic_ns(), "ok": claimed})
