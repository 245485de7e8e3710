"""Hosting: the Unix-socket server that runs the user's handler, in the host process only.

Lifecycle contract (socketserver's pitfalls, handled here):

- handler threads are daemon threads named ``ipchannel-handler:NAME`` and are
  tracked, with their sockets, so ``close_connections()`` can shut every live
  connection down (clients see EOF at once) and join the threads;
- a few handler threads wait ready (``READY_THREADS``, started with the server):
  a new connection goes to an idle one, else to a new thread, so the pool grows on
  demand; at most ``IDLE_THREADS`` wait idle, blocked without a timeout (no wake-ups);
- ``serve_forever`` runs on ``ipchannel-server:NAME``; ``stop_listening()``
  wakes it by shutting the listening socket, so it returns at once rather
  than after a poll interval, and unlinks the socket file only if it is ours;
- handler errors are logged, never printed; a peer with another uid is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _platform
from .._auth import host_handshake
from .._errors import AuthenticationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._seams.record import HostRecord

__all__ = ["HostedServer", "Tracking", "handler_class"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 2.0
READY_THREADS = 4  # handler threads started with the server, before any client connects
IDLE_THREADS = 8  # idle handler threads kept; more exit when their connection ends
# serve_forever's select timeout: how late it sees shutdown(). Where shutting the listening socket
# wakes the select (stop_listening() does that first), only a rare wake-up; elsewhere, the delay.
_SERVE_POLL = 5.0 if _platform.SHUTDOWN_WAKES_LISTENER else 0.5


def handler_class(handler: object) -> type[socketserver.BaseRequestHandler]:
    """Adapt the user's handler to a ``BaseRequestHandler`` subclass, or raise ``TypeError``."""
    if isinstance(handler, type):
        if issubclass(handler, socketserver.BaseRequestHandler):
            return handler
        raise TypeError(
            f"handler class {handler.__qualname__} is not a socketserver.BaseRequestHandler subclass; "
            "pass such a subclass, or a callable handler(conn: socket.socket)"
        )
    if not callable(handler):
        raise TypeError(
            "handler must be a callable handler(conn: socket.socket) or a "
            f"socketserver.BaseRequestHandler subclass, not {type(handler).__name__}"
        )
    func: Callable[[socket.socket], object] = handler

    class _CallableHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            func(self.request)

    _CallableHandler.__qualname__ = f"handler[{getattr(handler, '__qualname__', repr(handler))}]"
    return _CallableHandler


class Tracking:
    """What both servers share: a named handler thread per connection, tracked so hosting can end them.

    ``prepare(request)`` runs in that thread before the handler: the authkey handshake
    (and, over TCP, TLS and the host's hello). It returns the socket the handler gets, or None to refuse.
    """

    channel_name: str
    _authkey: bytes | None

    def _init_tracking(self) -> None:
        self._tracked_lock = threading.Lock()
        self._live_requests: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._jobs: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._idle = 0  # handler threads waiting for a job, minus jobs queued for them
        self._retired = False

    def start_ready_threads(self, count: int = READY_THREADS) -> None:
        """Have ``count`` idle handler threads (at most ``IDLE_THREADS``), so the first clients start none."""
        with self._tracked_lock:
            missing = min(count, IDLE_THREADS) - self._idle
        for _ in range(missing):
            self._start_handler_thread(None)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._tracked_lock:
            self._live_requests.add(request)
            ready = self._idle > 0 and not self._retired
            if ready:
                self._idle -= 1
        if ready:
            self._jobs.put((request, client_address))
        else:
            self._start_handler_thread((request, client_address))

    def _start_handler_thread(self, job: tuple[Any, Any] | None) -> None:
        thread = threading.Thread(
            target=self._handler_loop, args=(job,), name=f"ipchannel-handler:{self.channel_name}", daemon=True
        )
        with self._tracked_lock:
            self._handler_threads.add(thread)
            if job is None:
                self._idle += 1
        thread.start()

    def _handler_loop(self, job: tuple[Any, Any] | None) -> None:
        """Serve one connection after another: ``job``, then what ``process_request`` queues."""
        _platform.leave_signals_to_the_application()
        try:
            while True:
                if job is None:
                    job = self._jobs.get()
                    if job is None:
                        return  # retire_threads()
                self.process_request_thread(*job)
                job = None
                with self._tracked_lock:
                    if self._retired or self._idle >= IDLE_THREADS:
                        return
                    self._idle += 1
        finally:
            with self._tracked_lock:
                self._handler_threads.discard(threading.current_thread())

    def retire_threads(self) -> None:
        """Let every idle handler thread exit (the server stops); busy ones exit after their connection."""
        with self._tracked_lock:
            self._retired = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        prepared = self.prepare(request)
        if prepared is None:
            self.shutdown_request(request)
            return
        if prepared is not request:
            self.track_as(request, prepared)
        super().process_request_thread(prepared, client_address)  # type: ignore[misc]

    def track_as(self, old: socket.socket, new: socket.socket) -> None:
        """Track ``new`` in place of ``old`` (a TLS socket wrapping it), so closing hosting reaches it."""
        with self._tracked_lock:
            self._live_requests.discard(old)
            self._live_requests.add(new)

    def prepare(self, request: socket.socket) -> socket.socket | None:
        """Authenticate the connection (if the channel has a key); the socket to serve, or None."""
        if self._authkey is not None and not self.authenticate(request):
            return None
        return request

    def authenticate(self, request: socket.socket) -> bool:
        """Run the authkey handshake in this handler thread, so a slow client delays nobody else."""
        assert self._authkey is not None
        try:
            host_handshake(request, self._authkey, self.channel_name)
        except AuthenticationError as exc:
            _LOGGER.warning("refused a connection: %s", exc)
            return False
        except OSError as exc:
            _LOGGER.debug("channel %r: a client left during the handshake: %s", self.channel_name, exc)
            return False
        return True

    def shutdown_request(self, request: Any) -> None:
        with self._tracked_lock:
            self._live_requests.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - socketserver hook
        # A client process that dies mid-conversation is normal; anything else is the handler's bug.
        level = logging.DEBUG if isinstance(sys.exc_info()[1], ConnectionError) else logging.ERROR
        _LOGGER.log(level, "channel %r: handler raised", self.channel_name, exc_info=True)

    def tracked(self) -> tuple[list[socket.socket], list[threading.Thread]]:
        with self._tracked_lock:
            return list(self._live_requests), list(self._handler_threads)

    def live_requests_after_fork(self) -> list[socket.socket]:
        """Return the tracked sockets, read without the lock (a parent thread may have held it at fork)."""
        return list(self._live_requests)


