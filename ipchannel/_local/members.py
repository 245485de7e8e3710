"""The members of a SharedDict on one machine: a file beside the host record, read by every campaigner.

``.NAME.members`` holds ``{"g": generation, "host": ..., "members": ["pid PID@START#TOKEN", ...],
"left": [...]}`` (a name per dict opened: one opened again is a new member):
the processes that hold every write the host of that term acknowledged, and those that
closed their dict (alive, but out for good: a host whose set still has one leaves it
out). The host writes it before it acknowledges a write without a process that left;
the last process to close removes the file. Every change is made under
the flock of ``.NAME.members.lock`` and lands by rename, so none is lost to another and
no reader sees half of one. The start time keeps a reused pid from passing for a member;
a process outside the record may not start a term while a member lives
(``_shareddict.members``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING

from .. import _fork, _hooks, _platform
from .._seams.record import Recorded, decode_members

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

__all__ = ["LocalMembership"]

_LOGGER = logging.getLogger("ipchannel")


class LocalMembership:
    """The ``Membership`` capability of the local backend."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock_path = path.with_name(f"{path.name}.lock")
        self._me: tuple[int, str] | None = None  # (pid, name): looked up again in a forked child
        self._ignored = ""  # why the record was last ignored (said once)
        self._held: set[int] = set()  # descriptors of the flock, while a thread holds it
        self._me_lock = threading.Lock()
        _fork.register(self)

    def me(self) -> str:
        pid = os.getpid()
        with self._me_lock:  # two threads asking first would each make a name, and one would go out
            if self._me is None or self._me[0] != pid:
                # one name per dict opened, so a dict opened again in this process is a new member
                self._me = (pid, f"pid {pid}@{_platform.start_time(pid)!r}#{secrets.token_hex(3)}")
            return self._me[1]

    def record(self, generation: int, members: Iterable[str]) -> None:
        """Record ``members``, less those that took themselves out (``leave``): never in again."""
        with self._locked():
            left = self._left()
            self._write(Recorded(generation, self.me(), sorted(set(members) - left)), left)

    def _left(self) -> set[str]:
        """Return the live processes that took themselves out (call with the flock)."""
        try:
            data = json.loads(self._path.read_bytes())
            return {str(member) for member in data.get("left", []) if self.alive(str(member))}
        except (OSError, ValueError, TypeError, AttributeError):
            return set()

    def _write(self, recorded: Recorded, left: Iterable[str]) -> None:
        generation, host, members = recorded
        data = json.dumps({"g": generation, "host": host, "members": members, "left": sorted(left)}).encode()
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            if _hooks.pause is not None:
                _hooks.pause("members.written", str(tmp))
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._held.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _hooks.pause is not None:
                _hooks.pause("members.locked", str(self._lock_path))
            yield
        finally:
            # unlocked, not just closed: a child forked meanwhile holds a copy of the descriptor,
            # and the flock would last while that copy is open (as long as the child lives)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._held.discard(fd)
            os.close(fd)

    def _reset_after_fork(self) -> None:
        """In a forked child: close the copies of a flock a parent thread held, without unlocking it."""
        for fd in self._held:
            with contextlib.suppress(OSError):
                os.close(fd)  # not LOCK_UN: that would free the parent's lock too, under its feet
        self._held = set()
        self._me_lock = threading.Lock()  # a parent thread may have held it

    def members(self) -> Recorded | None:
        try:
            raw = self._path.read_bytes()
            return decode_members(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Never written torn (rename): someone else wrote it. Refusing every election for it
            # would take the channel down; the host rewrites it at its next change.
            if str(exc) != self._ignored:  # once: every election try reads it
                self._ignored = str(exc)
                _LOGGER.warning("ignoring the members record %s: %s", self._path, exc)
            return None

    def alive(self, member: str) -> bool:
        """Tell whether ``member`` runs: its pid, with its start time, not exiting (a zombie is dead)."""
        pid, _, started = member.removeprefix("pid ").partition("#")[0].partition("@")
        try:
            number = int(pid)
        except ValueError:
            return False
        return repr(_platform.start_time(number)) == started and not _platform.process_exiting(number)

    def leave(self, member: str, alone_in: int | None) -> None:
        """Take ``member`` out of the record, under the flock; the last to go removes it.

        ``alone_in`` is not needed here: any process may write the record under the flock, so a
        host alone in its term is simply the last to go (and a stale one, past a lost lock, only
        takes itself out of its successor's record).
        """
        del alone_in
        with self._locked():
            recorded = self.members()
            if recorded is None:
                return
            left = self._left() | {member}
            rest = [other for other in recorded.members if other not in left]
            if not any(self.alive(other) for other in rest):  # the last to go: nothing left to keep
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()
            else:
                self._write(recorded._replace(members=rest), left)
