"""HTTP for the etcd engine: ``requests`` sessions whose ``close()`` closes their connections at once.

urllib3 2 leaves a closed session's connections to the garbage collector: ``PoolManager.clear()``
forgets its pools, and a pool closes its idle connections when it is collected. Anything that
still refers to a pool keeps them open: an exception raised through it (a reset connection)
holds its frames, in a reference cycle, until a collection. The last channel of a process
closed, and its sockets to etcd stayed open for as long as the exception lived.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import requests  # the etcd extra (etcd3gw needs requests); engine.py checks it before importing this
from requests.adapters import HTTPAdapter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from urllib3.connectionpool import ConnectionPool

__all__ = ["close_on_close", "new_session"]


class _ClosingAdapter(HTTPAdapter):
    """requests' adapter, closing on ``close()`` every pool it handed out, direct or through a proxy.

    Once closed it hands out closed pools: a call that overlaps the close (on another thread)
    fails with a ClosedPoolError, which requests raises as a ConnectionError ("the engine did
    not answer"), and opens nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handed: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
        self._handed_lock = threading.Lock()
        self._closed = False

    def get_connection_with_tls_context(  # the hook requests documents for subclasses
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: tuple[str, str] | str | None = None,
    ) -> ConnectionPool:
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        with self._handed_lock:
            self._handed.add(pool)
            closed = self._closed
        if closed:
            pool.close()
        return pool

    def close(self) -> None:
        with self._handed_lock:
            self._closed = True
            pools = list(self._handed)
        super().close()
        for pool in pools:
            pool.close()  # its connections in use are closed as they come back


def close_on_close(session: requests.Session) -> requests.Session:
    """Make ``session.close()`` close its connections at once (for a session made elsewhere: etcd3gw's)."""
    for prefix in ("http://", "https://"):
        session.mount(prefix, _ClosingAdapter())
    return session


def new_session() -> requests.Session:
    """Return a new session whose ``close()`` closes its connections at once."""
    return close_on_close(requests.Session())
