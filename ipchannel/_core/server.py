"""Hosting's server: a socketserver on the transport's listener, running the user's handler per connection.

The transport provides the endpoint (a ``Listener``: where, who may connect, the
handshakes); this module runs the service on it, the same on every backend. Lifecycle
contract (socketserver's pitfalls, handled here):

- handler threads are daemon threads named ``ipchannel-handler:NAME`` and are
  tracked, with their sockets, so ``close_connections()`` can shut every live
  connection down (clients see EOF at once) and join the threads;
- a few handler threads wait ready (``READY_THREADS``, started with the server, or by
  a host on the election's path just after its first look at the listener): a new
  connection goes to an idle one, else to a new thread, so the pool grows on demand;
  at most ``IDLE_THREADS`` wait idle, blocked without a timeout (no wake-ups);
- each connection is admitted in its handler thread first (``Listener.admit``: TLS,
  the authkey handshake), so a slow client delays nobody else;
- ``serve_forever`` runs on ``ipchannel-server:NAME``; ``stop_listening()`` wakes it
  through the listener, so it returns at once rather than after a poll interval;
- handler errors are logged, never printed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import socketserver
import sys
import threading
from typing import TYPE_CHECKING, Any

from .. import _platform

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._seams.base import Listener
    from .._seams.record import HostRecord

__all__ = ["IDLE_THREADS", "READY_THREADS", "Server", "handler_class"]

_LOGGER = logging.getLogger("ipchannel")
_JOIN_TIMEOUT = 2.0
READY_THREADS = 4  # handler threads started with the server, before any client connects
IDLE_THREADS = 8  # idle handler threads kept; more exit when their connection ends
# serve_forever's select timeout: how late it sees shutdown(). Where waking the listener wakes
# the select (stop_listening() does that first), only a rare wake-up; elsewhere, the delay.
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


class _Accepting(socketserver.BaseServer):
    """socketserver on a ``Listener``: a pool of named handler threads, every connection tracked."""

    def __init__(self, name: str, listener: Listener, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(listener.sock.getsockname(), handler)  # as socketserver's own servers have it
        self.channel_name, self._listener = name, listener
        self.socket = listener.sock  # a handler's self.server.socket, as on socketserver's own servers
        self._tracked_lock = threading.Lock()
        self._starting = threading.Lock()  # held while a handler thread is listed but not yet started
        self._live_requests: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._jobs: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._idle = 0  # handler threads waiting for a job, minus jobs queued for them
        self._retired = False
        self.deferred_ready = 0  # handler threads to start after the first look (server thread only)

    # -- what socketserver asks of its socket, answered by the listener ----------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:  # noqa: ARG002 - socketserver hook
        # socketserver calls this outside its try: an exception here would end serve_forever.
        try:
            return self._listener.verify(request)
        except OSError as exc:
            _LOGGER.debug("channel %r: refused a connection: %s", self.channel_name, exc)
            return False

    def server_close(self) -> None:
        self._listener.close()

    def shutdown_request(self, request: Any) -> None:
        with self._tracked_lock:
            self._live_requests.discard(request)
        with contextlib.suppress(OSError):  # the peer may have gone already
            request.shutdown(socket.SHUT_WR)  # as socketserver's TCPServer: explicitly, before close
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002 - socketserver hook
        # A client process that dies mid-conversation is normal; anything else is the handler's bug.
        level = logging.DEBUG if isinstance(sys.exc_info()[1], ConnectionError) else logging.ERROR
        _LOGGER.log(level, "channel %r: handler raised", self.channel_name, exc_info=True)

    # -- the thread pool ---------------------------------------------------------------------

    def start_ready_threads(self, count: int) -> None:
        """Have ``count`` idle handler threads (at most ``IDLE_THREADS``); serve all the same if that fails.

        Run on the server thread. Without them every connection starts its own thread, and
        ``shutdown()`` still waits for it.
        """
        try:
            with self._tracked_lock:
                missing = min(count, IDLE_THREADS) - self._idle
            for _ in range(missing):
                self._start_handler_thread(None)
        except Exception:
            exiting = not threading.main_thread().is_alive()  # 3.12+ starts no thread then
            level = logging.DEBUG if exiting else logging.WARNING
            _LOGGER.log(
                level, "channel %r: no handler thread started ahead", self.channel_name, exc_info=True
            )

    def service_actions(self) -> None:
        """After each look at the listener (socketserver's hook): start the deferred ready threads once."""
        count, self.deferred_ready = self.deferred_ready, 0
        if count:
            self.start_ready_threads(count)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._tracked_lock:
            self._live_requests.add(request)
            ready = self._idle > 0 and not self._retired
            if ready:
                self._idle -= 1
        if ready:
            self._jobs.put((request, client_address))
            return
        try:
            self._start_handler_thread((request, client_address))
        except RuntimeError:
            if threading.main_thread().is_alive():
                raise
            # Python 3.12 starts no thread once the main thread has ended; close() comes next, and
            # the client finds the next host
            _LOGGER.debug("channel %r: a connection refused: the interpreter exits", self.channel_name)
            self.shutdown_request(request)

    def _start_handler_thread(self, job: tuple[Any, Any] | None) -> None:
        thread = threading.Thread(
            target=self._handler_loop,
            args=(job, _platform.signals_left()),
            name=f"ipchannel-handler:{self.channel_name}",
            daemon=True,
        )
        with self._starting:  # ``tracked()`` lists no thread that has not started: join() would raise
            with self._tracked_lock:
                if job is None and self._retired:
                    return  # the server stopped while its thread started them: none would be told to exit
                self._handler_threads.add(thread)
                if job is None:
                    self._idle += 1
            try:
                thread.start()
            except BaseException:  # e.g. an interpreter that exits: no thread counted that does not run
                with self._tracked_lock:
                    self._handler_threads.discard(thread)
                    if job is None:
                        self._idle -= 1
                raise

    def _handler_loop(self, job: tuple[Any, Any] | None, inherited: bool) -> None:
        """Serve one connection after another: ``job``, then what ``process_request`` queues."""
        _platform.leave_signals_to_the_application(inherited=inherited)  # started by the server thread
        try:
            while True:
                if job is None:
                    job = self._jobs.get()
                    if job is None:
                        return  # retire_threads()
                self._serve_one(*job)
                job = None
                with self._tracked_lock:
                    if self._retired or self._idle >= IDLE_THREADS:
                        return
                    self._idle += 1
        finally:
            with self._tracked_lock:
                self._handler_threads.discard(threading.current_thread())

    def _serve_one(self, request: socket.socket, client_address: Any) -> None:
        """Admit the connection (the listener's handshakes), run the handler, then shut it."""
        held = [request]  # what ending hosting shuts: the TLS socket once the listener wraps one

        def track(new: socket.socket) -> None:
            with self._tracked_lock:
                self._live_requests.discard(held[0])
                self._live_requests.add(new)
            held[0] = new

        try:
            admitted = self._listener.admit(request, track)
        except Exception:  # noqa: BLE001 - one client's failure is logged, never the server's
            self.handle_error(request, client_address)
            admitted = None
        if admitted is None:
            self.shutdown_request(held[0])
            return
        try:
            self.finish_request(admitted, client_address)
        except Exception:  # noqa: BLE001 - as socketserver's ThreadingMixIn
            self.handle_error(admitted, client_address)
        finally:
            self.shutdown_request(admitted)

    def retire_threads(self) -> None:
        """Let every idle handler thread exit (the server stops); busy ones exit after their connection."""
        with self._tracked_lock:
            self._retired = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def tracked(self) -> tuple[list[socket.socket], list[threading.Thread]]:
        """Return the live connections and the handler threads, all started (a start under way ends first)."""
        with self._starting, self._tracked_lock:
            return list(self._live_requests), list(self._handler_threads)

    def live_requests_after_fork(self) -> list[socket.socket]:
        """Return the tracked sockets, read without the lock (a parent thread may have held it at fork)."""
        return list(self._live_requests)


class Server:
    """A host's (or standby's) server on a listener, and the thread that runs it."""

    def __init__(
        self,
        name: str,
        listener: Listener,
        handler: type[socketserver.BaseRequestHandler],
        died: Callable[[], None] = lambda: None,
    ) -> None:
        self._name, self._listener, self._died = name, listener, died
        self._server = _Accepting(name, listener, handler)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """What the record names and clients dial."""
        return self._listener.address

    def publish(self, record: HostRecord) -> None:
        """Open to clients as ``record``'s host (the listener takes the published address)."""
        self._listener.publish(record)

    def still_published(self) -> bool:
        """Tell whether the listener still answers at the published address."""
        return self._listener.still_published()

    def start(self, ready: int = READY_THREADS, *, deferred: bool = False) -> None:
        """Start (or restart) ``serve_forever`` on a named daemon thread, with ``ready`` handler threads.

        That thread starts them, before it accepts anything (so the first clients start none):
        the caller waits for one thread start instead of ``ready + 1``. ``deferred``: after its
        first look at the listener instead, so that they do not contend for the GIL with a
        process becoming host (publishing, connecting) on the election's path; the first
        connection (usually the host's own) then starts its own thread.
        """
        self._server.deferred_ready = ready if deferred else 0
        self._thread = threading.Thread(
            target=self._serve,
            args=(0 if deferred else ready, _platform.signals_left()),  # the monitor, on a failover
            name=f"ipchannel-server:{self._name}",
            daemon=True,
        )
        self._thread.start()

    def _serve(self, ready: int, inherited: bool) -> None:
        _platform.leave_signals_to_the_application(inherited=inherited)
        try:
            self._server.start_ready_threads(ready)
            self._server.serve_forever(poll_interval=_SERVE_POLL)
        except Exception:
            _LOGGER.exception("channel %r: server thread died", self._name)
        finally:
            if not self._stopped:
                self._died()  # the monitor restarts it now, not at a tick (a host ticks rarely)

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve a connection accepted elsewhere (a standby's side socket), as if accepted here."""
        self._server.process_request(conn, "")

    def restart_if_dead(self) -> bool:
        """Restart the server thread if it died; return True if it had to."""
        if self._stopped or self._thread is None or self._thread.is_alive():
            return False
        _LOGGER.warning("channel %r: server thread had died; restarting it", self._name)
        self.start()
        return True

    def stop_listening(self) -> None:
        """Stop accepting: wake and end ``serve_forever``, close the listener (its address if ours)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.retire_threads()
        self._listener.wake()
        if self._thread is not None:
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._server.shutdown()
            self._thread.join(_JOIN_TIMEOUT)
        self._server.server_close()

    def close_connections(self) -> None:
        """Shut every live connection down (clients see EOF at once) and join the handler threads."""
        self._server.retire_threads()
        live, threads = self._server.tracked()
        for request in live:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
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

    def stop(self) -> None:
        """Stop listening, then end every connection."""
        self.stop_listening()
        self.close_connections()

    def abandon_after_fork(self) -> None:
        """In a forked child: close our copies of the listener and connections, touching nothing shared."""
        self._stopped = True
        self._listener.abandon_after_fork()
        # No tracked(): its lock may have been held by a parent thread at fork time.
        for sock in self._server.live_requests_after_fork():
            try:
                sock.close()
            except OSError:
                continue
