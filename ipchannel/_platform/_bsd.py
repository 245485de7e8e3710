"""macOS and the BSDs: LOCAL_PEERCRED for the peer's uid; no cheap exit flag or fd scan."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    import socket

from ._posix import keep_alive, leave_signals_to_the_application, signals_left

__all__ = [
    "EXIT_NOTICES",
    "SHUTDOWN_WAKES_LISTENER",
    "SUN_PATH_MAX",
    "exit_notice",
    "file_notice",
    "flock_holder",
    "keep_alive",
    "leave_signals_to_the_application",
    "lock_holders",
    "peer_credentials",
    "process_exiting",
    "process_gone",
    "signals_left",
    "start_time",
]

SUN_PATH_MAX = 103  # sizeof(sockaddr_un.sun_path) is 104
SHUTDOWN_WAKES_LISTENER = False  # shutdown() of a listening socket fails (ENOTCONN) and wakes nothing
EXIT_NOTICES = False  # kqueue's EVFILT_PROC is not pollable

_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_XUCRED_HEAD = struct.Struct("Ii")  # struct xucred: cr_version, cr_uid, ...


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """Return ``(None, uid)``: the BSDs report the peer's uid but not, portably, its pid."""
    raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 76)  # sizeof(struct xucred)
    _version, uid = _XUCRED_HEAD.unpack_from(raw)
    return None, uid


def process_exiting(pid: int) -> bool:
    """Return True if ``pid`` is gone or a zombie; the exit flag itself is not visible here."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def process_gone(pid: int) -> bool:
    """Return True once ``pid`` is a zombie or gone."""
    return process_exiting(pid)


def lock_holders(path: str) -> list[int] | None:  # noqa: ARG001 - same signature on every platform
    """Return None: finding who holds a file needs root here."""
    return None


def flock_holder(path: str) -> int | None:  # noqa: ARG001 - same signature on every platform
    """Return None: no table of flocks and their holders here."""
    return None


def exit_notice(pid: int) -> int | None:  # noqa: ARG001 - kqueue's EVFILT_PROC is not pollable
    """Return None: no pollable exit notice here; the monitor polls instead."""
    return None


def file_notice(directory: str, names: list[str], contents: list[str]) -> None:  # noqa: ARG001 - same signature on every platform
    """Return None: no notice of file changes here; the host looks every tick."""
    return


def start_time(pid: int) -> float | None:
    """Return when ``pid`` started (psutil's create time: wall clock, the best known here), or None."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return float("nan")  # cannot tell: never equal, and the caller says "unknown"
