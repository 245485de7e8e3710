"""Linux: inotify, so a host learns that one of its files changed instead of looking every 0.1 s.

``file_notice(directory, names, contents)`` gives a descriptor that polls readable when a
name comes or goes in ``directory`` or a file of ``contents`` is written; ``touched()`` reads
what happened and tells whether it concerns one of ``names`` (created, removed, renamed), a
file of ``contents`` (written, its attributes changed), the directory itself (removed,
renamed; its watch is gone then), or whether events were lost (the queue overflowed): then
the caller must look as if it had been told.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct

__all__ = ["FileNotice", "file_notice"]

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# Names coming and going in the directory: no content events there (IN_MODIFY, IN_CLOSE_WRITE),
# or every write to a journal kept beside the record, or every open of the lock file by a
# campaigning process, would wake the host.
_NAMES = (
    _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
)
# The contents of the few files whose damage matters (the record), on the file itself.
_CONTENTS = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE
_ALWAYS = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_Q_OVERFLOW | _IN_IGNORED  # whatever the name
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "inotify_init1") else None


_LIBC = _libc()


class FileNotice:
    """An inotify descriptor watching one directory for what concerns a few of its files."""

    def __init__(self, fd: int, names: frozenset[bytes], directory_wd: int) -> None:
        self.fd, self._names, self._directory_wd = fd, names, directory_wd

    def touched(self) -> bool:
        """Read every pending event; tell whether one concerns the files watched (or was lost)."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return hit
            except OSError:
                return True  # cannot tell: look
            if not data:
                return True
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if mask & _ALWAYS or wd != self._directory_wd or name in self._names:
                    hit = True  # (an event of a file's own watch: its contents changed)

    def close(self) -> None:
        """Close the descriptor (its watch ends with it)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def file_notice(directory: str, names: list[str], contents: list[str]) -> FileNotice | None:
    """Return a notice of ``names`` in ``directory`` coming or going, and of ``contents`` (files) changing.

    None where inotify is unavailable (or a file of ``contents`` is missing: the caller looks now).
    """
    if _LIBC is None:
        return None
    fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None  # out of inotify instances (fs.inotify.max_user_instances): look every tick instead
    directory_wd = _LIBC.inotify_add_watch(fd, os.fsencode(directory), _NAMES)
    if directory_wd < 0 or any(
        _LIBC.inotify_add_watch(fd, os.fsencode(os.path.join(directory, name)), _CONTENTS) < 0
        for name in contents
    ):
        os.close(fd)
        return None
    return FileNotice(fd, frozenset(os.fsencode(name) for name in names), directory_wd)
