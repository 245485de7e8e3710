"""The election: a cross-process lock decides who hosts a channel.

Protocol, for a channel ``NAME`` in one runtime directory:

1. Whoever holds the flock on ``NAME.lock`` is the host. The kernel drops the
   lock when the holder dies, so at most one process ever hosts.
2. The new host listens on a private name (``.NAME.<pid>.sock``), writes
   ``NAME.host`` with generation = previous + 1, then renames its socket to
   ``NAME.sock``, atomically replacing a stale one. So a socket that accepts at
   ``NAME.sock`` always belongs to a host whose record is already written.
3. Everyone else reads ``NAME.host`` and connects to ``NAME.sock``; the peer's
   pid (SO_PEERCRED) must match the record. A missing, stale or refusing host
   means "try the lock, else back off briefly and try again".

This is the only module that imports filelock. ``NAME.lock`` is never unlinked:
a process may hold a descriptor on the old inode while a newcomer would lock a
fresh file, and both would think they host (filelock issue #31).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import filelock

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["HostLock"]


class HostLock:
    """The lock whose holder hosts the channel.

    Not thread-local (``thread_local=False``): the monitor thread may take it
    and ``close()`` or atexit release it from another thread.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = filelock.FileLock(str(path), thread_local=False)
        self._held = False
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._held

    @property
    def fd(self) -> int | None:
        """The descriptor holding the lock, while held (None if filelock did not tell)."""
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock without waiting; return True if we now hold it."""
        if self.held:
            return True
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            return False
        self._held = True
        # Remembered so a forked child can close exactly this descriptor (see forget_after_fork).
        fd = _held_descriptor(self._lock)
        if fd is not None:
            st = os.fstat(fd)
            self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        return True

    def still_on_its_file(self) -> bool:
        """Return False if the lock file we locked was removed or replaced, True if it is in place.

        Removed or replaced, another process could lock the new file and host too.
        True also when filelock did not tell us its descriptor (we cannot tell).
        """
        if self._identity is None:
            return True
        try:
            st = os.stat(self._path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def release(self) -> None:
        """Give the lock up, so another process can host."""
        if not self._held:
            return
        self._held = False
        self._fd = None
        self._identity = None
        self._lock.release(force=True)

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptor and forget the lock, without unlocking.

        No release(): LOCK_UN on the inherited open file description would free
        the *parent's* lock, and filelock's ``__del__`` releases with force.
        """
        if self._fd is not None and self._identity is not None:
            try:
                st = os.fstat(self._fd)
            except OSError:
                st = None  # filelock >= 4 closes its descriptors in its own at-fork hook
            if st is not None and (st.st_dev, st.st_ino) == self._identity:
                os.close(self._fd)
        _held_descriptor(self._lock, forget=True)
        self._held = False
        self._fd = None
        self._identity = None
        self._lock = filelock.FileLock(str(self._path), thread_local=False)


def _held_descriptor(lock: filelock.BaseFileLock, *, forget: bool = False) -> int | None:
    """Return the descriptor ``lock`` holds (None if unknown); with ``forget``, make filelock drop it.

    The one place that reads filelock's private state, because its public API
    has no way to get the descriptor, and both needs are about safety:
    - the step-down check compares the locked file with the one at the path;
    - a forked child must close the inherited descriptor without unlocking (that
      would free the parent's lock) and make filelock 3.x, which still believes
      it holds the lock, forget it, else its finalizer unlocks with force.
    ``tests/test_units.py`` fails loudly if filelock renames or drops these.
    """
    context = getattr(lock, "_context", None)
    fd = getattr(context, "lock_file_fd", None)
    if forget and context is not None and fd is not None:
        context.lock_file_fd = None
        if hasattr(context, "lock_counter"):
            context.lock_counter = 0
    return fd if isinstance(fd, int) else None
