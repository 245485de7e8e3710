"""The transport of one machine: Unix sockets in the runtime directory, the peer checked by SO_PEERCRED.

A host listens on a private path (``.NAME.<pid>.sock``, mode 0600) and ``publish()``
renames it onto ``NAME.sock``, atomically replacing a dead host's, once the record is
written: a socket that accepts at ``NAME.sock`` always belongs to a recorded host. A
client dials the recorded path and keeps the connection only if the listener's pid
(SO_PEERCRED) is the recorded host's; the host refuses a peer with another uid. Then
the authkey handshake, if the channel has a key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _platform
from .._auth import authenticated, check_auth_matches, host_admits
from .._errors import ChannelError
from .._seams.base import Connection, plain_socket
from .paths import listening

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._seams.base import SocketMaker
    from .._seams.record import HostRecord
    from .paths import ChannelPaths

__all__ = ["UnixListener", "UnixTransport", "close_privately", "listen_privately", "same_user"]

_LOGGER = logging.getLogger("ipchannel")
_BACKLOG = 128  # a whole election storm (or every client of a dead host) connects at once


def same_user(conn: socket.socket, channel: str) -> bool:
    """Tell whether the peer of ``conn`` runs as this process's user (logged if not)."""
    try:
        _pid, uid = _platform.peer_credentials(conn)
    except OSError as exc:
        _LOGGER.debug("channel %r: cannot read peer credentials: %s", channel, exc)
        return False
    if uid is not None and uid != os.geteuid():
        _LOGGER.warning("channel %r: refused a connection from uid %s", channel, uid)
        return False
    return True


def listen_privately(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """Listen on ``path`` (mode 0600; a file of ours there replaced): the socket and the file's identity.

    Until ``close_privately``, ``ChannelPaths.tidy`` leaves the file alone.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)  # ours, from an earlier term: the pid is in the name
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
        st = os.lstat(path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    listening((st.st_dev, st.st_ino), now=True)
    return sock, (st.st_dev, st.st_ino)


def close_privately(
    sock: socket.socket, path: Path, identity: tuple[int, int], *, unlink: bool = True
) -> None:
    """Close a socket of ``listen_privately`` and (``unlink``) remove its file, if it is still that one."""
    sock.close()
    listening(identity, now=False)
    if unlink and _is_file(path, identity):  # never another process's file
        with contextlib.suppress(OSError):
            path.unlink()


def _is_file(path: Path, identity: tuple[int, int]) -> bool:
    """Tell whether ``path`` is still the file ``identity`` names (so never another process's)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == identity


class UnixTransport:
    """AF_UNIX sockets in the runtime directory."""

    def __init__(self, name: str, paths: ChannelPaths, authkey: bytes | None) -> None:
        self._name, self._paths, self._authkey = name, paths, authkey

    def listen(self, gate: Callable[[], bool]) -> UnixListener:  # noqa: ARG002 - the lock and the path decide
        self._paths.tidy(own=False)
        return UnixListener(self._name, self._paths.bind_path(os.getpid()), self._paths.sock, self._authkey)

    def connect(self, record: HostRecord, make: SocketMaker = plain_socket) -> Connection | None:
        check_auth_matches(self._name, record.auth, self._authkey)
        sock = make(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(record.sock)
            peer_pid, _uid = _platform.peer_credentials(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise ChannelError(f"channel {self._name!r}: cannot connect to {record.sock}: {exc}") from exc
        if peer_pid is not None and peer_pid != record.pid:
            sock.close()  # a newer host than the record we read; read it again
            return None
        ready = authenticated(sock, self._name, self._authkey)
        return None if ready is None else (ready, None)


class UnixListener:
    """A listening socket on a private path until ``publish()`` renames it onto the channel's."""

    def __init__(self, name: str, bind_path: Path, address: Path, authkey: bytes | None) -> None:
        self._name, self._path, self._address, self._authkey = name, bind_path, address, authkey
        self._sock, self._identity = listen_privately(bind_path)

    @property
    def address(self) -> str:
        return str(self._address)

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def verify(self, conn: socket.socket) -> bool:
        return same_user(conn, self._name)

    def admit(self, conn: socket.socket, track: Callable[[socket.socket], None]) -> socket.socket | None:  # noqa: ARG002 - no TLS here
        if self._authkey is not None and not host_admits(conn, self._authkey, self._name):
            return None
        return conn

    def publish(self, record: HostRecord) -> None:  # noqa: ARG002 - the path says who we are
        """Move the listening socket to the channel's path, atomically replacing a stale socket file."""
        os.replace(self._path, self._address)
        self._path = Path(self._address)

    def still_published(self) -> bool:
        """Return True if our listening socket is still the file at its published path."""
        return _is_file(self._path, self._identity)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a select() on it at once (Linux)

    def close(self) -> None:
        close_privately(self._sock, self._path, self._identity)

    def abandon_after_fork(self) -> None:
        with contextlib.suppress(OSError):
            close_privately(self._sock, self._path, self._identity, unlink=False)  # the parent's file
