"""Platforms without AF_UNIX and flock: every name exists, and raises when called."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

__all__ = [
    "EXIT_NOTICES",
    "SHUTDOWN_WAKES_LISTENER",
    "SUN_PATH_MAX",
    "exit_notice",
    "file_notice",
    "flock_holder",
    "keep_alive",
    "leave_signals_to_the_application",
    "lock_holders",
    "peer_credentials",
    "process_exiting",
    "process_gone",
    "signals_left",
    "start_time",
]

SUN_PATH_MAX = 0
SHUTDOWN_WAKES_LISTENER = False  # nothing is known here
EXIT_NOTICES = False
_MESSAGE = f"ipchannel needs Unix domain sockets and flock; {sys.platform} is not supported"


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """Raise NotImplementedError: no AF_UNIX peer credentials here."""
    raise NotImplementedError(_MESSAGE)


def process_exiting(pid: int) -> bool:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def leave_signals_to_the_application(*, inherited: bool = False) -> None:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def signals_left() -> bool:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def keep_alive(sock: socket.socket, idle: float, interval: float, count: int) -> None:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def process_gone(pid: int) -> bool:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def lock_holders(path: str) -> list[int] | None:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def flock_holder(path: str) -> int | None:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)


def exit_notice(pid: int) -> int | None:  # noqa: ARG001 - same signature on every platform
    """Return None."""
    return None


def file_notice(directory: str, names: list[str], contents: list[str]) -> None:  # noqa: ARG001 - same signature on every platform
    """Return None."""
    return


def start_time(pid: int) -> float | None:
    """Raise NotImplementedError."""
    raise NotImplementedError(_MESSAGE)
