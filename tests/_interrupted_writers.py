"""A script whose threads write to a SharedDict while SIGTERM interrupts its main thread.

``python _interrupted_writers.py MODE NAME`` (``IPCHANNEL_DIR`` set; another process hosts) handles
SIGTERM as the README says, ``signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))``, and prints
one line per event for the test (``tests/test_shareddict.py``) to wait on:

- ``loop``: eight writer threads and the main thread increment until SIGTERM; the main thread's
  ``finally`` stops the writers, and the process must then exit (atexit closes the dict).
- ``queued``, ``sending``: the host holds the writes of two threads (``"slow"``); the main thread's
  write waits to be sent next, with two more threads' writes (``"carried"``) behind it. SIGTERM
  comes while the main thread waits (``queued``) or while it sends all three (``sending``). The
  two threads behind it must have their writes applied, once each, and not get its SystemExit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

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
    d = ipchannel.SharedDict(name, timeout=_TIMEOUT)
    say("opened", os.getpid())
    if mode == "loop":
        loop(d)
    else:
        carry(d, mode)


if __name__ == "__main__":
    main()
