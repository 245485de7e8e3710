"""Locks that an exception raised by a signal handler (SIGTERM's ``sys.exit``) cannot leave held.

A signal handler runs in the main thread between any two bytecodes: a lock taken just
before a ``try`` whose ``finally`` releases it stays held for good if the handler raises
there, and every other thread (and so the process's exit) waits for it. So the lock is
taken inside the ``try`` and released, in the ``finally``, only if this thread holds it:
an ``RLock``, which tells (releasing one not held raises ``RuntimeError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

__all__ = ["release_if_held"]


def release_if_held(lock: threading.RLock) -> None:
    """Release ``lock`` if this thread holds it (it may have timed out, or been interrupted first)."""
    try:  # noqa: SIM105 - contextlib.suppress adds a Python frame before the release: a wider window
        lock.release()
    except RuntimeError:
        pass
