"""``run_on_host``: run a function periodically in exactly one process, the current host.

The answer to "my scheduled job runs N times under N gunicorn workers": every
worker calls ``run_on_host(channel, job, every=60)``; only the host runs it.
When the host dies, the next host starts it; when a host steps down (close,
exit, recycling), its job is stopped and waited for (``stop_timeout``) *before*
the lock or claim is released. A host asks before each run whether it may serve,
and a new host waits ``first_run_delay`` (``time_limit``, at least ``every``)
before its first run, so a run that ends within ``time_limit`` never overlaps
another, even when its host is cut off from the engine or frozen mid-run and
another takes over. A run still going once its host's claim can have lapsed is
an ERROR in the log: that is the run that can overlap the next host's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING

from . import _fork, _platform
from ._core.channel import Channel
from ._core.port import port_of
from ._requests.channel import RequestChannel
from ._timing import validate_timeout

if TYPE_CHECKING:
    import os
    import socket
    import ssl
    from collections.abc import Callable, Mapping

__all__ = ["HostJob", "first_run_delay", "run_on_host"]

_LOGGER = logging.getLogger("ipchannel")


class HostJob:
    """A function run every ``every`` seconds in whichever process hosts the channel.

    Runs on a daemon thread ``ipchannel-job:NAME`` of the host, one per term. An
    exception in the function is logged and the schedule goes on.
    """

    def __init__(
        self,
        channel: Channel,
        func: Callable[[], object],
        every: float,
        stop_timeout: float,
        *,
        time_limit: float | None = None,
        _owned: Channel | None = None,
    ) -> None:
        self._channel, self._func, self._every, self._stop_timeout = channel, func, every, stop_timeout
        self._time_limit = every if time_limit is None else time_limit
        port = port_of(channel)
        self._may_serve, self._claim_problem = port.may_serve, port.claim_problem
        self._stopped = False
        self._owned = _owned  # a channel run_on_host made for the job, closed by stop()
        self._reset_after_fork()
        _fork.register(self)
        channel.on_elected(self._elected)
        channel.on_demoted(self._demoted)
        if channel.is_host:  # elected before the hooks were there
            self._elected(channel.generation or 0)

    def _reset_after_fork(self) -> None:
        """Start with no job thread and no runs (also in a forked child: the parent's thread is not ours)."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._previous: threading.Thread | None = None  # an earlier term's thread whose run outlived it
        self._stop_term = threading.Event()
        self._run_started: float | None = None  # when the run going on now started (monotonic)
        self._run_reported = False  # the run going on now was reported as outliving its claim
        self._over_limit_said = False
        self.runs = 0  # in this process, over every term

    @property
    def channel(self) -> Channel:
        """The ``Channel`` whose host runs the job (``is_host``, ``host_pid``, ``generation``, hooks)."""
        return self._channel

    @property
    def running(self) -> bool:
        """True while this process runs the job (it hosts)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running" if self.running else "waiting to host"
        return (
            f"<HostJob {self._name} every {self._every:g} s on channel {self._channel.name!r}: {state}, "
            f"{self.runs} runs in this process>"
        )

    @property
    def _name(self) -> str:
        return getattr(self._func, "__qualname__", repr(self._func))

    def _elected(self, generation: int) -> None:
        with self._lock:
            if self._stopped or self.running:
                return
            if self._previous is not None and not self._previous.is_alive():
                self._previous = None
            self._stop_term = stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(stop, generation, self._previous),
                name=f"ipchannel-job:{self._channel.name}",
                daemon=True,
            )
            self._thread.start()

    def _demoted(self, _generation: int = 0) -> None:
        """End the job's term as this process stops hosting, before it lets go of its lock or claim."""
        self._end_term(letting_go=True)

    def _end_term(self, *, letting_go: bool) -> None:
        """Stop this term's runs; wait for one going on, unless its claim already lapsed (then say so).

        ``letting_go``: the claim is released once this returns (a step-down; ``stop()`` of the
        job's own channel), so a run still going then outlives it.
        """
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_term.set()
        if thread is None or thread is threading.current_thread():
            return
        problem = self._claim_problem() if self._run_started is not None else ""
        if problem:  # another host may run it already: waiting would only delay the step-down
            self._outlived(problem)
        else:
            thread.join(self._stop_timeout)
        if not thread.is_alive():
            return
        with self._lock:
            self._previous = thread  # this process runs it again only once that run ended
        if letting_go:
            self._outlived(
                f"it did not return within stop_timeout={self._stop_timeout:g} s of being stopped, and "
                "this process lets go of its claim now"
            )
        else:
            _LOGGER.warning(
                "channel %r: host job %s did not return within stop_timeout=%g s of job.stop(); "
                "that run goes on in its thread",
                self._channel.name,
                self._name,
                self._stop_timeout,
            )

    def _run(self, stop: threading.Event, generation: int, previous: threading.Thread | None) -> None:
        _platform.leave_signals_to_the_application()
        _LOGGER.info(
            "channel %r: host job %r started (generation %d)", self._channel.name, self._func, generation
        )
        wait = first_run_delay(self._every, self._time_limit)
        earliest: float | None = time.monotonic() + wait  # no run before: an earlier host's may still go on
        while not stop.wait(wait):
            wait = self._every
            if not self._may_serve():  # its claim lapsed: the monitor steps it down
                earliest = None
                continue
            now = time.monotonic()
            if earliest is None:  # may serve again: wait as a new host would
                earliest = now + first_run_delay(self._every, self._time_limit)
            if now < earliest:
                wait = earliest - now
                continue
            if previous is not None and previous.is_alive():  # an earlier term's run of ours goes on
                continue
            self._run_once()

    def _run_once(self) -> None:
        """Run the function once; report a run that outlived the claim, or took over ``time_limit``."""
        self._run_reported = False
        self._run_started = started = time.monotonic()
        try:
            self._func()
        except Exception:
            _LOGGER.exception("channel %r: host job %r raised", self._channel.name, self._func)
        finally:
            self._run_started = None
        self.runs += 1
        took = time.monotonic() - started
        if problem := self._claim_problem():
            self._outlived(problem, took)
        elif took > self._time_limit and not self._over_limit_said:
            self._over_limit_said = True
            _LOGGER.warning(
                "channel %r: a run of host job %s took %.2f s, over its time_limit=%g s: should its host "
                "lose its claim during such a run, the next host may start the job before it ends; "
                "raise run_on_host's time_limit to the longest a run can take",
                self._channel.name,
                self._name,
                took,
                self._time_limit,
            )

    def _outlived(self, problem: str, took: float | None = None) -> None:
        """Log, once per run, the ERROR of a run still going when its host's claim can have lapsed."""
        started, still = self._run_started, took is None
        if self._run_reported or (still and started is None):  # (a run that returned reports itself)
            return
        self._run_reported = True
        if started is not None and took is None:
            took = time.monotonic() - started
        _LOGGER.error(
            "channel %r: a run of host job %s %s %.2f s after it started, past this host's claim (%s): "
            "the next host starts the job time_limit=%g s after it takes over, so a longer run can overlap "
            "its first run; make the job return within time_limit, or raise run_on_host's time_limit",
            self._channel.name,
            self._name,
            "still runs" if still else "returned",
            took or 0.0,
            problem,
            self._time_limit,
        )

    def stop(self) -> None:
        """Stop running the job in this process, now and in later terms (and close its own channel)."""
        with self._lock:
            self._stopped = True
        self._end_term(letting_go=self._owned is not None)
        if self._owned is not None:
            self._owned.close()


def first_run_delay(every: float, time_limit: float) -> float:
    """Return how long a new host waits before its first run: where "never two runs at once" is decided.

    A host asks whether it may serve before each run, so an earlier host's last run began while
    its claim held, and ends within ``time_limit`` of that (the bound the user gives). A new host
    takes over only once that claim is gone: locally once the old host released the lock (after
    the run returned, or ``stop_timeout``), across machines once the engine expired the key, at
    least ``margin`` after the old host fenced itself (``ttl - margin`` after its last confirmed
    renewal). So a first run ``time_limit`` after taking over comes after any earlier run ended,
    with that margin to spare for clock-rate differences; and never sooner than ``every``.
    """
    return max(every, time_limit)


def run_on_host(  # noqa: PLR0913 - keyword-only options, as Channel has
    channel: Channel | RequestChannel | str,
    func: Callable[[], object],
    every: float,
    *,
    join_timeout: float | None = 5.0,
    stop_timeout: float = 10.0,
    time_limit: float | None = None,
    runtime_dir: str | os.PathLike[str] | None = None,
    authkey: bytes | None = None,
    coordinator: str | None = None,
    listen: str | None = None,
    advertise: str | None = None,
    ttl: float | None = None,
    ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    server_hostname: str | None = None,
    ssl_verify: bool = True,
) -> HostJob:
    """Run ``func()`` every ``every`` seconds in the process that hosts ``channel``, and only there.

    ``channel`` may be a name: the job then gets a ``Channel`` of its own, made with the
    options given here (``coordinator=``... across machines) and closed by ``job.stop()``.
    Call it in every process (each gunicorn worker, say). It joins the election
    (``channel.join(join_timeout)``) so the job has a host even if nobody
    connects. ``stop_timeout``: how long a stepping-down host waits for a
    running ``func`` to return before letting its lock or claim go.

    ``time_limit``: the longest one run of ``func`` may take (None: ``every``). A new host
    waits that long (at least ``every``) before its first run, so a run that ends within it
    never overlaps the next host's, even if its own host lost the claim meanwhile (cut off
    from the engine, frozen). A run still going when its host's claim can have lapsed is
    logged as an ERROR; one that took longer than ``time_limit`` as a WARNING (once).

    :raises ChannelTimeout: no host could be found or elected within ``join_timeout``.
    """
    options = {
        "runtime_dir": runtime_dir,
        "authkey": authkey,
        "coordinator": coordinator,
        "listen": listen,
        "advertise": advertise,
        "ttl": ttl,
        "ssl_context": ssl_context,
        "server_hostname": server_hostname,
        "ssl_verify": None if ssl_verify is True else ssl_verify,  # None: the default, not an option given
    }
    _check_channel(channel, options)
    if not callable(func):
        raise TypeError(f"func must be callable without arguments, not {type(func).__name__}")
    if isinstance(every, bool) or not isinstance(every, (int, float)):
        raise TypeError(f"every must be a number of seconds (int or float), not {type(every).__name__}")
    if not every > 0 or math.isinf(every):
        raise ValueError(f"every must be a positive, finite number of seconds, not {every!r}")
    validate_timeout(join_timeout, "join_timeout")
    if validate_timeout(stop_timeout, "stop_timeout") is None:
        raise ValueError("stop_timeout must be a number of seconds, not None")
    limit = _check_time_limit(time_limit)
    owned = Channel(channel, _no_connections, **options) if isinstance(channel, str) else None  # type: ignore[arg-type]
    base = owned or (channel if isinstance(channel, Channel) else channel.channel)  # type: ignore[union-attr]
    job = HostJob(base, func, float(every), stop_timeout, time_limit=limit, _owned=owned)
    try:
        base.join(join_timeout)  # becoming host here runs the job's on_elected hook
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return job


def _check_time_limit(time_limit: object) -> float | None:
    """Return ``time_limit`` as float seconds (None: ``every``), or raise TypeError/ValueError naming it."""
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)):
        raise TypeError(
            "time_limit must be a number of seconds (int or float), or None for the same as every; "
            f"not {type(time_limit).__name__}"
        )
    if not time_limit > 0 or math.isinf(time_limit):
        raise ValueError(
            "time_limit must be a positive, finite number of seconds (the longest one run may take), "
            f"not {time_limit!r}"
        )
    return float(time_limit)


def _check_channel(channel: object, options: Mapping[str, object]) -> None:
    """Refuse what ``run_on_host`` cannot run on: not a channel, or options beside a channel already made."""
    if not isinstance(channel, (Channel, RequestChannel, str)):
        raise TypeError(
            f"channel must be a Channel, a RequestChannel (a SharedDict's is .channel) or a channel "
            f"name, not {type(channel).__name__}"
        )
    given = [option for option, value in options.items() if value is not None]
    if given and not isinstance(channel, str):
        raise TypeError(f"{', '.join(given)}: pass these to the channel you made, or give run_on_host a name")


def _no_connections(conn: socket.socket) -> None:
    """Close a stray connection: nobody connects to a job's own channel."""
