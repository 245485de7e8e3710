"""An event-loop heartbeat: how late is a task that sleeps 1 ms at a time, and why.

Each tick records, beside its lateness, what kept the loop thread from running:

- run-queue wait: time the kernel kept the loop thread runnable but not running
  (``/proc/thread-self/schedstat``), i.e. the machine's other load;
- garbage collection (``gc.callbacks``; any thread, holding the GIL throughout).

``check()`` fails if a tick was late by more than ``GUARD`` once the kernel's part is
taken out; with ``IPCHANNEL_STRICT_HEARTBEAT=1`` (a machine with cores to spare) raw
lateness is held to it, and with ``IPCHANNEL_HEARTBEAT_BOUND=0.005`` to the issue's
target. The target (``TARGET``, 5 ms) is not met every time on a 2-core machine: about
1 run in 10 has a tick 5-6.5 ms late (threads of this process waiting for the GIL while
its holder is preempted), so the test guards 10 ms, which any blocking call on the loop
during a failover (5-50 ms) exceeds, and prints each run's numbers beside the target.
The failure message lists every late tick with its causes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

TICK = 0.001
TARGET = 0.005  # the bound: reported, not yet met in every run
GUARD = float(os.environ.get("IPCHANNEL_HEARTBEAT_BOUND", "0.010"))  # asserted
SWITCH_INTERVAL = 0.001  # sys.setswitchinterval() in the measured process, as the README advises
STRICT = os.environ.get("IPCHANNEL_STRICT_HEARTBEAT") == "1"


class Heartbeat:
    """Sleep ``TICK`` at a time on the running loop; record each wake-up's lateness and its causes."""

    def __init__(self) -> None:
        #: (monotonic time, lateness, run-queue wait, gc time), in seconds
        self.ticks: list[tuple[float, float, float, float]] = []
        self._gc: list[tuple[float, float]] = []
        self._gc_start = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.event = 0.0  #: when the event under test happened: late ticks are shown relative to it

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self._gc.append((self._gc_start, time.monotonic()))

    async def _run(self) -> None:
        # One pread per tick: every syscall on the loop thread lets go of the GIL, so reading more
        # (say every thread's counters) would itself give other threads chances to delay the loop.
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        gc.callbacks.append(self._on_gc)
        try:
            last, waited = time.monotonic(), _run_queue_wait(fd)
            while not self._stop.is_set():
                await asyncio.sleep(TICK)
                now, now_waited = time.monotonic(), _run_queue_wait(fd)
                in_gc = sum(min(end, now) - max(start, last) for start, end in self._gc if end > last)
                self.ticks.append((now, now - last - TICK, now_waited - waited, in_gc))
                last, waited = now, now_waited
        finally:
            gc.callbacks.remove(self._on_gc)
            os.close(fd)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def worst(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The largest raw lateness of a tick between ``start`` and ``end``."""
        return max(late for at, late, *_ in self.ticks if start <= at <= end)

    def worst_own(self) -> float:
        """The largest lateness the kernel does not explain: what this process made the loop wait."""
        return max(late - waited for _, late, waited, _ in self.ticks)

    def check(self) -> None:
        """Fail if a tick was late by more than ``GUARD`` (less the kernel's part, unless STRICT)."""
        worst = self.worst() if STRICT else self.worst_own()
        assert worst <= GUARD, self.summary()

    def summary(self) -> str:
        lates = sorted(late for _, late, *_ in self.ticks)
        p99 = lates[int(len(lates) * 0.99)]
        late = [tick for tick in self.ticks if tick[1] > TARGET]  # the late ones are listed
        detail = ", ".join(
            f"{late * 1000:.1f} ms at {(at - self.event) * 1000:+.0f} ms"
            f" (run queue {waited * 1000:.1f}, gc {in_gc * 1000:.1f})"
            for at, late, waited, in_gc in late[:10]
        )
        return (
            f"{len(lates)} ticks, max {lates[-1] * 1000:.2f} ms late (p99 {p99 * 1000:.2f});"
            f" less the kernel's run-queue waits {self.worst_own() * 1000:.2f} ms"
            f" (target {TARGET * 1000:.0f} ms: {'met' if self.worst_own() <= TARGET else 'MISSED'})"
            + (f"; late ticks: {detail}" if late else "")
        )


def _run_queue_wait(fd: int) -> float:
    """Seconds the loop thread has spent runnable, waiting for a CPU (schedstat's second field)."""
    return int(os.pread(fd, 100, 0).split()[1]) / 1e9
