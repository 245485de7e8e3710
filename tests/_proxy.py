"""A TCP forwarder that can partition one process from the server behind it: a link that drops packets.

Every client connects to the proxy, which connects on to ``upstream``. ``partition(pid)``
stops carrying bytes either way on the connections that process opened (found with
psutil: the process that owns the client's end): what the server sends it piles up in
the proxy, as on a link that silently drops it, and no FIN or RST reaches either end.
New connections of a partitioned process are held too (a probe of the host fails), until
``heal(pid)``. ``close()`` ends every connection and the threads, and is what the fixture calls.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import psutil

_CHUNK = 65536


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket, owner: int | None) -> None:
        self.client, self.server, self.owner = client, server, owner
        self.open = threading.Event()  # set: bytes flow; cleared: partitioned
        self.open.set()


class PartitioningProxy:
    """Listens on ``listen``, forwards to ``upstream``; ``partition(pid)`` cuts that process off."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(listen)
        self._links: list[_Link] = []
        self._cut: set[int] = set()  # partitioned pids: their new connections are held too
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="test-proxy", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server, _owner(address))
            with self._lock:
                if self._closed.is_set():  # accepted while close() ran: it did not see this one
                    client.close()
                    server.close()
                    return
                if link.owner in self._cut:
                    link.open.clear()
                self._links.append(link)
                for source, sink in ((client, server), (server, client)):
                    thread = threading.Thread(target=self._pump, args=(link, source, sink), daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket) -> None:
        while not self._closed.is_set():
            link.open.wait()
            if self._closed.is_set():
                return
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            link.open.wait()  # partitioned while this chunk was read: it is never delivered
            if self._closed.is_set():
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def partition(self, pid: int, *, reset: bool = False) -> int:
        """Stop every byte to and from the connections ``pid`` opened, and will; return how many are open.

        ``reset``: its open connections end with an RST instead (a NAT or firewall that forgot them).
        """
        with self._lock:
            self._cut.add(pid)
            links = [link for link in self._links if link.owner == pid]
        for link in links:
            link.open.clear()
            if reset:
                link.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                for sock in (link.client, link.server):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        return len(links)

    def heal(self, pid: int) -> None:
        """Let ``pid``'s connections carry bytes again: what they held goes through now."""
        with self._lock:
            self._cut.discard(pid)
            links = [link for link in self._links if link.owner == pid]
        for link in links:
            link.open.set()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not, on Linux)
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.open.set()
            for sock in (link.client, link.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(5)


def _owner(address: tuple[str, int]) -> int | None:
    """Return the pid of the process whose socket is the other end of a connection from ``address``."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.laddr and tuple(connection.laddr) == tuple(address[:2]) and connection.pid:
            return int(connection.pid)
    return None
