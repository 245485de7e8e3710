"""A script whose threads write to a SharedDict while SIGTERM interrupts its main thread.

``python _interrupted_writers.py MODE NAME`` (``IPCHANNEL_DIR`` set; another process hosts) handles
SIGTERM as docs/reference/files.rst says, ``signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))``,
and prints one line per event for the test (``tests/test_shareddict.py``) to wait on:

- ``loop``: eight writer threads and the main thread increment until SIGTERM; the main thread's
  ``finally`` stops the writers, and the process must then exit (atexit closes the dict).
- ``locked-replica``, ``locked-subscription``, ``locked-connection``: SIGTERM is handled as the
  main thread gets a lock its write takes (the replica's, to apply the answer; the subscription's
  or the new connection's, before the request), which another thread held meanwhile; then eight
  writer threads start, as in ``loop``. The signal goes to the holding thread (``pthread_kill``):
  the main thread, blocked, runs the handler only once it holds the lock, the moment a ``with``
  or a ``try`` must not lose.
- ``queued``, ``sending``: the host holds the writes of two threads (``"slow"``); the main thread's
  write waits to be sent next, with two more threads' writes (``"carried"``) behind it. SIGTERM
  comes while the main thread waits (``queued``) or while it sends all three (``sending``). The
  two threads behind it must have their writes applied, once each, and not get its SystemExit.
"""

from __future__ import annotations

import faulthandler
import inspect
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import ipchannel

if TYPE_CHECKING:
    from collections.abc import Callable

_TIMEOUT = 5.0  # the dict's: a write waits this long for a sender, then raises ChannelTimeout
_JOIN = 3 * _TIMEOUT  # a writer not back by then is stuck
_SAY = threading.Lock()


def say(*words: object) -> None:
    line = " ".join(map(str, words))
    with _SAY:  # whole lines, from any thread
        print(line, flush=True)


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            say("timeout", what)
            os._exit(3)
        time.sleep(0.005)


class Writer(threading.Thread):
    """Increments ``key`` once, or until ``stop`` is set; prints what it got, or what it raised."""

    def __init__(self, d: ipchannel.SharedDict, key: str, stop: threading.Event | None = None) -> None:
        super().__init__(name=f"writer-{key}", daemon=stop is None)
        self.d, self.key, self.stop, self.writes = d, key, stop, 0

    def run(self) -> None:
        try:
            if self.stop is None:
                say("wrote", self.key, self.d.incr(self.key))
                return
            while not self.stop.is_set():
                self.d.incr(self.key)
                self.writes += 1
        except Exception as exc:  # noqa: BLE001 - reported to the test
            say("error", self.name, type(exc).__name__, exc)
        except BaseException as exc:
            say("interrupted", self.name, type(exc).__name__)  # given another thread's interrupt
            raise


def loop(d: ipchannel.SharedDict) -> None:
    stop = threading.Event()
    writers = [Writer(d, "loop", stop) for _ in range(8)]
    for writer in writers:
        writer.start()
    done = [0]  # the main thread's writes

    def announce() -> None:  # from this thread: SIGTERM finds the main thread writing, not printing
        wait_for(lambda: done[0] >= 20 and all(w.writes for w in writers), "everyone wrote")
        say("ready")

    threading.Thread(target=announce, daemon=True).start()
    try:
        while True:
            d.incr("main")
            done[0] += 1
    finally:
        stop.set()


def locked(d: ipchannel.SharedDict, which: str) -> None:
    """SIGTERM handled as the main thread, writing, gets a lock another thread held (``which``)."""
    requests = d._requests  # noqa: SLF001 - the locks the main thread's write takes
    # the lock, and the function and line where the main thread waits for it
    places: dict[str, tuple[Any, Callable[..., Any], str]] = {
        "replica": (d._replica.lock, type(d._writes)._request_once, "with replica."),  # noqa: SLF001
        "subscription": (requests._subscriber._lock, type(requests._subscriber).ensure_running, "if not"),  # noqa: SLF001
        "connection": (requests._requester._opening, type(requests._requester)._open, "if not"),  # noqa: SLF001
    }
    lock, function, start = places[which]
    source, first = inspect.getsourcelines(function)
    (at,) = [first + i for i, line in enumerate(source) if line.lstrip().startswith(start)]
    main = threading.get_ident()

    def waits_there() -> bool:  # blocked in the acquire at that line (maybe inside Condition.__enter__)
        frame = sys._current_frames().get(main)  # noqa: SLF001 - where the main thread is
        while frame is not None and frame.f_code is not function.__code__:
            frame = frame.f_back
        return frame is not None and frame.f_lineno == at

    stop = threading.Event()
    writers = [Writer(d, which, stop) for _ in range(8)]
    opened = []  # "connection": the idle ones, kept out, so that the main thread opens one

    def hold() -> None:
        with lock:  # taken before the main thread writes: it cannot go past the acquire
            if which == "connection":
                with requests._requester._lock:  # noqa: SLF001
                    opened.extend(requests._requester._idle)  # noqa: SLF001
                    requests._requester._idle.clear()  # noqa: SLF001
            started.set()
            wait_for(waits_there, f"the main thread at the {which} lock")
            time.sleep(0.2)  # blocked in the acquire, not on its way there
            for writer in writers:
                writer.start()
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the main thread's handler runs later
            time.sleep(0.2)
            say("signalled")

    started = threading.Event()
    threading.Thread(target=hold, daemon=True).start()
    started.wait()
    try:
        d.incr("main")
    finally:
        stop.set()


def carry(d: ipchannel.SharedDict, mode: str) -> None:
    writes = d._writes  # noqa: SLF001 - when the outbox is as the test needs it
    slow = [Writer(d, "slow"), Writer(d, "slow")]
    for writer in slow:
        writer.start()
    wait_for(lambda: writes._senders == 2, "two writes out")  # noqa: SLF001
    behind = [Writer(d, "carried"), Writer(d, "carried")]

    def queue_behind_main() -> None:
        wait_for(lambda: len(writes._outbox) == 1, "the main thread's write queued")  # noqa: SLF001
        for writer in behind:
            writer.start()
        wait_for(lambda: len(writes._outbox) == 3, "two more writes queued")  # noqa: SLF001
        say("queued", mode)

    threading.Thread(target=queue_behind_main, daemon=True).start()
    try:
        d.incr("main")
    except SystemExit:
        say("main left")
    else:
        say("main wrote")
    deadline = time.monotonic() + _JOIN
    for writer in slow + behind:
        writer.join(max(0.0, deadline - time.monotonic()))
        if writer.is_alive():
            say("stuck", writer.name)
    say("end", sorted(d.copy().items()))


def main() -> None:
    mode, name = sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where a slow exit is
    d = ipchannel.SharedDict(name, timeout=_TIMEOUT)
    say("opened", os.getpid())
    if mode == "loop":
        loop(d)
    elif mode.startswith("locked-"):
        locked(d, mode.removeprefix("locked-"))
    else:
        carry(d, mode)


if __name__ == "__main__":
    main()
