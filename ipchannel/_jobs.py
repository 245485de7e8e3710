"""``run_on_host``: run a function periodically in exactly one process, the current host.

The answer to "my scheduled job runs N times under N gunicorn workers": every
worker calls ``run_on_host(channel, job, every=60)``; only the host runs it.
When the host dies, the next host starts it; when a host steps down (close,
exit, recycling), its job is stopped and waited for *before* the lock is
released, so two processes never run it at once. A new host waits one full
interval before its first run, so even across a SIGKILL two runs are never
closer than ``every`` (the dead host's last run was before its death, and the
election comes after it).
"""

from __future__ import annotations

import logging
import math
import threading
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

__all__ = ["HostJob", "run_on_host"]

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
        _owned: Channel | None = None,
    ) -> None:
        self._channel, self._func, self._every, self._stop_timeout = channel, func, every, stop_timeout
        self._may_serve = port_of(channel).may_serve
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
        self._stop_term = threading.Event()
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
        name = getattr(self._func, "__qualname__", repr(self._func))
        return (
            f"<HostJob {name} every {self._every:g} s on channel {self._channel.name!r}: {state}, "
            f"{self.runs} runs in this process>"
        )

    def _elected(self, generation: int) -> None:
        with self._lock:
            if self._stopped or self.running:
                return
            self._stop_term = stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(stop, generation),
                name=f"ipchannel-job:{self._channel.name}",
                daemon=True,
            )
            self._thread.start()

    def _demoted(self, _generation: int = 0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_term.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._stop_timeout)
            if thread.is_alive():
                _LOGGER.warning(
                    "channel %r: the host job did not return within %.1f s of being stopped; "
                    "the next host may start it while it still runs",
                    self._channel.name,
                    self._stop_timeout,
                )

    def _run(self, stop: threading.Event, generation: int) -> None:
        _platform.leave_signals_to_the_application()
        _LOGGER.info(
            "channel %r: host job %r started (generation %d)", self._channel.name, self._func, generation
        )
        while not stop.wait(self._every):
            if not self._may_serve():  # its claim lapsed: the monitor steps it down
                continue
            try:
                self._func()
            except Exception:
                _LOGGER.exception("channel %r: host job %r raised", self._channel.name, self._func)
            self.runs += 1

    def stop(self) -> None:
        """Stop running the job in this process, now and in later terms (and close its own channel)."""
        with self._lock:
            self._stopped = True
        self._demoted()
        if self._owned is not None:
            self._owned.close()


def run_on_host(  # noqa: PLR0913 - keyword-only options, as Channel has
    channel: Channel | RequestChannel | str,
    func: Callable[[], object],
    every: float,
    *,
    join_timeout: float | None = 5.0,
    stop_timeout: float = 10.0,
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
    running ``func`` to return before letting the next host start.

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
    owned = Channel(channel, _no_connections, **options) if isinstance(channel, str) else None  # type: ignore[arg-type]
    base = owned or (channel if isinstance(channel, Channel) else channel.channel)  # type: ignore[union-attr]
    job = HostJob(base, func, float(every), stop_timeout, _owned=owned)
    try:
        base.join(join_timeout)  # becoming host here runs the job's on_elected hook
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return job


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
