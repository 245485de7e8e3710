"""Linux: SO_PEERCRED, /proc/PID/stat flags, /proc/PID/fd, /proc/locks, and pidfds for exit notices."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from ._inotify import file_notice
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

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) is 108, one byte for the NUL
SHUTDOWN_WAKES_LISTENER = True  # shutdown() of a listening socket wakes a select() on it
EXIT_NOTICES = hasattr(os, "pidfd_open")  # Python 3.9+; the kernel may still refuse (< 5.3): then None

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_PF_EXITING = 0x00000004  # include/linux/sched.h; set before the task closes its files


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """Return ``(pid, uid)`` of the peer; for a client socket, of the process that listens."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return (pid or None), uid


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def process_gone(pid: int) -> bool:
    """Return True once ``pid`` is a zombie or gone, so every descriptor it held (its lock too) is closed."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] in {b"Z", b"X", b"x"}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_time(pid: int) -> float | None:
    """Return when ``pid`` started, in seconds since boot (None if gone): unmoved by wall-clock steps."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19]) / _CLOCK_TICKS  # field 22, starttime


def process_exiting(pid: int) -> bool:
    """Return True if ``pid`` has started to exit (PF_EXITING), is a zombie, or is gone.

    A killed host closes its sockets inside exit, before it becomes a zombie:
    this flag closes that window, so an EOF from a dying host is never taken
    for a handler that simply returned.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return True
    state, flags = fields[0], int(fields[6])
    return state in {b"Z", b"X", b"x"} or bool(flags & _PF_EXITING)


def lock_holders(path: str) -> list[int] | None:
    """Return the pids that hold an open descriptor on ``path`` (visible to us), or None."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    holders: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                holders.append(int(entry.name))
                break
    return holders


def flock_holder(path: str) -> int | None:
    """Return the pid that took the exclusive flock held on ``path`` (``/proc/locks``), or None if nobody.

    0 if that process is outside our pid namespace.
    """
    try:
        st = os.stat(path)
        table = Path("/proc/locks").read_bytes()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}".encode()
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 2446 fe:00:2212975 0 EOF" (a blocked waiter's has "->" after "1:")
        fields = line.split()
        if len(fields) >= 6 and fields[1:4] == [b"FLOCK", b"ADVISORY", b"WRITE"] and fields[5] == inode:
            return int(fields[4])
    return None


def exit_notice(pid: int) -> int | None:
    """Return a descriptor that polls readable once ``pid`` has exited (a pidfd), or None if unavailable.

    Readable from the moment the process is a zombie, after the kernel closed its
    descriptors (so its flock is free by then). The caller closes it.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except OSError:
        return None  # gone already, another pid namespace, or a kernel older than 5.3
