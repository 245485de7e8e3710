"""Exceptions raised by ipchannel.

One root, with builtin mix-ins so ``except TimeoutError`` and friends work::

    ChannelError
    ├── ChannelTimeout   (also TimeoutError)          no host could be reached in time
    ├── HostChanged      (also ConnectionResetError)  the host died; the socket now talks to a new one
    ├── ChannelClosed                                  *your* code closed the channel
    ├── RuntimeDirError  (also OSError)                the runtime directory cannot be used safely
    ├── JournalError     (also OSError)                a durable SharedDict's journal cannot be used
    ├── AuthenticationError (also PermissionError)    the other side does not share the authkey
    ├── ProtocolError                                  bytes on the wire are not a valid frame
    ├── RemoteError                                    the host's request handler raised
    └── CoordinatorError                               the engine of ``coordinator=`` cannot be used
        ├── CoordinatorURLError (also ValueError)      a bad or unknown coordinator URL
        ├── MissingExtraError (also ImportError)       its client library is not installed
        └── CoordinatorUnavailable (also ChannelTimeout) the engine did not answer in time

Each exception keeps its context as attributes, builds its text in ``__str__``
and pickles through ``__reduce__``, so it survives being sent to another process.
"""

from __future__ import annotations

import errno
import json
import os
import traceback
from typing import Any

__all__ = [
    "AuthenticationError",
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "CoordinatorError",
    "CoordinatorURLError",
    "CoordinatorUnavailable",
    "HostChanged",
    "JournalError",
    "MissingExtraError",
    "ProtocolError",
    "RemoteError",
    "RuntimeDirError",
]


class ChannelError(Exception):
    """Root of every error ipchannel raises."""


class ChannelTimeout(ChannelError, TimeoutError):
    """No live host could be reached before the timeout.

    Raised by ``connect()``, and by a socket operation that had to wait for a
    new host after the old one died.
    """

    def __init__(
        self, channel: str, runtime_dir: str, waited: float, last_host_pid: int | None, detail: str = ""
    ) -> None:
        super().__init__(errno.ETIMEDOUT, f"timed out on channel {channel!r}")
        self.channel = channel
        self.runtime_dir = runtime_dir
        self.waited = waited
        self.last_host_pid = last_host_pid
        self.detail = detail

    def __str__(self) -> str:
        last = "no host seen" if self.last_host_pid is None else f"last host pid {self.last_host_pid}"
        text = (
            f"no host for channel {self.channel!r} in {self.runtime_dir} "
            f"after waiting {self.waited:.3f} s ({last})"
        )
        return f"{text}: {self.detail}" if self.detail else text

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.runtime_dir, self.waited, self.last_host_pid, self.detail)


class HostChanged(ChannelError, ConnectionResetError):
    """The host died while this socket was waiting for it; the socket now talks to the new host.

    Whatever the old host had not answered is lost: send the request again.
    """

    def __init__(self, channel: str, old_generation: int | None, new_generation: int | None) -> None:
        super().__init__(errno.ECONNRESET, f"host of channel {channel!r} changed")
        self.channel = channel
        self.old_generation = old_generation
        self.new_generation = new_generation

    def __str__(self) -> str:
        return (
            f"host of channel {self.channel!r} changed (generation {self.old_generation} -> "
            f"{self.new_generation}); the socket is connected to the new host, resend what was not answered"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.old_generation, self.new_generation)


class ChannelClosed(ChannelError):
    """The channel was closed by this process's own code, so it cannot be used any more.

    ``kind`` is the class that was closed (``Channel``, ``RequestChannel``, ``SharedDict``).
    """

    def __init__(self, channel: str, kind: str = "Channel") -> None:
        super().__init__(channel, kind)
        self.channel = channel
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.kind} {self.channel!r} is closed; create a new {self.kind} to use it again"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.kind)


class RuntimeDirError(ChannelError, OSError):
    """The runtime directory cannot be used safely; nothing was written through it.

    ``path`` is the directory, ``problem`` says which check failed and
    ``hint`` what to do about it.
    """

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        text = f"runtime directory {self.path} {self.problem}"
        return f"{text}; {self.hint}" if self.hint else text

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem, self.hint)


