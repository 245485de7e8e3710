"""A process hitting one ipchannel:// rate limit as fast as it can, logging every outcome.

``python _limits_hitter.py RUNTIME_DIR OUT STOP`` opens the storage ``ipchannel://limits-chaos``
and, until the file STOP exists, takes one entry of the moving window ``LIMIT per WINDOW s`` and
increments the fixed-window counter ``fixed``, in turn. Each outcome is one line appended to OUT
with one ``write`` (a SIGKILL never leaves half a line); times are ``time.time()``, the clock the
host stamps with:

- ``m SENT ANSWERED 1|0``: a moving-window hit sent at SENT, answered (passed or refused) at ANSWERED;
- ``i VALUE``: the fixed counter's value this increment returned (acknowledged by the host);
- ``e m|i KIND``: a hit or an increment that raised (KIND: the exception's class); it may or may
  not have counted.

Then it writes ``done`` and waits for the file STOP.exit. As host, it widens the window between
publishing a batch and answering it (``shareddict.published``), where a SIGKILL makes the writers
send their writes again to the next host.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

from limits import RateLimitItemPerSecond
from limits.strategies import MovingWindowRateLimiter

import ipchannel.contrib.limits
from ipchannel import _hooks
from ipchannel.contrib.limits import SharedDictStorage

NAME = "limits-chaos"
LIMIT, WINDOW = 5, 1
TIMEOUT = 3.0  # the storage's: how long a hit waits for a host


def _widen(point: str, detail: object) -> None:  # noqa: ARG001 - the hook's signature
    if point == "shareddict.published" and random.random() < 0.2:  # noqa: S311 - not cryptography
        time.sleep(0.02)


def main(runtime_dir: str, out: str, stop: str) -> None:
    """Hit until STOP exists; see the module's docstring."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # ipchannel's warnings, for the test: a loss SharedDict reports (every holder of a write died)
    logging.basicConfig(filename=f"{out}.log", level=logging.WARNING, format="%(message)s")
    _hooks.pause = _widen
    storage = SharedDictStorage(f"ipchannel://{NAME}?runtime_dir={runtime_dir}&timeout={TIMEOUT}")
    limiter, item = MovingWindowRateLimiter(storage), RateLimitItemPerSecond(LIMIT, WINDOW)
    while not os.path.exists(stop):
        try:
            sent = time.time()
            passed = limiter.hit(item, "k")
            os.write(fd, f"m {sent!r} {time.time()!r} {int(passed)}\n".encode())
        except Exception as exc:  # noqa: BLE001 - logged: a call during a failover may time out
            os.write(fd, f"e m {type(exc).__name__}\n".encode())
        try:
            os.write(fd, f"i {storage.incr('fixed', 3600)}\n".encode())
        except Exception as exc:  # noqa: BLE001 - as above
            os.write(fd, f"e i {type(exc).__name__}\n".encode())
        time.sleep(0.002)  # leave the two cores to the others now and then
    os.write(fd, b"done\n")
    while not Path(stop + ".exit").exists():
        time.sleep(0.01)
    ipchannel.contrib.limits.close_all()


if __name__ == "__main__":
    main(*sys.argv[1:])
