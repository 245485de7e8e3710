"""The host record: who hosts a channel, written by the host only.

``NAME.host`` holds JSON: pid, process create time, socket path, generation and
start time. It is written after the server listens, atomically (temporary file,
then ``os.replace``), so a reader sees the old record, the new one or none,
never half of one. A host is identified by (pid, create time), so a pid reused
by an unrelated process is never mistaken for the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from .. import _platform

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["HostRecord", "Liveness", "own_create_time", "read_record", "remove_record", "write_record"]

_LOGGER = logging.getLogger("ipchannel")

Liveness = Literal["alive", "dead", "unknown"]

# Start times are compared, not wall-clock create times: psutil adds the boot time, which
# follows the wall clock, and a clock step (NTP, a VM resumed) made every host look dead. On
# Linux they are clock ticks since boot; the tolerance only absorbs rounding.
_CREATE_TIME_TOLERANCE = 1.0


@lru_cache(maxsize=4)
def own_create_time(pid: int) -> float:
    """Return the start time of this process (``_platform.start_time``).

    Cached per pid, so a forked child looks itself up.
    """
    started = _platform.start_time(pid)
    if started is None:
        raise ProcessLookupError(pid)
    return started


@dataclass(frozen=True)
class HostRecord:
    """One host term of a channel."""

    #: pid of the hosting process
    pid: int
    #: its start time (``_platform.start_time``), to tell it from a later process with the same pid
    create_time: float
    #: path of the socket it listens on
    sock: str
    #: 1 for the first host, +1 for every host after it
    generation: int
    #: wall-clock time the host started serving
    started: float
    #: whether the host requires the authkey handshake (so a client without a key can say so)
    auth: bool = False
    #: the host's machine (``socket.gethostname()``), in records kept by a coordinator engine
    node: str = ""

    def to_json(self) -> bytes:
        """Return the record as JSON bytes."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, generation: int | None = None) -> HostRecord:
        """Parse a record; raise ``ValueError`` if it is not one.

        ``generation``: the engine's number for it (an etcd key's create revision), overriding the JSON's.
        """
        try:
            raw = json.loads(data)
            record = cls(
                pid=int(raw["pid"]),
                create_time=float(raw["create_time"]),
                sock=str(raw["sock"]),
                generation=int(raw["generation"]) if generation is None else generation,
                started=float(raw["started"]),
                auth=bool(raw.get("auth", False)),
                node=str(raw.get("node", "")),
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a host record: {exc}") from exc
        if record.pid <= 0 or record.generation <= 0:
            raise ValueError("not a host record: pid and generation must be positive")
        return record

    def liveness(self) -> Liveness:
        """Say whether the recorded process still runs: "alive", "dead", or "unknown".

        "unknown" (no permission to look, or a zombie) fails closed: callers
        treat it as alive and let the lock decide. Asked through the coordinator.
        """
        started = _platform.start_time(self.pid)
        if started is None:
            return "dead"
        if math.isnan(started):
            return "unknown"  # not allowed to look
        if abs(started - self.create_time) > _CREATE_TIME_TOLERANCE:
            return "dead"  # that pid is another process now
        return "unknown" if _platform.process_gone(self.pid) else "alive"  # a zombie: the lock decides


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
