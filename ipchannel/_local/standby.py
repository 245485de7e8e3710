"""The standby: the process that hosts next, ready before the host dies (a capability of one machine).

Whoever holds ``.NAME.standby.lock`` stands by. The core keeps its server listening
on its private path (handler threads ready); this module gives it a side socket, named
in the standby record ``NAME.standby``. When the host dies, a client connects to the
side socket at once and waits in its backlog for a hello carrying the new host record
(a 4-byte length, then the record's JSON); the standby accepts nothing there until it
holds the host lock and has published that record and its socket (``promote``). So
nobody is served by it before it hosts, and the clients of a dead host need neither a
file read nor a lock attempt to find the next one. A client gives the wait up when the
standby dies (its socket is reset) or another process is recorded as host (a frozen standby).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import time
from typing import TYPE_CHECKING

from .. import _platform
from .._auth import authenticated, check_auth_matches
from .._seams.record import HostRecord
from .coordinator import read_record, remove_record, write_record
from .lock import HostLock
from .paths import ensure_runtime_dir
from .unix import close_privately, listen_privately, same_user

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .._seams.base import Connection
    from .._timing import Deadline
    from .coordinator import LocalCoordinator
    from .paths import ChannelPaths

__all__ = ["HELLO", "STANDBY_GRACE", "WAIT_SLICE", "LocalStandby", "await_hello"]

_LOGGER = logging.getLogger("ipchannel")
HELLO = struct.Struct("!I")  # the length of the host record that follows
_MAX_HELLO = 65536
WAIT_SLICE = 0.02  # seconds between checks that the standby is still the one to wait for
STANDBY_GRACE = 0.25  # seconds others leave a dead host's place to a live standby (it may be frozen)


class LocalStandby:
    """The standby's lock and record, its side socket, and the clients' wait at another's."""

    def __init__(
        self, name: str, paths: ChannelPaths, authkey: bytes | None, coordinator: LocalCoordinator
    ) -> None:
        self._name, self._paths, self._authkey, self._coordinator = name, paths, authkey, coordinator
        self._lock = HostLock(paths.standby_lock)
        self._deferring: tuple[HostRecord, float] | None = None  # a dead host left to the standby, since

    def try_stand_by(self) -> bool:
        if self._lock.held and not self._lock.still_on_its_file():
            self._lock.release()  # its file was removed: another process may stand by on a new one
            return False
        if not self._lock.held:
            ensure_runtime_dir(self._paths.directory)  # it may have been removed since
        return self._lock.try_acquire()

    def open(self, auth: bool) -> _Post:
        try:
            self._paths.tidy()  # ours from an earlier term too: before the side socket exists
            post = _Post(self._name, self._paths.standby_path(os.getpid()), self)
        except BaseException:
            self.give_up(None)
            raise
        try:
            record = self._coordinator.new_record(post.address, None, auth=auth)
            write_record(self._paths.standby_record, record)
        except BaseException:
            post.close()
            raise
        post.record = record
        return post

    def give_up(self, record: HostRecord | None) -> None:
        """Give the standby's place up: its record (if still ``record``), then its lock. Idempotent."""
        try:
            if record is not None:  # only if it still names us: a newer standby's stays
                remove_record(self._paths.standby_record, record)
        finally:
            self._lock.release()

    def find(self, dead: HostRecord) -> HostRecord | None:
        # No liveness check (it is on the failover path): a dead standby's side socket refuses
        # the connection, and the client checks the listener's pid.
        record = read_record(self._paths.standby_record)
        if record is None or record.pid in (os.getpid(), dead.pid):
            return None
        return record

    def wait(
        self, standby: HostRecord, deadline: Deadline, give_up: Callable[[], bool]
    ) -> tuple[Connection, HostRecord] | None:
        check_auth_matches(self._name, standby.auth, self._authkey)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, min(deadline.remaining(), WAIT_SLICE)))  # a full backlog blocks
            sock.connect(standby.sock)
            sock.settimeout(None)
            peer_pid, _uid = _platform.peer_credentials(sock)
        except OSError:
            sock.close()
            return None  # gone, stopped standing by, or not accepting: the usual way then
        record = None if peer_pid != standby.pid else await_hello(sock, deadline, give_up)
        if record is None or record.pid != standby.pid:
            sock.close()
            return None
        self._coordinator.saw(record)
        ready = authenticated(sock, self._name, self._authkey)
        return None if ready is None else ((ready, None), record)

    def defer(self, dead: HostRecord | None) -> bool:
        standby = None if dead is None or self._lock.held else self.find(dead)
        if dead is None or standby is None or _platform.process_gone(standby.pid):
            self._deferring = None
            return False
        now = time.monotonic()
        if self._deferring is None or self._deferring[0] != dead:
            self._deferring = (dead, now)
        return now - self._deferring[1] < STANDBY_GRACE

    def after_fork(self) -> None:
        self._lock.forget_after_fork()
        self._deferring = None


class _Post:
    """The standby's side socket, from ``LocalStandby.open`` until it hosts or stops standing by."""

    def __init__(self, name: str, side_path: Path, standby: LocalStandby) -> None:
        self._name, self._side_path, self._standby = name, side_path, standby
        self.record: HostRecord | None = None  # the standby record, once written
        self._side, self._identity = listen_privately(side_path)

    @property
    def address(self) -> str:
        """The side socket's path, for the standby record."""
        return str(self._side_path)

    def promote(self, record: HostRecord, serve: Callable[[socket.socket], None]) -> int:
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
            if not same_user(conn, self._name):
                conn.close()  # another uid: refused, as the server refuses it
                continue
            try:
                conn.sendall(hello)
                serve(conn)
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others'
                _LOGGER.debug("standby: a waiting client could not be served: %s", exc)
                conn.close()  # it gave up meanwhile (or no thread could start for it)
                continue
            greeted += 1
        self._close_side()
        return greeted

    def close(self) -> None:
        try:
            self._close_side()
        finally:
            self._standby.give_up(self.record)

    def abandon_after_fork(self) -> None:
        with contextlib.suppress(OSError):
            close_privately(self._side, self._side_path, self._identity, unlink=False)  # the parent's file

    def _close_side(self) -> None:
        if self._side.fileno() != -1:
            close_privately(self._side, self._side_path, self._identity)


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
        head = sock.recv(HELLO.size, socket.MSG_WAITALL)
        if len(head) != HELLO.size or not 0 < (size := HELLO.unpack(head)[0]) <= _MAX_HELLO:
            return None
        body = sock.recv(size, socket.MSG_WAITALL)
        return HostRecord.from_json(body) if len(body) == size else None
    except (OSError, ValueError):
        return None
