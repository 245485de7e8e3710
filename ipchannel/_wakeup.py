"""A wake-up pipe: one thread sleeps in ``poll()`` on it, any other ends the sleep with a byte.

The monitor thread sleeps on one; the connector and the hosting term write to it when
the host changes or a host's claim lapsed. The byte says why (each writer's choice);
a full pipe drops the byte, since a wake-up is coming anyway.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["Wakeup"]


class Wakeup:
    """A nonblocking pipe the sleeper makes (``open``); a ``send`` before that or after ``close`` is lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers never write to a closed (maybe reused) descriptor
        self._read = self._write = -1
        #: set while the sleeper is sure to look soon anyway (the monitor, until its first look), so a
        #: byte that only asks it to look again (``send(urgent=False)``) is not sent: nobody woken for nothing
        self.soon = False

    def open(self) -> int:
        """Make the pipe (if not made yet) and return the descriptor to poll."""
        with self._lock:
            if self._read == -1:
                self._read, self._write = os.pipe()
                os.set_blocking(self._read, False)
                os.set_blocking(self._write, False)
            return self._read

    def send(self, byte: bytes, *, urgent: bool = True) -> None:
        """Wake the sleeper, if there is one, telling it ``byte`` (unless not ``urgent``: it wakes soon)."""
        if not urgent and self.soon:
            return
        with self._lock, contextlib.suppress(OSError):  # full (BlockingIOError): a wake-up is coming
            if self._write != -1:
                os.write(self._write, byte)

    def drain(self) -> bytes:
        """Return (and remove) what was sent since the last drain."""
        with contextlib.suppress(BlockingIOError, OSError):
            return os.read(self._read, 512)
        return b""

    def close(self) -> None:
        """Close both ends (the sleeper is gone)."""
        with self._lock:
            for fd in (self._read, self._write):
                if fd != -1:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._read = self._write = -1

    def abandon_after_fork(self) -> None:
        """In a forked child: close the copies of the parent's descriptors (its sleeper is not here)."""
        self._lock = threading.Lock()  # a parent thread may have held it at fork time
        self.soon = False
        self.close()
