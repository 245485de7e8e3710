"""What ``python -m ipchannel status`` reports: the channels in a runtime directory, read-only.

A channel is known by its files: ``NAME.lock`` (kept between hosts), ``NAME.host``
(the record, written by the host) and the socket the record names. The status
never connects to a host (a handler would see an empty connection) and never
creates or repairs anything; it only reads and asks the process table.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from .._options import validate_name
from .coordinator import LocalCoordinator
from .paths import ChannelPaths

__all__ = ["ChannelStatus", "channel_status", "list_channels"]

State = Literal["live", "stale", "no host", "unknown"]


@dataclass(frozen=True)
class ChannelStatus:
    """One channel as the files and the process table show it."""

    name: str
    # live: recorded host alive and socket present; stale: a record nobody serves; no host: the
    # channel exists (its lock file) but nobody hosts it now; unknown: no file of it at all
    state: State
    problem: str  # why it is stale, or "" when it is not
    host_pid: int | None
    host_command: str | None
    generation: int | None
    elected: float | None  # seconds since the recorded host was elected (alive or not)
    socket: str | None
    host_alive: bool | None  # None: no record

    @property
    def uptime(self) -> float | None:
        """Seconds the recorded host has been up: None unless it is alive."""
        return self.elected if self.host_alive else None

    def to_json(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return {
            "name": self.name,
            "state": self.state,
            "problem": self.problem,
            "host_pid": self.host_pid,
            "host_command": self.host_command,
            "generation": self.generation,
            "uptime_seconds": None if self.uptime is None else round(self.uptime, 3),
            "elected_seconds_ago": None if self.elected is None else round(self.elected, 3),
            "socket": self.socket,
            "host_alive": self.host_alive,
        }


def list_channels(directory: Path) -> list[ChannelStatus]:
    """Return the status of every channel with a lock or a record in ``directory``, by name."""
    names = set()
    for path in directory.iterdir():
        if path.suffix in {".lock", ".host"} and not path.name.startswith("."):
            try:
                names.add(validate_name(path.stem))
            except ValueError:
                continue  # not one of ours
    return [channel_status(name, directory) for name in sorted(names)]


def channel_status(name: str, directory: Path) -> ChannelStatus:
    """Return the status of channel ``name`` in ``directory``."""
    paths = ChannelPaths.for_channel(name, directory)
    coordinator = LocalCoordinator(name, paths)  # reads only: it takes no lock
    record = coordinator.read()
    if record is None:
        if paths.record.exists():
            return ChannelStatus(name, "stale", "unreadable host record", *(None,) * 6)
        return ChannelStatus(name, "no host" if paths.lock.exists() else "unknown", "", *(None,) * 6)
    alive = not coordinator.assess(record).dead
    command = _command_line(record.pid) if alive else None
    problems = []
    if not alive:
        problems.append(f"host pid {record.pid} is gone")
    if not Path(record.sock).exists():
        problems.append(f"socket {record.sock} is missing")
    return ChannelStatus(
        name=name,
        state="stale" if problems else "live",
        problem="; ".join(problems),
        host_pid=record.pid,
        host_command=command,
        generation=record.generation,
        elected=max(0.0, time.time() - record.started),
        socket=record.sock,
        host_alive=alive,
    )


def _command_line(pid: int) -> str | None:
    try:
        return shlex.join(psutil.Process(pid).cmdline()) or None
    except psutil.Error:
        return None
