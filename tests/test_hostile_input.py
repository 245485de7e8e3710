"""Hostile input against a real host process: fuzzed frames, slow-loris connections, a stuck handler.

Throughout, a well-behaved client keeps getting answers, and the host's memory stays bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import threading
from typing import TYPE_CHECKING

import psutil
import pytest
from conftest import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipchannel

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import Peer, Peers

MiB = 1 << 20
_HEADER = struct.Struct("!I")
_ENVELOPE = struct.Struct("!BQ")
_DEFAULT_MAX = 64 * MiB


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


# What a confused or malicious local process might write on a connection.
_GARBAGE = st.one_of(
    st.binary(max_size=256),  # anything at all
    st.binary(min_size=1, max_size=64).map(lambda b: _frame(b)[: len(b)]),  # a frame cut short
    st.integers(_DEFAULT_MAX + 1, 2**32 - 1).map(lambda n: _HEADER.pack(n) + b"xyz"),  # over the limit
    st.tuples(st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(max_size=64)).map(
        lambda t: _frame(_ENVELOPE.pack(t[0], t[1]) + t[2])  # any kind, any id, any body
    ),
    st.binary(max_size=64).map(lambda b: _frame(_ENVELOPE.pack(1, 7) + b)),  # a request that is not JSON
)


@pytest.fixture
def host(peers: Peers) -> Peer:
    (peer,) = peers.start_requests(1)
    peer.call("request", message="elect me")
    return peer


@pytest.fixture
def client(runtime_dir: Path) -> Iterator[ipchannel.RequestChannel]:  # noqa: ARG001 - IPCHANNEL_DIR
    with ipchannel.RequestChannel("test", None) as channel:
        yield channel


def _raw(runtime_dir: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(runtime_dir / "test.sock"))
    return sock


def _unread(sock: socket.socket) -> int:
    """Bytes we sent that the other side has not read yet (Linux: SIOCOUTQ on a Unix socket)."""
    (count,) = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))
    return int(count)


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@pytest.mark.timeout(120)
def test_fuzzed_frames_never_disturb_a_well_behaved_client(
    host: Peer, client: ipchannel.RequestChannel, runtime_dir: Path
) -> None:
    assert client.request("before")["pid"] == host.pid
    rss_before = _rss(host.pid)

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,  # the same examples every run: a failure here is reproducible
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(garbage=_GARBAGE)
    def throw(garbage: bytes) -> None:
        with _raw(runtime_dir) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)  # then wait for the host to finish with it
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
        assert client.request(len(garbage))["message"] == len(garbage)

    throw()
    assert client.request("after")["pid"] == host.pid
    assert _rss(host.pid) - rss_before < 16 * MiB


@pytest.mark.timeout(120)
def test_slow_loris_connections_and_huge_headers_cost_bounded_memory(
    host: Peer, client: ipchannel.RequestChannel, runtime_dir: Path
) -> None:
    client.request("warm up")
    rss_before = _rss(host.pid)
    held = []
    try:
        for i in range(100):  # each sends a byte and then nothing: a thread each, waiting
            sock = _raw(runtime_dir)
            sock.sendall(b"\x00")
            held.append(sock)
            if i % 10 == 0:  # answered meanwhile (not starved behind the idle connections)
                assert client.request(i, timeout=5)["message"] == i
        for _ in range(20):  # each announces a frame just under the limit, then stalls
            sock = _raw(runtime_dir)
            sock.sendall(_HEADER.pack(_DEFAULT_MAX - 1) + b"x" * 100_000)
            held.append(sock)
        assert client.request("still here")["message"] == "still here"
        wait_until(lambda: not any(_unread(sock) for sock in held), timeout=10)  # the host read it all
        # 20 announced 64 MiB frames: memory follows the bytes that arrived, not the headers
        assert _rss(host.pid) - rss_before < 64 * MiB
    finally:
        for sock in held:
            sock.close()
    assert client.request("after")["pid"] == host.pid


@pytest.mark.timeout(60)
def test_a_stuck_request_handler_does_not_stop_other_connections(
    host: Peer, client: ipchannel.RequestChannel, runtime_dir: Path
) -> None:
    hold = runtime_dir / f"hold-{host.pid}"
    hold.touch()
    stuck: list[object] = []
    waiter = threading.Thread(target=lambda: stuck.append(client.request({"op": "hold"}, timeout=30)))
    waiter.start()
    try:
        wait_until((runtime_dir / f"entered-{host.pid}").exists, timeout=10)  # it is inside on_request
        for i in range(20):  # on other connections, while that handler is stuck
            assert client.request(i, timeout=2)["message"] == i
    finally:
        hold.unlink()
        waiter.join(30)
    assert stuck == [{"pid": host.pid, "message": {"op": "hold"}}]


@pytest.mark.timeout(60)
def test_a_subscriber_that_sends_requests_and_reads_nothing_holds_up_no_publisher(
    host: Peer, client: ipchannel.RequestChannel, runtime_dir: Path
) -> None:
    # The answers to its requests went out under the lock of its outbox, blocking: then every
    # publisher waited for that lock (the host's own publish too, past any timeout).
    host.call("subscribe")
    with contextlib.closing(_raw(runtime_dir)) as sock:
        sock.sendall(_frame(_ENVELOPE.pack(3, 1) + b"\x00"))  # SUBSCRIBE
        request = _frame(_ENVELOPE.pack(1, 2) + b'"' + b"y" * 100_000 + b'"')
        sock.settimeout(None)
        flooding = threading.Thread(target=lambda: _send_until_closed(sock, request), daemon=True)
        flooding.start()
        wait_until(lambda: _unread(sock) > 0, timeout=10)  # the host stopped reading: its answers wait
        for i in range(3):
            client.publish({"i": i}, timeout=3)
            host.call("publish", message={"own": i}, timeout=5)
        wait_until(lambda: host.call("received")["received"][-1] == {"own": 2})
        sock.shutdown(socket.SHUT_RDWR)
        flooding.join(10)


def _send_until_closed(sock: socket.socket, frame: bytes) -> None:
    with contextlib.suppress(OSError):
        while True:
            sock.sendall(frame)
