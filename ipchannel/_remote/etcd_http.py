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
from typing import TYPE_CHECKING, Any

import requests  # the etcd extra (etcd3gw needs requests); engine.py checks it before importing this
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.poolmanager import PoolKey

__all__ = ["close_on_close", "new_session"]


class _ClosingPoolManager(PoolManager):
    """A pool manager whose ``clear()`` closes every pool it handed out; a closed one hands out closed pools.

    A call that overlaps the close (on another thread) then fails with a ClosedPoolError, which
    requests raises as a ConnectionError: "the engine did not answer", and nothing opens.
    """

    def __init__(self, num_pools: int, **pool_kwargs: object) -> None:
        super().__init__(num_pools, None, **pool_kwargs)
        self._handed: weakref.WeakSet[HTTPConnectionPool] = weakref.WeakSet()
        self._handed_lock = threading.Lock()
        self._closed = False

    def connection_from_pool_key(
        self, pool_key: PoolKey, request_context: dict[str, Any]
    ) -> HTTPConnectionPool:
        pool = super().connection_from_pool_key(pool_key, request_context)
        with self._handed_lock:
            self._handed.add(pool)
            closed = self._closed
        if closed:
            pool.close()
        return pool

    def clear(self) -> None:
        with self._handed_lock:
            self._closed = True
            pools = list(self._handed)
        super().clear()
        for pool in pools:
            pool.close()  # its connections in use are closed as they come back


class _ClosingAdapter(HTTPAdapter):
    """requests' adapter with a ``_ClosingPoolManager`` (``init_poolmanager``, the documented hook)."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: object
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager = _ClosingPoolManager(
            num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


def close_on_close(session: requests.Session) -> requests.Session:
    """Make ``session.close()`` close its connections at once (for a session made elsewhere: etcd3gw's)."""
    for prefix in ("http://", "https://"):
        session.mount(prefix, _ClosingAdapter())
    return session


def new_session() -> requests.Session:
    """Return a new session whose ``close()`` closes its connections at once."""
    return close_on_close(requests.Session())
