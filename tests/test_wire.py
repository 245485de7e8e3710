"""Strangers on a TCP host's port, and a relay on the path: what the host and its clients refuse.

Across machines (a real Redis as the coordinator, peers that each play a machine):
connections that never authenticate cost the host a bounded number of threads and a
bounded time each; the honest peer is served meanwhile. A relay that knows no key
(``_Relay``, a forwarding proxy that alters what it carries after the handshake) can
neither change, replay, reorder nor splice frames: the receiver closes the connection
and logs a WARNING, and never delivers the bytes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import pytest
from _servers import RedisServer, free_ports, shared_redis
from conftest import wait_until
from test_across import Machines, served_by

import ipchannel
from ipchannel import _auth
from ipchannel._remote.admission import MAX_UNAUTHENTICATED
from ipchannel._remote.records import RecordSession, RecordSocket
from ipchannel._remote.tcp import format_address, split_address
from ipchannel._requests.wire import REQUEST, build_frame

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from _certs import Certificates
    from conftest import Peer


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from shared_redis(tmp_path_factory)


@pytest.fixture
def machines(tmp_path: Path, module_redis: RedisServer) -> Iterator[Machines]:
    pool = Machines(module_redis.emptied(), tmp_path)
    try:
        yield pool
    finally:
        pool.close_all()


def _address(host: Peer) -> tuple[str, int]:
    return split_address(host.call("info")["address"])


class _Flood:
    """Opens silent connections to ``address``: ``burst`` at once, then ``rate`` a second; holds them."""

    def __init__(self, address: tuple[str, int], burst: int, rate: float) -> None:
        self._address, self._rate = address, rate
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        for _ in range(burst):
            self._open()
        self._thread = threading.Thread(target=self._run, name="test-flood", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        with contextlib.suppress(OSError):
            self.held.append(socket.create_connection(self._address, timeout=5))

    def _run(self) -> None:
        while not self._stop.wait(1 / self._rate):
            self._open()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.held:
            sock.close()


@pytest.mark.timeout(120)
def test_a_flood_of_silent_connections_keeps_the_host_s_threads_bounded_and_serves_an_honest_peer(
    machines: Machines, tmp_path: Path
) -> None:
    host, (honest,) = machines.boot_served(1)[0], machines.boot(1)
    assert served_by(host) == host.pid
    host.call("log_to", path=str(log := tmp_path / "host.log"))
    host.call("handshake_timeout", seconds=(deadline := 2.0))  # the silent ones run out sooner than 5 s
    threads = psutil.Process(host.pid)
    before = threads.num_threads()
    flood = _Flood(_address(host), burst=300, rate=100)
    try:
        peak, started = before, time.monotonic()

        def watch(seconds: float) -> None:
            nonlocal peak
            while time.monotonic() - started < seconds:
                peak = max(peak, threads.num_threads())
                time.sleep(0.02)

        watch(2.0)
        reply = honest.call("request", timeout=20, message="who", wait=10)  # its first connection
        watch(deadline + 1.5)  # silent ones run out of time: refused, and logged
    finally:
        flood.close()
    wait_until(lambda: threads.num_threads() <= before + 8, timeout=15)  # every handshake ended
    warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
    assert len(warnings) <= 3, warnings[:5]  # a port scanner does not fill the log
    assert reply["reply"]["pid"] == host.pid
    assert reply["took"] < 2.0, reply  # connected and answered during the flood
    # the bound, and slack for evicted handshakes' threads still ending (sampled every 20 ms)
    assert peak <= before + MAX_UNAUTHENTICATED + 32, (before, peak)


@pytest.mark.timeout(60)
def test_a_client_that_drips_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline(
    machines: Machines,
) -> None:
    host = machines.boot_served(1)[0]
    host.call("handshake_timeout", seconds=(deadline := 2.0))  # not 5 s: a byte every 0.5 s beats any recv's
    with socket.create_connection(_address(host), timeout=5) as drip:
        started = time.monotonic()
        assert len(drip.recv(48)) == 48  # the challenge
        closed = None
        while time.monotonic() - started < deadline + 4:
            try:
                drip.sendall(b"x")  # a byte every 0.5 s: each recv of the host's gets one in time
                if select.select([drip], [], [], 0.5)[0] and not drip.recv(64):
                    closed = time.monotonic() - started
                    break
            except OSError:
                closed = time.monotonic() - started
                break
    assert closed is not None, f"still held by the host after {deadline + 4} s"
    assert closed < deadline + 1.5


@pytest.fixture
def certificate(certificates: Certificates) -> tuple[str, str]:
    return certificates.self_signed("ipchannel-test", ",".join(f"IP:127.0.0.{i}" for i in range(2, 10)))


def _drip_tls_then_the_answer(address: tuple[str, int], cafile: str, deadline: float) -> float | None:
    """Drip a TLS ClientHello over 2.5 s, then the authkey answer a byte at a time; when was it cut off?"""
    tls = ssl.create_default_context(cafile=cafile).wrap_bio(
        incoming := ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=address[0]
    )
    with socket.create_connection(address, timeout=5) as raw:
        started = time.monotonic()
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    data = outgoing.read()
                    for at in range(
                        0, len(data), step := max(1, len(data) // 5)
                    ):  # a first flight in 5 drips
                        raw.sendall(data[at : at + step])
                        time.sleep(0.5 if len(data) > 200 else 0)
                    if not (chunk := raw.recv(65536)):
                        return time.monotonic() - started
                    incoming.write(chunk)
            raw.sendall(outgoing.read())
            while time.monotonic() - started < deadline:
                tls.write(b"x")  # a byte of the answer every 0.5 s
                raw.sendall(outgoing.read())
                if select.select([raw], [], [], 0.5)[0] and not raw.recv(65536):
                    return time.monotonic() - started
        except OSError:
            return time.monotonic() - started
    return None


@pytest.mark.timeout(60)
def test_one_deadline_covers_tls_and_the_authkey_handshake(
    machines: Machines, certificate: tuple[str, str]
) -> None:
    host = machines.boot_served(1, tls=certificate)[0]
    # not 5 s: TLS (2.5 s of drips) then the answer; a deadline of each would end after 6 s, not 3.5
    host.call("handshake_timeout", seconds=(deadline := 3.5))
    closed = _drip_tls_then_the_answer(_address(host), certificate[0], deadline + 4)
    assert closed is not None, f"still held by the host after {deadline + 4} s"
    assert closed < deadline + 1.5


# -- a relay on the path, that knows no key ---------------------------------------------------

KEY = b"k" * 32
_C = TypeVar("_C", ipchannel.Channel, ipchannel.RequestChannel)
_TO_HOST_HANDSHAKE = 32 + 32  # the client's answer and nonce (``_auth``)
_TO_CLIENT_HANDSHAKE = 48 + 48  # the challenge, then the welcome and the host's proof


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.to_host = 0  # bytes carried each way so far
        self.to_client = 0


class _Relay:
    """Forwards connections to ``upstream``; after the handshake, ``to_host``/``to_client`` may alter them.

    ``to_host(relay, index, data)`` gets what link ``index``'s client sends after its
    handshake and writes what it likes where it likes; ``to_client(index, data)`` returns
    what to carry to the client after the handshake.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        to_host: Callable[[_Relay, int, bytes], None] | None = None,
        to_client: Callable[[int, bytes], bytes] | None = None,
    ) -> None:
        self._upstream, self._to_host, self._to_client = upstream, to_host, to_client
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()[:2]
        self.links: list[_Link] = []
        self._threads = [threading.Thread(target=self._accept, name="test-relay", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                return
            server.settimeout(None)
            link = _Link(client, server)
            self.links.append(link)
            for target in (self._pump_to_host, self._pump_to_client):
                thread = threading.Thread(target=target, args=(link, len(self.links) - 1), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump_to_host(self, link: _Link, index: int) -> None:
        while data := _read(link.client):
            plain = max(0, min(len(data), _TO_HOST_HANDSHAKE - link.to_host))
            link.to_host += len(data)
            with contextlib.suppress(OSError):
                if plain:
                    link.server.sendall(data[:plain])
                if data[plain:]:
                    (self._to_host or _Relay.forward)(self, index, data[plain:])
        with contextlib.suppress(OSError):
            link.server.shutdown(socket.SHUT_WR)

    def _pump_to_client(self, link: _Link, index: int) -> None:
        while data := _read(link.server):
            plain = max(0, min(len(data), _TO_CLIENT_HANDSHAKE - link.to_client))
            link.to_client += len(data)
            rest = data[plain:]
            if rest and self._to_client is not None:
                rest = self._to_client(index, rest)
            with contextlib.suppress(OSError):
                link.client.sendall(data[:plain] + rest)
        with contextlib.suppress(OSError):
            link.client.shutdown(socket.SHUT_WR)

    def forward(self, index: int, data: bytes) -> None:
        self.links[index].server.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() under way: close() alone does not
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for link in self.links:
            for sock in (link.client, link.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(5)


def _read(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _flip(data: bytes, at: int) -> bytes:
    at = min(at, len(data) - 1)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.fixture
def redis_url(module_redis: RedisServer) -> str:
    return module_redis.emptied().url


@contextlib.contextmanager
def _hosted_through_a_relay(
    redis_url: str, make: Callable[..., _C], **relay: Any
) -> Iterator[tuple[_C, _Relay]]:
    """This process hosts ``make(...)``'s channel, advertising a relay: every connection takes it."""
    port = free_ports(1)[0]
    through = _Relay(("127.0.0.2", port), **relay)
    try:
        address = format_address(*through.address)
        options = {"coordinator": redis_url, "authkey": KEY, "ttl": 1.0, "listen": f"127.0.0.2:{port}"}
        with make(**options, advertise=address) as channel:
            yield channel, through
    finally:
        through.close()


class _Handler:
    """A raw handler that keeps what each connection brought, and says when a connection ended."""

    def __init__(self, answer: tuple[bytes, bytes] | None = None) -> None:
        self.received: list[bytearray] = []  # one per connection, as it arrives
        self.ended = threading.Event()
        self._answer = answer  # (when this comes, send that)

    def seen(self) -> bytes:
        return b"".join(self.received)

    def __call__(self, conn: socket.socket) -> None:
        self.received.append(data := bytearray())
        try:
            while chunk := conn.recv(4096):
                data += chunk
                if self._answer is not None and data == self._answer[0]:
                    conn.sendall(self._answer[1])
        except OSError:
            pass  # refused: the record layer closed it
        finally:
            self.ended.set()


def _closed(sock: socket.socket) -> bool:
    """True if the other end closed ``sock`` (EOF or an error), within 5 s."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ipchannel.ChannelError):
        return True


def _hosting(
    redis_url: str, handler: _Handler, **relay: Any
) -> contextlib.AbstractContextManager[tuple[ipchannel.Channel, _Relay]]:
    return _hosted_through_a_relay(redis_url, functools.partial(ipchannel.Channel, "relay", handler), **relay)


REFUSED = "failed its authentication"


@pytest.mark.timeout(60)
def test_a_byte_flipped_on_the_way_to_the_host_is_never_delivered(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    handler = _Handler()
    with _hosting(redis_url, handler, to_host=lambda relay, i, data: relay.forward(i, _flip(data, 10))) as (
        channel,
        _,
    ):
        sock = channel.connect(timeout=10)
        sock.sendall(b"transfer 100 to alice")
        wait_until(lambda: handler.ended.is_set() or handler.seen(), timeout=10)
        assert handler.seen() == b""  # not one byte of it
        assert _closed(sock)
    assert REFUSED in caplog.text


@pytest.mark.timeout(60)
def test_a_frame_replayed_by_a_relay_is_refused(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    handler = _Handler()

    def twice(relay: _Relay, index: int, data: bytes) -> None:
        relay.forward(index, data)
        relay.forward(index, data)

    with _hosting(redis_url, handler, to_host=twice) as (channel, _):
        sock = channel.connect(timeout=10)
        sock.sendall(b"pay 5;")
        wait_until(lambda: handler.ended.is_set() or handler.seen().count(b"pay 5;") > 1, timeout=10)
        assert handler.seen() in {b"", b"pay 5;"}  # once at most
        assert _closed(sock)
    assert REFUSED in caplog.text


@pytest.mark.timeout(60)
def test_frames_reordered_by_a_relay_are_refused(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    handler = _Handler()
    held: list[bytes] = []

    def swap(relay: _Relay, index: int, data: bytes) -> None:
        if not held:
            held.append(data)
        else:
            relay.forward(index, data)
            relay.forward(index, held[0])

    with _hosting(redis_url, handler, to_host=swap) as (channel, _):
        sock = channel.connect(timeout=10)
        sock.sendall(b"first;")
        wait_until(lambda: held, timeout=10)
        sock.sendall(b"second;")
        wait_until(lambda: handler.ended.is_set() or b"second;" in handler.seen(), timeout=10)
        assert handler.seen() == b""
        assert _closed(sock)
    assert REFUSED in caplog.text


@pytest.mark.timeout(60)
def test_two_sessions_spliced_by_a_relay_are_refused(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    handler = _Handler()

    def splice(relay: _Relay, index: int, data: bytes) -> None:
        relay.forward(index - 1 if index else index, data)  # the second connection's bytes on the first

    with _hosting(redis_url, handler, to_host=splice) as (channel, relay):
        first = channel.connect(timeout=10)
        second = channel.connect(timeout=10)
        assert len(relay.links) >= 2
        second.sendall(b"from the second")
        wait_until(lambda: handler.ended.is_set() or b"from the second" in handler.seen(), timeout=10)
        assert b"from the second" not in handler.seen()
        assert _closed(first)
    assert REFUSED in caplog.text


@pytest.mark.timeout(60)
def test_a_byte_flipped_on_the_way_to_the_client_is_never_delivered(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    handler = _Handler(answer=(b"go", b"welcome"))
    asked: set[int] = set()

    def ask(relay: _Relay, index: int, data: bytes) -> None:
        asked.add(index)
        relay.forward(index, data)

    def flip_the_answer(index: int, data: bytes) -> bytes:
        return _flip(data, len(data) - 1) if index in asked else data  # past the hello: the answer

    with _hosting(redis_url, handler, to_host=ask, to_client=flip_the_answer) as (channel, _):
        sock = channel.connect(timeout=10)
        sock.sendall(b"go")
        sock.settimeout(5)
        try:
            answer = sock.recv(64)
        except ConnectionAbortedError:
            answer = None
        assert answer is None, answer  # never the altered bytes (b"welcomd")
        assert _closed(sock)
    assert REFUSED in caplog.text


class _Exploit:
    """A pickle that makes a directory when it is loaded: what a relay would send a pickle host."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


@pytest.mark.timeout(60)
def test_a_pickle_a_relay_substitutes_never_runs_on_the_host(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ipchannel")
    planted = tmp_path / "planted"
    # padded: as long as a record of it would be, so that a host in records reads it all and checks it
    exploit = build_frame(REQUEST, 1, pickle.dumps(_Exploit(planted))) + bytes(64)

    def substitute(relay: _Relay, index: int, data: bytes) -> None:
        del data
        relay.forward(index, exploit)

    make = functools.partial(ipchannel.RequestChannel, "relay", lambda message: message, codec="pickle")
    with (
        _hosted_through_a_relay(redis_url, make, to_host=substitute) as (channel, _),
        contextlib.suppress(ipchannel.ChannelError, OSError),  # refused: the request is not answered
    ):
        channel.request("hello", timeout=3)
    assert not planted.exists()
    assert REFUSED in caplog.text


# -- the record layer on a socket pair (no channel) --------------------------------------------


def _record_pair() -> tuple[RecordSocket, socket.socket, RecordSession]:
    """A host's record socket and the client's end with its session, keyed alike."""
    host_end, client_end = socket.socketpair()
    transcript = os.urandom(2 * _auth.NONCE)
    host = RecordSocket(host_end, RecordSession(KEY, transcript, host=True, channel="unit"))
    return host, client_end, RecordSession(KEY, transcript, host=False, channel="unit")


def _read_all(sock: socket.socket, session: RecordSession, size: int) -> bytes:
    buffer, got = bytearray(size), 0
    with memoryview(buffer) as view:
        while got < size:
            count = session.recv_into(sock, view[got:], size - got)
            assert count, f"closed after {got} of {size} bytes"
            got += count
    return bytes(buffer)


@pytest.mark.timeout(30)
def test_a_send_that_would_block_halfway_through_a_record_is_finished_by_sending_it_again() -> None:
    host, client_end, client = _record_pair()
    with host, client_end:
        big = os.urandom(3 << 20)  # several records, more than a socket pair's buffer takes
        assert host.send(big, socket.MSG_DONTWAIT) == 0  # part written: the outbox sends it again
        sender = threading.Thread(target=host.sendall, args=(big,), name="test-sendall")
        sender.start()
        assert _read_all(client_end, client, len(big)) == big  # once, whole
        sender.join(10)
        assert host.send(b"after", socket.MSG_DONTWAIT) == len(b"after")
        assert _read_all(client_end, client, 5) == b"after"
        client.sendall(client_end, b"and back", 0)
        assert host.recv(64) == b"and back"


def test_a_record_from_the_other_direction_is_refused() -> None:
    host, client_end, _ = _record_pair()
    with host, client_end:
        host.sendall(b"reflected")
        socket.socket.sendall(client_end, client_end.recv(4096))  # the host's record, sent back to it
        with pytest.raises(ConnectionAbortedError, match="failed its authentication"):
            host.recv(64)
        assert client_end.recv(1) == b""  # and the host ended the connection


def test_a_client_facing_a_host_without_records_is_told_the_versions_differ() -> None:
    host_end, client_end = socket.socketpair()
    with host_end, client_end:
        host_end.sendall(b"#IPCHANNEL-AUTH#" + bytes(_auth.NONCE))  # an older host's challenge
        with pytest.raises(ipchannel.AuthenticationError, match="another ipchannel version"):
            _auth.client_handshake(client_end, KEY, "unit", records=True)


# -- what a handler or client does with its socket: non-blocking and timed-out writes -------------


def _send_without_blocking(sock: socket.socket, data: bytes, deadline: float, flags: int = 0) -> None:
    """Send ``data`` as code on a non-blocking socket does: ``send``, and wait whenever it would block."""
    view = memoryview(data)
    while view.nbytes:
        assert time.monotonic() < deadline, f"{view.nbytes} bytes still unsent"
        try:
            view = view[sock.send(view, flags) :]
        except BlockingIOError:
            select.select([], [sock], [], 0.5)


@pytest.mark.timeout(60)
def test_a_handler_sending_on_a_non_blocking_socket_delivers_every_byte_once(redis_url: str) -> None:
    big = os.urandom(3 << 20)  # more than the socket buffers take: some sends would block halfway

    def handler(conn: socket.socket) -> None:
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # so that sends do block halfway
        conn.settimeout(0.0)
        _send_without_blocking(conn, big, time.monotonic() + 30)
        conn.settimeout(None)
        conn.recv(1)  # until the client has it all

    _receive_from(redis_url, handler, big)


def _receive_from(redis_url: str, handler: Callable[[socket.socket], None], big: bytes) -> None:
    """Connect to a host running ``handler``, ask with a byte, and check that ``big`` arrives whole."""
    with _hosted_through_a_relay(redis_url, functools.partial(ipchannel.Channel, "relay", handler)) as (
        channel,
        _,
    ):
        sock = channel.connect(timeout=10)
        sock.sendall(b"?")
        got = bytearray()
        sock.settimeout(10)
        while len(got) < len(big):
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(got)} bytes"
            got += chunk
        assert got == big
        sock.sendall(b".")


@pytest.mark.timeout(60)
def test_a_client_sending_on_a_non_blocking_socket_delivers_every_byte_once(redis_url: str) -> None:
    big = os.urandom(3 << 20)
    handler = _Handler()
    with _hosting(redis_url, handler) as (channel, _):
        sock = channel.connect(timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.settimeout(0.0)
        _send_without_blocking(sock, big, time.monotonic() + 30)
        wait_until(lambda: handler.ended.is_set() or len(handler.seen()) >= len(big), timeout=20)
        assert handler.seen() == big


@pytest.mark.timeout(60)
def test_a_handler_sending_more_than_a_batch_with_msg_dontwait_delivers_every_byte_once(
    redis_url: str,
) -> None:
    big = os.urandom(6 << 20)  # more than one write's batch of records (16 x 256 KiB)

    def handler(conn: socket.socket) -> None:
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        _send_without_blocking(conn, big, time.monotonic() + 30, socket.MSG_DONTWAIT)
        conn.recv(1)

    _receive_from(redis_url, handler, big)


@pytest.mark.timeout(30)
def test_a_zero_byte_read_returns_at_once_and_a_negative_size_is_refused_as_on_a_plain_socket() -> None:
    host, client_end, client = _record_pair()
    with host, client_end:
        host.settimeout(5)
        started = time.monotonic()
        assert host.recv(0) == b""  # a plain socket's answer, at once: not a wait for the next record
        assert time.monotonic() - started < 1.0
        client.sendall(client_end, b"data", 0)
        with pytest.raises(ValueError, match="negative"):
            host.recv_into(bytearray(4), -1)
        assert host.recv(64) == b"data"  # nothing lost to either


@pytest.mark.timeout(60)
def test_two_threads_reading_one_client_socket_split_the_stream_and_lose_nothing(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # as on a plain socket: each gets some of the bytes; the records must not take the two readers'
    # chunks, fed in another order than read, for an attack
    caplog.set_level(logging.WARNING, logger="ipchannel")
    block, blocks = os.urandom(1 << 20), 16

    def stream(conn: socket.socket) -> None:
        conn.recv(1)
        for _ in range(blocks):
            conn.sendall(block)

    with _hosted_through_a_relay(redis_url, functools.partial(ipchannel.Channel, "relay", stream)) as (
        channel,
        _,
    ):
        sock = channel.connect(timeout=10)
        sock.settimeout(10)
        got, errors = [0, 0], []

        def read(index: int) -> None:
            try:
                while sum(got) < len(block) * blocks and (chunk := sock.recv(70_000)):
                    got[index] += len(chunk)
            except OSError as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read, args=(i,), name=f"test-reader-{i}") for i in range(2)]
        for reader in readers:
            reader.start()
        sock.sendall(b"?")
        for reader in readers:
            reader.join(30)
        assert not errors, errors
        assert sum(got) == len(block) * blocks
    assert REFUSED not in caplog.text
