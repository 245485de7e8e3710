"""Blocking calls for coroutines: a small pool of daemon threads owned by one async object.

``ipchannel.aio`` runs the blocking, failover-tested client (``RequestChannel``,
``SharedDict``) in these threads, so failover, exactly-once and fork safety stay in
one place. The event loop's part is kept to what cannot stall it: queue a job,
await a future, and later run the ``call_soon_threadsafe`` callback that settles
it. The loop takes only locks no other thread holds across a wait, and waits for a
thread only to start the workers: at the first call, all ``workers`` of them at once
(``Thread.start`` waits for each to run), so nothing is started on the loop during a
failover.

Why not ``loop.run_in_executor(None, ...)``: the default executor is shared with the
application (a failover's blocked requests would starve its ``to_thread`` calls),
its threads are neither daemon nor named, and nothing resets it after ``fork()``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._errors import ChannelClosed

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._timing import Deadline

__all__ = ["DEFAULT_WORKERS", "Runner", "validate_workers"]

_LOGGER = logging.getLogger("ipchannel")
DEFAULT_WORKERS = 8  # threads of an async object, unless it is given ``workers``
_JOIN_TIMEOUT = 5.0  # a worker still in a call after close() is logged, not waited for


def validate_workers(workers: object) -> int:
    """Return ``workers`` (threads for blocking calls), or raise TypeError/ValueError naming it."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int (a number of threads), not {type(workers).__name__}")
    if not 1 <= workers <= 256:
        raise ValueError(f"workers must be between 1 and 256 threads, not {workers!r}")
    return workers


class _Job:
    """One blocking call and the loop future that awaits its outcome."""

    __slots__ = ("_claim", "args", "func", "future", "loop", "state")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop, self.future, self.func, self.args = loop, future, func, args
        self.state = "queued"  # -> "started" (a worker took it) or "abandoned" (its awaiter gave up)
        self._claim = threading.Lock()  # held for a moment by the worker or the loop, never across a call

    def _move(self, frm: str, to: str) -> bool:
        with self._claim:
            if self.state != frm:
                return False
            self.state = to
            return True

    def abandon(self) -> bool:
        """On the loop: make sure no worker ever starts this call; False if one already did."""
        return self._move("queued", "abandoned")

    def run(self) -> None:
        """Run in a worker, unless cancelled or abandoned first; hand the outcome to the loop."""
        if self.future.cancelled() or not self._move("queued", "started"):
            return
        try:
            result = self.func(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, raised there
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def _settle(self, result: Any, exc: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, exc)
        except RuntimeError:  # the loop was closed meanwhile: nobody awaits this any more
            _LOGGER.debug("ipchannel: dropping the outcome of %r: its event loop is closed", self.func)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """On the loop: complete ``future`` unless its awaiter was cancelled meanwhile."""
    if future.cancelled():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class Runner:
    """``workers`` daemon threads ``ipchannel-aio:NAME`` running blocking calls for one async object.

    A call waits in the queue while every worker is busy. ``shutdown()`` stops and
    joins them; ``reset_after_fork()`` forgets the parent's (a child has none).
    """

    def __init__(self, name: str, kind: str, workers: int) -> None:
        self._name, self._kind, self._size = name, kind, workers
        self._closed = False
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Start afresh: no threads, an empty queue, a new lock (a parent thread may have held it)."""
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    @property
    def threads(self) -> list[threading.Thread]:
        """The worker threads (none before the first call)."""
        return list(self._threads)

    async def call(
        self,
        func: Callable[..., Any],
        *args: Any,
        deadline: Deadline | None = None,
        late: Callable[[], BaseException] | None = None,
    ) -> Any:
        """Run ``func(*args)`` in a worker and return (or raise) its outcome; cancellable.

        Cancelled before a worker took it: never run. Cancelled later: the call
        runs to its end in the worker and its outcome is dropped. Still waiting for
        a worker at ``deadline``: never run, and ``late()`` is raised (a call that
        started is bounded by its own timeout).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(loop, future, func, args)
        with self._lock:
            if self._closed:
                raise ChannelClosed(self._name, self._kind)
            if not self._threads:
                self._start_workers()
            self._jobs.put(job)
        if deadline is None or deadline.timeout is None or late is None:
            return await future
        try:
            await asyncio.wait((future,), timeout=deadline.remaining())
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not future.done() and job.abandon():
            future.cancel()
            raise late()
        return await future

    def _start_workers(self) -> None:
        for _ in range(self._size):
            thread = threading.Thread(target=self._work, name=f"ipchannel-aio:{self._name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        _platform.leave_signals_to_the_application()
        jobs = self._jobs  # this generation's queue: a forked child gets a new one
        while (job := jobs.get()) is not None:
            job.run()
            del job  # drop the outcome now, not when the next job arrives

    def close(self) -> list[threading.Thread]:
        """Refuse new calls and tell every worker to stop after its call; return them (to join)."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
            for _ in threads:
                self._jobs.put(None)
        return threads

    def shutdown(self) -> None:
        """``close()``, then join the workers (blocking; a worker stuck in a call is logged)."""
        for thread in self.close():
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)
                if thread.is_alive():
                    _LOGGER.warning("ipchannel: %s did not stop within %.0f s", thread.name, _JOIN_TIMEOUT)

    async def aclose(self, final: Callable[[], None]) -> None:
        """Run ``final()`` (the blocking close) and ``shutdown()`` in a thread of their own; await both.

        If the awaiting task is cancelled, the closing still completes in that thread.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        job = _Job(loop, done, self._close_with, (final,))
        closer = threading.Thread(target=job.run, name=f"ipchannel-aio-close:{self._name}", daemon=True)
        closer.start()
        await done
        closer.join()  # it has settled ``done``, its last act: returns at once

    def _close_with(self, final: Callable[[], None]) -> None:
        try:
            final()
        finally:
            self.shutdown()
