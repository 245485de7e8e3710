"""What Linux and the BSDs share."""

from __future__ import annotations

import signal

__all__ = ["leave_signals_to_the_application"]

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


def leave_signals_to_the_application() -> None:
    """Block asynchronous signals (SIGTERM, SIGINT, SIGCHLD...) in the calling thread.

    The kernel hands a process-directed signal to any thread that does not block it. If one of
    ours took it, CPython would only note it, while the main thread stayed blocked in a read and
    never ran its handler: a gunicorn worker or script could sleep through SIGTERM.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)
