"""The runtime directory, and the files of a channel inside it.

The runtime directory (``_options.resolve_runtime_dir``) is created with mode 0700 and refused
(``RuntimeDirError``, nothing written) if it is a symlink, not a directory, not
owned by us, or writable by group or others: every lock, record and socket of
every channel lives in it, so whoever can write there can impersonate a host.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _platform, _private_dir
from .._errors import RuntimeDirError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ChannelPaths", "ensure_runtime_dir", "listening"]

#: (device, inode) of each private socket file this process listens on now, whichever of its
#: channels made it: several channels of one name can live in one process, and its pid names them all.
_LISTENING: set[tuple[int, int]] = set()


def listening(identity: tuple[int, int], *, now: bool) -> None:
    """Note that this process listens on the private socket file ``identity`` (``now``), or no longer."""
    if now:
        _LISTENING.add(identity)
    else:
        _LISTENING.discard(identity)


def _listened_on(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _LISTENING


def ensure_runtime_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing, then check it is safe to use; else raise RuntimeDirError."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        _create(path)
        st = path.lstat()
    except OSError as exc:
        raise RuntimeDirError(str(path), f"cannot be examined: {exc.strerror}") from exc
    _check(path, st)


def _create(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return  # another process created it first; _check() examines it
    except FileNotFoundError as exc:
        raise RuntimeDirError(
            str(path),
            f"cannot be created: its parent {path.parent} does not exist",
            "create the parent, or set IPCHANNEL_DIR to a directory that can be created",
        ) from exc
    except OSError as exc:
        raise RuntimeDirError(
            str(path), f"cannot be created: {exc.strerror}", "set IPCHANNEL_DIR to a writable location"
        ) from exc


def _check(path: Path, st: os.stat_result) -> None:
    fix = "pass runtime_dir= (or set IPCHANNEL_DIR to) a private directory: yours, mode 0700, not a symlink"
    if wrong := _private_dir.problem(st):
        # Never "chmod it": it may be /tmp, or a directory others rely on being shared. Ours but
        # writable by others and sticky, as /tmp: nobody else can move a subdirectory of ours.
        ours = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        if ours and st.st_mode & stat.S_ISVTX:
            fix = (
                f"use a private subdirectory instead, such as {path / f'ipchannel-{os.geteuid()}'} "
                "(ipchannel creates it with mode 0700), as runtime_dir= or IPCHANNEL_DIR"
            )
        raise RuntimeDirError(str(path), wrong, fix)
    if not os.access(path, os.W_OK | os.X_OK):
        raise RuntimeDirError(str(path), "is not writable by you", fix)


# The host binds ".<sock stem>.<pid>.sock" first and renames it into place; a standby also listens
# on ".<sock stem>_<pid>.sock": room for ".", pid, ".".
_BIND_OVERHEAD = 1 + 7 + 1


@dataclass(frozen=True)
class ChannelPaths:
    """The files of one channel: lock (anyone), host record and socket (the host only).

    And the standby's: ``.NAME.standby.lock`` (whoever holds it stands by to host next;
    hidden, so no channel name can give the same file), its record ``NAME.standby`` and its
    side socket (``standby_path``).
    """

    directory: Path
    lock: Path
    record: Path
    sock: Path
    #: the lock whose holder is the standby: the process that hosts next
    standby_lock: Path
    #: the standby's record: its pid and side socket
    standby_record: Path
    #: who holds every acknowledged write of a SharedDict (``members.LocalMembership``)
    members: Path

    @classmethod
    def for_channel(cls, name: str, directory: Path) -> ChannelPaths:
        """Return the paths of channel ``name``; the socket name is hashed if the path is too long."""
        sock = directory / f"{name}.sock"
        if len(os.fsencode(sock)) + _BIND_OVERHEAD > _platform.SUN_PATH_MAX:
            sock = directory / f"h{hashlib.sha256(name.encode()).hexdigest()[:10]}.sock"
        needed = len(os.fsencode(sock)) + _BIND_OVERHEAD
        if needed > _platform.SUN_PATH_MAX:
            raise RuntimeDirError(
                str(directory),
                f"is too long for a Unix socket path ({needed} bytes with the socket name, "
                f"the limit is {_platform.SUN_PATH_MAX})",
                "set IPCHANNEL_DIR to a shorter path",
            )
        return cls(
            directory,
            directory / f"{name}.lock",
            directory / f"{name}.host",
            sock,
            directory / f".{name}.standby.lock",  # hidden: no channel name can give the same file
            directory / f"{name}.standby",
            directory / f".{name}.members",  # hidden, as the standby lock
        )

    def bind_path(self, pid: int) -> Path:
        """Return the private name a starting host listens on before publishing its socket."""
        return self.directory / f".{self.sock.stem}.{pid}{self.sock.suffix}"

    def standby_path(self, pid: int) -> Path:
        """Return the side socket a standby listens on: clients of a dead host wait there."""
        return self.directory / f".{self.sock.stem}_{pid}{self.sock.suffix}"

    def stale_socket_temporaries(self, *, own: bool = True) -> list[Path]:
        """Private socket files that processes which died left behind, and (``own``) this one's left over.

        Left over: no channel of this process listens on it (another of this name may, standing by).
        """
        stale = []
        head, tail = f".{self.sock.stem}", self.sock.suffix
        for name in self._names():
            if not (
                name.startswith(head)
                and name.endswith(tail)
                and name[len(head) : len(head) + 1] in {".", "_"}
            ):
                continue
            path = self.directory / name
            owner = _pid_in(path.name[len(self.sock.stem) + 2 : -len(self.sock.suffix)])
            if owner is None:
                continue  # another channel's (a name with a dot in it)
            if owner == os.getpid():
                if own and not _listened_on(path):
                    stale.append(path)
            elif _platform.process_gone(owner):
                stale.append(path)
        return stale

    def tidy(self, *, own: bool = True) -> None:
        """Remove the private socket files of processes that died, and (``own``) this process's left over.

        Done before listening (``own=False``: a standby listens beside its side socket) and
        standing by, and when a channel closes: a process killed while another was starting
        to stand by may not yet have counted as gone then.
        """
        for stale in self.stale_socket_temporaries(own=own):
            stale.unlink(missing_ok=True)

    def stale_record_temporaries(self) -> list[Path]:
        """Temporary record files that processes which died mid-write left behind (``.NAME.PID.tmp``).

        Only a dead writer's: any live process writes the members record (a dict that closes
        takes itself out), and removing its file between write and rename loses that change.
        """
        heads = (f".{self.record.name}.", f".{self.standby_record.name}.", f"{self.members.name}.")
        stale = []
        for name in self._names():
            head = next((head for head in heads if name.startswith(head) and name.endswith(".tmp")), None)
            owner = _pid_in(name[len(head) : -len(".tmp")]) if head is not None else None
            # exiting, not only gone: a killed writer's lock is free before it is a zombie
            if owner is not None and _platform.process_exiting(owner):
                stale.append(self.directory / name)
        return stale

    def _names(self) -> list[str]:
        """Return the directory's entries (none if it cannot be listed): one listing, no glob patterns.

        ``Path.glob`` compiled a pattern per channel name, 50-100 us each, on every cold start.
        """
        try:
            return os.listdir(self.directory)
        except OSError:
            return []


def _pid_in(text: str) -> int | None:
    """Return the pid a private file's name carries, None if ``text`` is not one (ASCII digits only)."""
    return int(text) if text.isascii() and text.isdigit() else None
