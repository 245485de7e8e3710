"""The standby: the process that hosts next, ready before the host dies (one machine).

Whoever holds ``.NAME.standby.lock`` stands by. It has its host server listening
on its private path (handler threads ready), and a side socket whose path is in
the standby record. When the host dies, a client connects to the side socket at
once and waits in its backlog for a hello carrying the new host record (a 4-byte
length, then the record's JSON); the standby accepts nothing there until it holds
the host lock and has published that record and its socket (``promote``). So
nobody is served by it before it hosts, and the clients of a dead host need
neither a file read nor a lock attempt to find the next one. A client gives the
wait up when the standby dies (its socket is reset) or another process is
recorded as host (a frozen standby).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
from typing import TYPE_CHECKING

from .._core.server import IDLE_THREADS
from .._seams.record import HostRecord

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._core.server import HostedServer
    from .._timing import Deadline

__all__ = ["HELLO", "WAIT_SLICE", "StandbyListener", "await_hello"]

_LOGGER = logging.getLogger("ipchannel")
HELLO = struct.Struct("!I")  # the length of the host record that follows
_MAX_HELLO = 65536
WAIT_SLICE = 0.02  # seconds between checks that the standby is still the one to wait for
_BACKLOG = 128  # every client of the dead host may wait here at once


class StandbyListener:
    """The standby's host server (listening privately) and its side socket, until it hosts or stops."""

    def __init__(self, side_path: Path, start_server: Callable[[], HostedServer]) -> None:
        """Listen on ``side_path``, then start the server.

        In that order: a process listening for the channel without a side socket is the
        host (what ``benchmarks/soak.py`` counts).
        """
        self._side_path = side_path
        self._side = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._side.bind(str(side_path))
            os.chmod(side_path, 0o600)
            self._side.listen(_BACKLOG)
            st = os.lstat(side_path)
            self._identity = (st.st_dev, st.st_ino)
            self._server = start_server()
            self._server.keep_ready(IDLE_THREADS)
        except BaseException:
            self._side.close()
            with contextlib.suppress(OSError):
                side_path.unlink()
            raise

    @property
    def listener(self) -> HostedServer:
        """The server this process hosts with once promoted."""
        return self._server

    @property
    def address(self) -> str:
        """The side socket's path, for the standby record."""
        return str(self._side_path)

    def promote(self, record: HostRecord) -> int:
        """As host now (record and socket published): greet every waiting client, hand it to the server.

        Returns how many waited. The side socket then closes: a client arriving later
        finds the new host's record instead.
        """
        body = record.to_json()
        hello = HELLO.pack(len(body)) + body
        greeted = 0
        self._side.settimeout(0.0)  # accept what waits, then stop
        while True:
            try:
                conn, _address = self._side.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                _LOGGER.debug("standby: accepting a waiting client failed: %s", exc)
                break
            conn.settimeout(None)
            if not self._server.admit(conn):
                conn.close()  # another uid: refused, as the server refuses it
                continue
            try:
                conn.sendall(hello)
                self._server.serve_connection(conn)
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others'
                _LOGGER.debug("standby: a waiting client could not be served: %s", exc)
                conn.close()  # it gave up meanwhile (or no thread could start for it)
                continue
            greeted += 1
        self._close_side()
        return greeted

    def close(self) -> None:
        """Stop standing by: the server stops, then clients waiting on the side socket are reset."""
        self._server.stop_listening()
        self._server.close_connections()
        self._close_side()

    def abandon_after_fork(self) -> None:
        """In a forked child: drop our copies of the parent's sockets, touching nothing shared."""
        with contextlib.suppress(OSError):
            self._side.close()
        self._server.abandon_after_fork()

    def _close_side(self) -> None:
        if self._side.fileno() == -1:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self._side_path)
            if (st.st_dev, st.st_ino) == self._identity:  # never another process's file
                self._side_path.unlink()
        self._side.close()


def await_hello(sock: socket.socket, deadline: Deadline, give_up: Callable[[], bool]) -> HostRecord | None:
    """Wait on a standby's side socket for its hello; return its host record, or None to look elsewhere.

    None: the deadline passed, the standby went away (EOF, reset), or ``give_up()``
    turned true (checked every ``WAIT_SLICE``: another process hosts).
    """
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            return None
        if poller.poll(min(WAIT_SLICE, remaining) * 1000):
            break
        if give_up():
            return None
    try:
        head = socket.socket.recv(sock, HELLO.size, socket.MSG_WAITALL)
        if len(head) != HELLO.size or not 0 < (size := HELLO.unpack(head)[0]) <= _MAX_HELLO:
            return None
        body = socket.socket.recv(sock, size, socket.MSG_WAITALL)
        return HostRecord.from_json(body) if len(body) == size else None
    except (OSError, ValueError):
        return None
