"""The host record on one machine: ``NAME.host``, JSON, written by the host only, replaced atomically.

It is written after the server listens, atomically (a temporary file, then
``os.replace``), so a reader sees the old record, the new one or none, never half
of one. The standby's record (``NAME.standby``) is written the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from .._seams.record import HostRecord

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["read_record", "remove_record", "write_record"]

_LOGGER = logging.getLogger("ipchannel")


def read_record(path: Path) -> HostRecord | None:
    """Return the record at ``path``, or None if it is missing or unreadable (logged at DEBUG)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        _LOGGER.debug("cannot read host record %s: %s", path, exc)
        return None
    try:
        return HostRecord.from_json(data)
    except ValueError as exc:
        _LOGGER.debug("ignoring host record %s: %s", path, exc)
        return None


def write_record(path: Path, record: HostRecord) -> None:
    """Write ``record`` to ``path`` atomically. Only the lock holder calls this."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, record.to_json())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_record(path: Path, ours: HostRecord) -> None:
    """Remove the record at ``path`` if it is still ``ours`` (never another host's). Lock holder only."""
    if read_record(path) == ours:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