class _UnixServer(Tracking, socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False  # stop() shuts connections and joins handler threads itself
    request_queue_size = 128  # a whole election storm connects at once; socketserver's default is 5

    def __init__(
        self, path: Path, handler: type[socketserver.BaseRequestHandler], name: str, authkey: bytes | None
    ) -> None:
        self.channel_name = name
        self._authkey = authkey
        self._init_tracking()
        self._bind_path = path
        super().__init__(str(path), handler)
        st = os.lstat(path)
        self.identity = (st.st_dev, st.st_ino)

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self._bind_path, 0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:  # noqa: ARG002 - socketserver hook
        # socketserver calls this outside its try: an exception here would end serve_forever.
        try:
            _pid, uid = _platform.peer_credentials(request)
        except OSError as exc:
            _LOGGER.debug("channel %r: cannot read peer credentials: %s", self.channel_name, exc)
            return False
        if uid is not None and uid != os.geteuid():
            _LOGGER.warning("channel %r: refused a connection from uid %s", self.channel_name, uid)
            return False
        return True


class HostedServer:
    """The listening server of a host, and the thread that runs it.

    It binds and listens on a private temporary path; ``publish()`` renames
    the socket to ``address``, the channel's path, once the host record is
    written, so a socket at that path always belongs to a host whose record is
    in place. (The Unix transport's ``Listener``.)
    """

    def __init__(  # noqa: PLR0913
        self,
        name: str,
        bind_path: Path | None,
        address: str,
        handler: type[socketserver.BaseRequestHandler],
        authkey: bytes | None = None,
        *,
        server: Tracking | None = None,
    ) -> None:
        self._name = name
        self._path = bind_path or Path(address)
        self._address = address
        self._server: Any = server if server is not None else _UnixServer(self._path, handler, name, authkey)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """The channel's socket path: what the record names and clients dial."""
        return self._address

    def publish(self, record: HostRecord) -> None:  # noqa: ARG002 - the path says who we are
        """Move the listening socket to ``address``, atomically replacing a stale socket file."""
        os.replace(self._path, self._address)
        self._path = Path(self._address)

    def start(self) -> None:
        """Start (or restart) ``serve_forever`` on a named daemon thread, and the ready handler threads."""
        self._server.start_ready_threads()
        self._thread = threading.Thread(
            target=self._serve, name=f"ipchannel-server:{self._name}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        _platform.leave_signals_to_the_application()
        try:
            self._server.serve_forever(poll_interval=_SERVE_POLL)
        except Exception:
            _LOGGER.exception("channel %r: server thread died", self._name)

    def keep_ready(self, count: int) -> None:
        """Have ``count`` handler threads waiting (a standby: for every client of the host it replaces)."""
        self._server.start_ready_threads(count)

    def admit(self, conn: socket.socket) -> bool:
        """Tell whether a connection accepted elsewhere (a standby's side socket) may be served here."""
        return bool(self._server.verify_request(conn, ""))

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve a connection accepted elsewhere and ``admit``-ted, as if accepted here."""
        self._server.process_request(conn, "")

    def restart_if_dead(self) -> bool:
        """Restart the server thread if it died; return True if it had to."""
        if self._stopped or self._thread is None or self._thread.is_alive():
            return False
        _LOGGER.warning("channel %r: server thread had died; restarting it", self._name)
        self.start()
        return True

    def stop_listening(self) -> None:
        """Stop accepting: wake and end ``serve_forever``, close the listener, unlink our socket file."""
        if self._stopped:
            return
        self._stopped = True
        self._server.retire_threads()
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)  # wakes serve_forever's select at once
        if self._thread is not None:
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._server.shutdown()
            self._thread.join(_JOIN_TIMEOUT)
        self._server.server_close()
        self._unlink_if_ours()

    def still_published(self) -> bool:
        """Return True if our listening socket is still the file at its published path."""
        try:
            st = os.lstat(self._path)
        except OSError:
            return False
        return bool((st.st_dev, st.st_ino) == self._server.identity)

    def _unlink_if_ours(self) -> None:
        if self.still_published():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def close_connections(self) -> None:
        """Shut every live connection down (clients see EOF at once) and join the handler threads."""
        self._server.retire_threads()
        live, threads = self._server.tracked()
        for request in live:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():
                _LOGGER.warning(
                    "channel %r: a handler thread did not return within %.1f s of its connection closing",
                    self._name,
                    _JOIN_TIMEOUT,
                )

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copies of the listener and connections, touching nothing shared.

        No shutdown() and no unlink: those would act on the parent's server.
        """
        self._stopped = True
        # No tracked(): its lock may have been held by a parent thread at fork time.
        for sock in [self._server.socket, *self._server.live_requests_after_fork()]:
            with contextlib.suppress(OSError):
                sock.close()