class JournalError(ChannelError, OSError):
    """A durable SharedDict's journal cannot be written or read; ``path`` says where.

    A write refused with it was applied nowhere; reads keep answering from memory. Unless the
    message says the host could not start its term: then a write sent again after its host
    died may have been applied by that host, as after a ChannelTimeout. ``problem``
    says what failed, ``hint`` what to do about it, and ``errno`` is the system's error
    number when one caused it (``errno.ENOSPC``: the disk is full).
    """

    def __init__(self, path: str, problem: str, hint: str = "", code: int | None = None) -> None:
        if code is None:
            super().__init__(problem)
        else:
            super().__init__(code, problem)
        self.path = path
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        text = f"journal {self.path}: {self.problem}"
        return f"{text}; {self.hint}" if self.hint else text

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem, self.hint, self.errno)


class AuthenticationError(ChannelError, PermissionError):
    """The authkey handshake failed: the two sides do not share the same ``authkey``.

    Raised by ``connect()`` (and by a reconnection) in the client; the host logs
    it and closes the connection before the handler sees it.
    """

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(errno.EACCES, reason)
        self.channel = channel
        self.reason = reason

    def __str__(self) -> str:
        return f"channel {self.channel!r}: authentication failed: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.reason)


class ProtocolError(ChannelError):
    """The bytes received are not a valid frame (too large, truncated, unknown kind).

    The connection that carried them is out of step and should be closed; other connections are unaffected.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"protocol error: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason,)


class RemoteError(ChannelError):
    """The host's request handler raised; its type, message and traceback travel back to the caller.

    The host keeps running; only this request failed.
    """

    def __init__(
        self, channel: str, type_name: str, message: str, traceback: str, host_pid: int | None
    ) -> None:
        super().__init__(channel, type_name, message)
        self.channel = channel
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.host_pid = host_pid

    def __str__(self) -> str:
        where = f"the handler of channel {self.channel!r} in host pid {self.host_pid}"
        return f"{self.type_name}: {self.message} (raised by {where})"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.type_name, self.message, self.traceback, self.host_pid)

    @staticmethod
    def encode(exc: BaseException) -> bytes:
        """Describe ``exc`` (being handled, in the host) as the JSON an ERROR frame carries."""
        kind = type(exc)
        name = (
            kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        )
        info = {"type": name, "message": str(exc), "traceback": traceback.format_exc(), "pid": os.getpid()}
        return json.dumps(info).encode()

    @classmethod
    def from_json(cls, channel: str, data: bytes) -> RemoteError:
        """Rebuild the error in the caller from what ``encode`` wrote in the host."""
        info = json.loads(data)
        return cls(channel, info["type"], info["message"], info["traceback"], info.get("pid"))


class CoordinatorError(ChannelError):
    """The engine named by ``coordinator=`` (etcd, Redis) cannot be used; the message says why."""


class CoordinatorURLError(CoordinatorError, ValueError):
    """The coordinator URL cannot be used: ``url`` is the URL (password hidden), ``problem`` what is wrong."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(url, problem)
        self.url = url
        self.problem = problem

    def __str__(self) -> str:
        return (
            f"coordinator URL {self.url!r}: {self.problem}; expected "
            "etcd://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/PREFIX] "
            "or redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (etcds:// and rediss:// for TLS)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.problem)


class MissingExtraError(CoordinatorError, ImportError):
    """The client library of an engine is not installed: ``extra`` is what to ``pip install``."""

    def __init__(self, url: str, module: str, extra: str) -> None:
        super().__init__(url, module, extra)
        self.url = url
        self.module = module
        self.extra = extra

    def __str__(self) -> str:
        return (
            f"coordinator {self.url!r} needs the {self.module!r} package, which is not installed; "
            f"install it with: pip install 'ipchannel[{self.extra}]'"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.module, self.extra)


class CoordinatorUnavailable(CoordinatorError, ChannelTimeout):
    """The engine could not be reached before the timeout, so no host could be found or elected."""

    def __init__(self, channel: str, url: str, waited: float, problem: str) -> None:
        ChannelTimeout.__init__(self, channel, url, waited, None, problem)
        self.url = url
        self.problem = problem

    def __str__(self) -> str:
        return (
            f"channel {self.channel!r}: the coordinator {self.url} did not answer within {self.waited:.3f} s "
            f"({self.problem}); check that it runs, that this machine reaches it (address, port, "
            "firewall) and the password or TLS settings in the URL"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.channel, self.url, self.waited, self.problem)
