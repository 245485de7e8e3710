"""``python -m ipchannel demo``: worker processes share a ticket counter; the demo kills its host, twice.

Each worker is a real process (spawn) running the same code: it connects to
channel ``demo`` and asks for the next ticket every ``interval`` seconds. The
host keeps the counter in its memory, so the numbers restart when a host dies:
the service outlives its host, its in-memory state does not.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .._core.channel import Channel
from .._errors import ChannelError, HostChanged

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["run_demo"]

_TICKETS = itertools.count(1)
_TICKETS_LOCK = threading.Lock()
_STOP = "stop-demo"
_START_TIMEOUT = 30.0  # for the workers to start and elect a host
_TAKEOVER_TIMEOUT = 10.0  # for a new host to answer after a kill
_SHOW = 1.5  # seconds of tickets shown after each step, for the reader


def _ticket_handler(conn: socket.socket) -> None:
    """Answer each line with '<next ticket> <host pid>' (runs in a server thread of the host)."""
    with conn.makefile("rwb", buffering=0) as stream:
        for _line in stream:
            with _TICKETS_LOCK:
                ticket = next(_TICKETS)
            stream.write(f"{ticket} {os.getpid()}\n".encode())


# Workers report over a one-way pipe with no lock: each small message is one atomic write(),
# so a worker killed mid-report cannot wedge the others (a multiprocessing Queue or Event can).
_Event = tuple[float, int, int, str, tuple[int, ...]]


class _Report(logging.Handler):
    """Forward this worker's 'elected host' log lines to the demo's output."""

    def __init__(self, worker: int, events: Connection) -> None:
        super().__init__(logging.INFO)
        self._worker, self._events = worker, events

    def emit(self, record: logging.LogRecord) -> None:
        if "elected host" in record.getMessage() and isinstance(record.args, tuple):
            generation = int(record.args[2])  # type: ignore[call-overload]
            self._events.send((time.monotonic(), self._worker, os.getpid(), "elected", (generation,)))


def _worker(worker: int, runtime_dir: str, events: Connection, interval: float) -> None:
    logging.getLogger("ipchannel").addHandler(_Report(worker, events))
    logging.getLogger("ipchannel").setLevel(logging.INFO)
    stop = Path(runtime_dir, _STOP)
    with Channel("demo", _ticket_handler, runtime_dir=runtime_dir) as channel:
        sock = channel.connect(timeout=10)
        stream = sock.makefile("rb", buffering=0)
        while not stop.exists():
            sock.sendall(b"ticket\n")
            try:
                ticket, host = stream.readline().split()
            except HostChanged as exc:
                changed = (exc.old_generation or 0, exc.new_generation or 0)
                events.send((time.monotonic(), worker, os.getpid(), "changed", changed))
                stream = sock.makefile("rb", buffering=0)  # a file object that saw an error is spent
                continue
            events.send((time.monotonic(), worker, os.getpid(), "ticket", (int(ticket), int(host))))
            time.sleep(interval)


class _Demo:
    def __init__(self, workers: int, kills: int, interval: float, out: TextIO) -> None:
        self.n_workers, self.kills, self.interval, self.out = workers, kills, interval, out
        self.ctx = multiprocessing.get_context("spawn")
        self.events, self.report = self.ctx.Pipe(duplex=False)
        self.start = time.monotonic()
        self.host: int | None = None
        self.names: dict[int, str] = {}
        self.killed_at: float | None = None
        self.answered = True

    def say(self, when: float, who: str, text: str) -> None:
        print(f"{when - self.start:7.3f}s  {who:<22} {text}", file=self.out, flush=True)

    def since_kill(self, when: float) -> str:
        return "" if self.killed_at is None else f", {(when - self.killed_at) * 1000:.1f} ms after the kill"

    def handle(self, event: _Event) -> None:
        when, worker, pid, kind, args = event
        who = f"worker {worker} (pid {pid})"
        self.names[pid] = f"worker {worker}"
        if kind == "elected":
            self.host = pid
            self.say(when, who, f"elected host (generation {args[0]}{self.since_kill(when)})")
        elif kind == "changed":
            self.say(when, who, f"HostChanged (generation {args[0]} -> {args[1]}): sending again")
        elif not self.answered and args[1] == self.host:
            self.answered = True
            self.say(when, who, f"ticket {args[0]} from the NEW host pid {args[1]}{self.since_kill(when)}")
        else:
            self.say(when, who, f"ticket {args[0]} from host pid {args[1]}")

    def pump(self, until: float, done: Callable[[], bool] = lambda: False) -> bool:
        """Show events until ``done()`` or the time ``until``; return ``done()``."""
        while not done() and (remaining := until - time.monotonic()) > 0:
            if self.events.poll(remaining):
                self.handle(self.events.recv())
        return done()

    def run(self, runtime_dir: str) -> int:
        procs: list[BaseProcess] = [
            self.ctx.Process(
                target=_worker, args=(i + 1, runtime_dir, self.report, self.interval), daemon=True
            )
            for i in range(self.n_workers)
        ]
        for proc in procs:
            proc.start()
        self.report.close()
        try:
            return self._script()
        finally:
            Path(runtime_dir, _STOP).touch()
            for proc in procs:
                proc.join(5)
                if proc.exitcode is None:
                    proc.kill()
                    proc.join()
            self.events.close()

    def _script(self) -> int:
        # Python processes start slowly on a busy machine: wait for a host, then show a few tickets.
        if not self.pump(time.monotonic() + _START_TIMEOUT, lambda: self.host is not None):
            print(f"demo: no host was elected within {_START_TIMEOUT:.0f} s", file=self.out)
            return 1
        self.pump(time.monotonic() + _SHOW)
        for _ in range(self.kills):
            victim = self.host
            assert victim is not None  # a host answered the last round
            self.killed_at, self.host, self.answered = time.monotonic(), None, False
            os.kill(victim, signal.SIGKILL)
            self.say(self.killed_at, "demo", f"SIGKILL host pid {victim} ({self.names.get(victim, '?')})")
            if not self.pump(time.monotonic() + _TAKEOVER_TIMEOUT, lambda: self.answered):
                print(f"demo: no new host answered within {_TAKEOVER_TIMEOUT:.0f} s", file=self.out)
                return 1
            self.pump(time.monotonic() + _SHOW)
        print(
            f"\n{self.kills} hosts killed with SIGKILL; each time another worker was elected,",
            "and every worker kept getting tickets on the same socket.",
            "Tickets restart at 1 with each new host: the service outlives its host,",
            "the host's memory does not. An idle worker notices a dead host within",
            f"{Channel.monitor_interval * 1000:.0f} ms (monitor thread); one waiting on it notices at once.",
            sep="\n",
            file=self.out,
        )
        return 0


def run_demo(workers: int = 4, kills: int = 2, interval: float = 0.25, out: TextIO = sys.stdout) -> int:
    """Run the demo; return the exit code (0 if every kill was followed by a takeover)."""
    if workers < kills + 1:
        raise ChannelError(f"the demo needs more workers ({workers}) than kills ({kills})")
    runtime_dir = tempfile.mkdtemp(prefix="ipchannel-demo-")
    demo = _Demo(workers, kills, interval, out)
    print(
        f"ipchannel demo: {workers} worker processes share channel 'demo' (runtime dir {runtime_dir}).\n"
        f"Each asks the host for a ticket every {interval} s; the host counts in its own memory.\n",
        file=out,
        flush=True,
    )
    try:
        return demo.run(runtime_dir)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
