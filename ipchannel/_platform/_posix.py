"""What Linux and the BSDs share."""

from __future__ import annotations

import importlib
import signal
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["keep_alive", "leave_signals_to_the_application"]

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

# Computed once, as plain ints: ``valid_signals()`` and the public ``pthread_sigmask``, which turns
# the previous mask into ``Signals`` members one by one, cost 120-230 us a call, in every thread we
# start (a joining connect()). The C function takes and gives ints: 3 us.
_ASYNCHRONOUS = frozenset(int(number) for number in signal.valid_signals() - _SYNCHRONOUS)


def _raw_sigmask() -> Callable[[int, Iterable[int]], object]:
    try:
        module = importlib.import_module("_signal")  # CPython's C functions behind ``signal``
    except ImportError:
        return signal.pthread_sigmask
    function: Callable[[int, Iterable[int]], object] = getattr(
        module, "pthread_sigmask", signal.pthread_sigmask
    )
    return function


_pthread_sigmask = _raw_sigmask()


def leave_signals_to_the_application() -> None:
    """Block asynchronous signals (SIGTERM, SIGINT, SIGCHLD...) in the calling thread.

    The kernel hands a process-directed signal to any thread that does not block it. If one of
    ours took it, CPython would only note it, while the main thread stayed blocked in a read and
    never ran its handler: a gunicorn worker or script could sleep through SIGTERM.
    """
    _pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)


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
