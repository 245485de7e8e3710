"""The host record: one host term of a channel (who, where, which generation), as every backend keeps it.

A backend stores it as JSON (a file, an engine's key). A host is identified by
(pid, start time), so a pid reused by an unrelated process is never mistaken for
the host; the generation numbers terms, 1 for the first, growing with every new host (within
an engine's epoch: its data reset, numbering starts again under a new one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

from .. import _platform

__all__ = ["HostRecord", "Recorded", "decode_members", "own_create_time"]


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
    #: the address clients dial: its socket's path, or HOST:PORT across machines
    sock: str
    #: 1 for the first host, +1 for every host after it
    generation: int
    #: wall-clock time the host started serving
    started: float
    #: whether the host requires the authkey handshake (so a client without a key can say so)
    auth: bool = False
    #: the host's machine (``socket.gethostname()``), in records kept by a coordinator engine
    node: str = ""
    #: the engine's epoch of ``generation`` (a token made with its generation counter; "" for a lock file):
    #: after the engine's data is reset, generations start again under a new epoch
    epoch: str = ""

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
                epoch=str(raw.get("epoch", "")),
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a host record: {exc}") from exc
        if record.pid <= 0 or record.generation <= 0:
            raise ValueError("not a host record: pid and generation must be positive")
        return record


class Recorded(NamedTuple):
    """The members as recorded by the host of ``generation`` (``host``: its own name)."""

    generation: int
    host: str
    members: list[str]


def decode_members(raw: bytes) -> Recorded:
    """Return the members record ``raw`` (JSON: ``g``, ``host``, ``members``) holds.

    :raises ValueError: it is not one (what else wrote there is named in the message).
    """
    try:
        data = json.loads(raw)
        return Recorded(int(data["g"]), str(data["host"]), [str(member) for member in data["members"]])
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ValueError(f"not a members record ({type(exc).__name__}: {exc})") from None
