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
import select
import socket
import threading
import time
from typing import TYPE_CHECKING

import psutil
import pytest
from _servers import start_redis
from test_across import Machines, served_by

from ipchannel import _auth
from ipchannel._remote.admission import MAX_UNAUTHENTICATED
from ipchannel._remote.tcp import split_address

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import Peer


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Machines]:
    server = start_redis(tmp_path)
    pool = Machines(server, tmp_path)
    try:
        yield pool
    finally:
        pool.close_all()
        server.stop()


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
    machines: Machines,
) -> None:
    host, (honest,) = machines.boot_served(1)[0], machines.boot(1)
    assert served_by(host) == host.pid
    threads = psutil.Process(host.pid)
    before = threads.num_threads()
    flood = _Flood(_address(host), burst=300, rate=100)
    try:
        peak = before
        watched = time.monotonic()
        while time.monotonic() - watched < 2.0:
            peak = max(peak, threads.num_threads())
            time.sleep(0.02)
        reply = honest.call("request", timeout=20, message="who", wait=10)  # its first connection
        peak = max(peak, threads.num_threads())
    finally:
        flood.close()
    assert reply["reply"]["pid"] == host.pid
    assert reply["took"] < 2.0, reply  # connected and answered during the flood
    assert peak <= before + MAX_UNAUTHENTICATED + 16, (before, peak)


@pytest.mark.timeout(60)
def test_a_client_that_drips_a_byte_at_a_time_is_cut_off_at_the_handshake_deadline(
    machines: Machines,
) -> None:
    host = machines.boot_served(1)[0]
    with socket.create_connection(_address(host), timeout=5) as drip:
        started = time.monotonic()
        assert len(drip.recv(48)) == 48  # the challenge
        closed = None
        while time.monotonic() - started < _auth.HANDSHAKE_TIMEOUT + 4:
            try:
                drip.sendall(b"x")  # a byte every 0.5 s: each recv of the host's gets one in time
                if select.select([drip], [], [], 0.5)[0] and not drip.recv(64):
                    closed = time.monotonic() - started
                    break
            except OSError:
                closed = time.monotonic() - started
                break
    assert closed is not None, "still held by the host after 9 s"
    assert closed < _auth.HANDSHAKE_TIMEOUT + 1.5
