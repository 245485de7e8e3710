"""What Linux and the BSDs share."""

from __future__ import annotations

import signal
import socket
import threading

__all__ = ["keep_alive", "leave_signals_to_the_application", "signals_left"]

# Signals the kernel sends to the thread that caused them: blocking these would hide a crash.
_SYNCHRONOUS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGABRT,
    signal.SIGSYS,
    signal.SIGKILL,
    signal.SIGSTOP,
}

# Computed once, as plain ints (``valid_signals()`` itself costs ~100 us a call).
_ASYNCHRONOUS = frozenset(int(number) for number in signal.valid_signals() - _SYNCHRONOUS)

_thread = threading.local()  # ``left``: this thread blocks them (a thread it starts inherits its mask)


def leave_signals_to_the_application(*, inherited: bool = False) -> None:
    """Block asynchronous signals (SIGTERM, SIGINT, SIGCHLD...) in the calling thread.

    The kernel hands a process-directed signal to any thread that does not block it. If one of
    ours took it, CPython would only note it, while the main thread stayed blocked in a read and
    never ran its handler: a gunicorn worker or script could sleep through SIGTERM.

    ``inherited``: the thread that started this one blocked them (``signals_left()`` there), and a
    new thread starts with its creator's mask, so nothing is left to do. ``pthread_sigmask`` turns
    the previous mask into ``Signals`` members one by one: a few us where it was empty, ~100 us
    where it was full, which a host would pay for each handler thread it starts.
    """
    if not inherited:
        signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)
    _thread.left = True


def signals_left() -> bool:
    """Tell whether the calling thread blocks them (``leave_signals_to_the_application``)."""
    return bool(getattr(_thread, "left", False))


def keep_alive(sock: socket.socket, idle: float, interval: float, count: int) -> None:
    """Have the kernel notice a peer that vanished without a word (dead machine, NAT drop, partition).

    TCP keepalive probes an idle connection after ``idle`` seconds, every ``interval``, and
    gives up after ``count`` unanswered; where there is ``TCP_USER_TIMEOUT`` (Linux), data
    unacknowledged for as long also ends the connection. Options the system lacks are skipped.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    for option, value in (
        (idle_option, max(1, round(idle))),
        (getattr(socket, "TCP_KEEPINTVL", None), max(1, round(interval))),
        (getattr(socket, "TCP_KEEPCNT", None), count),
        (getattr(socket, "TCP_USER_TIMEOUT", None), round((idle + interval * count) * 1000)),
    ):
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
