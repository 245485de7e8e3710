"""The one place that knows which operating system this is.

Every platform module defines the same names:

- ``SUN_PATH_MAX``: longest AF_UNIX path, in bytes, without the trailing NUL.
- ``EXIT_NOTICES``: whether ``exit_notice`` can give descriptors here (pidfds).
- ``SHUTDOWN_WAKES_LISTENER``: whether ``shutdown()`` of a listening socket wakes a ``select()`` on it.
- ``peer_credentials(sock)``: ``(pid, uid)`` of the process at the other end of
  a connected AF_UNIX socket; either may be ``None`` where the system cannot tell.
- ``process_exiting(pid)``: True while the process is tearing itself down (or is gone).
- ``process_gone(pid)``: True once the process is a zombie or gone: all its descriptors are closed.
- ``exit_notice(pid)``: a descriptor that polls readable once the process has exited, or None.
- ``file_notice(directory, names, contents)``: a notice (``.fd`` to poll, ``touched()``, ``close()``)
  of those names coming or going in the directory, and of those files being written (Linux: inotify), or None.
- ``start_time(pid)``: when the process started, on a clock no wall-clock step moves (Linux:
  seconds since boot), or None once it is gone; equal for the same process in every process.
- ``lock_holders(path)``: pids that have the file open, or ``None`` if unknown.
- ``flock_holder(path)``: the pid that took the exclusive flock held on the file, or ``None``
  (nobody holds one, or the system cannot tell).
- ``leave_signals_to_the_application(inherited=False)``: block asynchronous signals in the calling
  (library) thread; ``signals_left()``: whether it does (a thread it starts inherits its mask).
- ``keep_alive(sock, idle, interval, count)``: TCP keepalive (and ``TCP_USER_TIMEOUT``) on ``sock``.

And, for every platform: ``claim_clock()``, seconds on a clock that keeps counting while the
machine sleeps (``CLOCK_BOOTTIME`` where there is one), so a host's claim lapses across a suspend.
"""

from __future__ import annotations

import sys
import time

if sys.platform.startswith("linux"):
    from ._linux import (
        EXIT_NOTICES,
        SHUTDOWN_WAKES_LISTENER,
        SUN_PATH_MAX,
        exit_notice,
        file_notice,
        flock_holder,
        keep_alive,
        leave_signals_to_the_application,
        lock_holders,
        peer_credentials,
        process_exiting,
        process_gone,
        signals_left,
        start_time,
    )
elif sys.platform == "darwin" or "bsd" in sys.platform:
    from ._bsd import (
        EXIT_NOTICES,
        SHUTDOWN_WAKES_LISTENER,
        SUN_PATH_MAX,
        exit_notice,
        file_notice,
        flock_holder,
        keep_alive,
        leave_signals_to_the_application,
        lock_holders,
        peer_credentials,
        process_exiting,
        process_gone,
        signals_left,
        start_time,
    )
else:
    from ._unsupported import (
        EXIT_NOTICES,
        SHUTDOWN_WAKES_LISTENER,
        SUN_PATH_MAX,
        exit_notice,
        file_notice,
        flock_holder,
        keep_alive,
        leave_signals_to_the_application,
        lock_holders,
        peer_credentials,
        process_exiting,
        process_gone,
        signals_left,
        start_time,
    )

__all__ = [
    "EXIT_NOTICES",
    "SHUTDOWN_WAKES_LISTENER",
    "SUN_PATH_MAX",
    "claim_clock",
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

_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def claim_clock() -> float:
    """Return seconds on a clock that counts suspended time too (else the monotonic clock)."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()
