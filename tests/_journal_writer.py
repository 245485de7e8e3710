"""A process writing to a durable SharedDict, reporting every write it sent and every one acknowledged.

``python _journal_writer.py write NAME RUNTIME_DIR JOURNAL_DIR PROC OUT STOP`` opens
``SharedDict(NAME, appendonly=True, appendfsync="always")`` and, until the file STOP exists,
sets a key of its own (``PROC.PID-I`` to I) and increments ``n``, in turn (compacting the
journal often: ``COMPACT_MIN_BYTES``). Each event is one
line appended to OUT with one ``write``, after the call returned or raised (a SIGKILL never
leaves half a line): ``TIME PID try|ack|err WHAT [VALUE]``, TIME on the system-wide monotonic
clock. ``try`` comes before the call, ``ack`` once it returned (the write is acknowledged),
``err`` if it raised. The ipchannel log goes to OUT.log.

``python _journal_writer.py dump NAME RUNTIME_DIR JOURNAL_DIR OUT`` opens the dict, writes
its content as JSON to OUT and closes it (the check after the chaos: a fresh process replays).

``python _journal_writer.py fork NAME RUNTIME_DIR JOURNAL_DIR EXIT OUT`` opens the dict (it
hosts), sets ``before``, forks a child that increments ``child`` and leaves by EXIT
(``exit``: the interpreter's exit, atexit and all; ``_exit``: ``os._exit``), then, once the
child is reaped, sets ``after`` and prints ``done CHILD_STATUS`` and waits to be killed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import ipchannel
from ipchannel._shareddict import journal

TIMEOUT = 4.0  # the dict's: how long a write waits for a host
#: compact once a log is larger than this (and than the snapshot): a compaction every second or so,
#: so kills land in one too (the library's threshold, 8 MiB, is never reached in a test)
journal.COMPACT_MIN_BYTES = 32 << 10


def _open(name: str, runtime_dir: str, journal_dir: str) -> ipchannel.SharedDict:
    return ipchannel.SharedDict(
        name,
        runtime_dir=runtime_dir,
        journal_dir=journal_dir,
        appendonly=True,
        appendfsync="always",
        timeout=TIMEOUT,
    )


def _writer(args: list[str]) -> None:
    name, runtime_dir, journal_dir, proc, out, stop = args
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.getpid()

    def say(event: str, what: str, value: object = "") -> None:
        os.write(fd, f"{time.monotonic():.4f} {pid} {event} {what} {value}\n".encode())

    say("try", "open")
    try:
        d = _open(name, runtime_dir, journal_dir)
    except Exception as exc:  # noqa: BLE001 - reported: the test restarts this process later
        say("err", "open", type(exc).__name__)
        sys.exit(2)
    say("ack", "open")
    i = 0
    while not os.path.exists(stop):
        i += 1
        key = f"{proc}.{pid}-{i}"
        for what in (f"set:{key}", "incr"):
            say("try", what)
            try:
                if what == "incr":
                    result = d.incr("n")
                else:
                    d[key] = result = i
            except Exception as exc:  # noqa: BLE001 - not acknowledged: reported as such
                say("err", what, type(exc).__name__)
                continue
            say("ack", what, result)
    say("try", "close")
    d.close()
    say("ack", "close")


def _fork(name: str, runtime_dir: str, journal_dir: str, how: str, _log: str) -> None:
    d = _open(name, runtime_dir, journal_dir)
    d["before"] = 1
    pid = os.fork()
    if pid == 0:
        d.incr("child")
        if how == "_exit":
            os._exit(0)
        sys.exit(0)  # atexit: the dict's and the channel's handlers run in the child
    _, status = os.waitpid(pid, 0)
    d["after"] = 1
    print("done", status, flush=True)
    sys.stdin.readline()


def _dump(name: str, runtime_dir: str, journal_dir: str, out: str) -> None:
    with _open(name, runtime_dir, journal_dir) as d:
        content = d.copy()
    with open(out, "w") as f:
        json.dump(content, f)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    log = args[-2] if mode == "write" else args[-1]
    logging.basicConfig(
        filename=f"{log}.log", level=logging.INFO, format="%(asctime)s %(process)d %(threadName)s %(message)s"
    )
    if mode == "write":
        _writer(args)
    elif mode == "fork":
        _fork(*args)
    else:
        _dump(*args)


if __name__ == "__main__":
    main()
