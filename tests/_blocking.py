"""Calls that can block the event loop's thread, caught as they are made: timing-free evidence.

The heartbeat (``_heartbeat``) blames this process for the lateness its CPU time can explain;
a wait spends no CPU, so this hook records every call on the loop thread that can wait: a
``poll``/``select`` outside the loop's own selector, an I/O call on a blocking socket, a
``time.sleep``, an ``acquire`` of a lock that is held at that moment (``Event.wait``,
``Condition.wait`` and blocking queue gets end in one), a ``get`` from an empty
``SimpleQueue``. It is a ``sys.setprofile`` hook, so it watches only the thread that installs
it (the loop's) and slows it down (from Python 3.12, every thread somewhat): measure lateness
without it. The tests watch from after their warm-up until before closing: the first call
starts the workers (``Thread.start`` waits for each to run) and ``aclose`` joins its closing
thread once that has finished, both outside the window.

Not seen: ``with lock:`` (the interpreter enters it without a profiled call), and blocking work
inside other C functions (file I/O, DNS, ``os.read``, ``Thread.join`` on 3.13). An ``RLock``
(``SharedDict``'s, taken by ``copy()`` and ``position``) is not watched. ipchannel's loop side
takes a lock only with ``with``, for a few bytecodes, and no other thread holds those locks across
a wait. The hook sees no arguments, so ``acquire(blocking=False)`` of a held lock counts too,
except in ``threading.Condition._is_owned``, whose probe returns at once.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType, TracebackType

    from _heartbeat import WatchedSelector

_POLLS = {"poll.poll", "epoll.poll", "devpoll.poll", "kqueue.control", "select"}
_SOCKET_IO = {
    "socket.recv",
    "socket.recv_into",
    "socket.recvfrom",
    "socket.recvfrom_into",
    "socket.recvmsg",
    "socket.send",
    "socket.sendall",
    "socket.sendto",
    "socket.sendmsg",
    "socket.connect",
    "socket._accept",
}
_LOCKS = {"lock.acquire"}  # ipchannel uses no RLock
# acquire(False) of a held lock, which returns at once: Condition's, and Thread.is_alive()'s (3.10-3.12)
_PROBES = {"_is_owned", "_wait_for_tstate_lock"}


class BlockingCalls:
    """``with BlockingCalls(selector) as calls:`` records, in ``calls.found``, each call that can block."""

    def __init__(self, selector: WatchedSelector) -> None:
        self._selector = selector
        self._previous: Any = None
        self.found: list[str] = []

    def _can_block(self, name: str, arg: Any) -> bool:
        owner = getattr(arg, "__self__", None)
        if name in _POLLS:
            return not self._selector.selecting  # the loop's own wait is what it is for
        if name in _SOCKET_IO:
            return isinstance(owner, socket.socket) and owner.gettimeout() != 0.0
        if name in _LOCKS:
            return owner is not None and bool(owner.locked())
        if name == "SimpleQueue.get":
            return owner is not None and owner.empty()
        return name == "sleep" and getattr(owner, "__name__", None) == "time"

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        name = getattr(arg, "__qualname__", None)
        if name is not None and self._can_block(name, arg) and frame.f_code.co_name not in _PROBES:
            where: list[str] = []
            caller: FrameType | None = frame
            while caller is not None and len(where) < 4:
                where.append(f"{caller.f_code.co_name} ({caller.f_code.co_filename}:{caller.f_lineno})")
                caller = caller.f_back
            self.found.append(f"{name} in " + " < ".join(where))

    def __enter__(self) -> BlockingCalls:
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        sys.setprofile(self._previous)
