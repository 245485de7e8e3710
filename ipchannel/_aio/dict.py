"""AsyncSharedDict: SharedDict for asyncio code: awaited writes, plain local reads.

Opening and every write run the blocking ``SharedDict`` in a worker of this
object (``runner``), so exactly-once writes, read-your-writes and fork safety are
SharedDict's own. Reads go straight to the local replica, on the loop: lock-free
dict reads (``copy()`` and ``position`` hold the replica's lock for a moment).

Threads: opening and writes in ``ipchannel-aio:NAME``; the replica is updated on
``ipchannel-subscriber:NAME``; closing in ``ipchannel-aio-close:NAME``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import _fork
from .._codecs import resolve_codec
from .._errors import ChannelClosed, ChannelError
from .._options import Options, validate_name
from .._shareddict.dict import SharedDict
from .._shareddict.views import SnapshotViews
from .._timing import Deadline, validate_timeout
from .channel import busy_error, time_left
from .runner import DEFAULT_WORKERS, Runner, validate_workers

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import Callable

    from .._codecs import Codec
    from .._core.channel import Channel
    from .._shareddict.ops import Operation

__all__ = ["AsyncSharedDict"]

_MISSING = object()


class AsyncSharedDict(_fork.ProcessBound, SnapshotViews, Mapping[Any, Any]):
    """A dict shared by every process that opens it: ``await`` the writes, read it like a dict.

    ::

        hits = AsyncSharedDict("hits")     # opens nothing yet
        async with hits:                   # or: await hits.open()
            await hits.incr("requests")    # atomic across processes; returns the new value
            hits.get("requests")           # a local read: no await, no lock, no socket

    Reads before ``open()`` raise ``ChannelError``; after ``aclose()``, ``ChannelClosed``.
    A write opens the dict if needed. Cancelled, a write not yet sent is never sent; one
    already sent completes (exactly once, as every SharedDict write) and its result is dropped.

    :param workers: threads running the writes (1-256, default 8): writes in flight at once.
    :param timeout: as for ``SharedDict``: bounds opening and each write once a worker runs it;
        a write still waiting for a worker after ``timeout`` raises ``ChannelTimeout`` unsent.

    The other parameters (``name``, ``codec``, ``runtime_dir``, ``authkey``, ``coordinator``,
    ``listen``, ``advertise``, ``ttl``, ``ssl_context``, ``server_hostname``, ``ssl_verify``) are
    as for ``SharedDict``. Every option is checked here; the runtime directory is made when it
    opens.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options, as SharedDict has
        self,
        name: str,
        *,
        workers: int = DEFAULT_WORKERS,
        codec: str | Codec = "json",
        runtime_dir: str | os.PathLike[str] | None = None,
        authkey: bytes | None = None,
        timeout: float | None = 5.0,
        coordinator: str | None = None,
        listen: str | None = None,
        advertise: str | None = None,
        ttl: float | None = None,
        ssl_context: ssl.SSLContext | tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
        server_hostname: str | None = None,
        ssl_verify: bool = True,
    ) -> None:
        self._name = validate_name(name)
        workers = validate_workers(workers)
        self._timeout = validate_timeout(timeout)
        self._codec = resolve_codec(codec)
        self._options = Options.build(  # checked now; the directory is made when it opens
            runtime_dir=runtime_dir,
            authkey=authkey,
            coordinator=coordinator,
            listen=listen,
            advertise=advertise,
            ttl=ttl,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            ssl_verify=ssl_verify,
        )
        self._dict: SharedDict | None = None
        self._replica: Mapping[Any, Any] = _NotOpen(self._name)
        self._runner = Runner(self._name, "AsyncSharedDict", workers)
        self._open_lock = threading.Lock()
        self._closed = False
        _fork.register(self)

    # -- opening and closing ------------------------------------------------------------

    async def open(self) -> AsyncSharedDict:
        """Open the dict (join the others, take a snapshot); idempotent. Returns ``self``."""
        if self._dict is None:
            await self._runner.call(self._open)
        return self

    def _open(self) -> SharedDict:
        if (shared := self._dict) is not None:
            return shared
        with self._open_lock:  # two tasks opening at once: the second finds it open
            if self._closed:
                raise ChannelClosed(self._name, "AsyncSharedDict")
            if self._dict is None:
                self._dict = SharedDict(
                    self._name, codec=self._codec, timeout=self._timeout, _options=self._options
                )
                self._replica = self._dict
            return self._dict

    async def aclose(self) -> None:
        """Stop sharing (handing hosting over), stop and join the workers. Idempotent."""
        await self._runner.aclose(self._close)

    def close(self) -> None:
        """As ``aclose()``, blocking: for code outside the event loop."""
        try:
            self._close()
        finally:
            self._runner.shutdown()

    def _close(self) -> None:
        with self._open_lock:
            self._closed = True
            if self._dict is not None:
                self._dict.close()
            self._replica = _Closed(self._name)

    async def __aenter__(self) -> AsyncSharedDict:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def sync(self) -> SharedDict:
        """The blocking ``SharedDict`` this wraps, once open (for threads of your own)."""
        if self._dict is None:
            raise ChannelError(f"AsyncSharedDict {self._name!r} is not open yet: await its open() first")
        return self._dict

    @property
    def channel(self) -> Channel:
        """The ``Channel`` that elects this dict's host, once open."""
        return self.sync.channel

    # -- reads: the local replica, on the loop ---------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        return self._replica[key]

    def __contains__(self, key: object) -> bool:
        return key in self._replica

    def __len__(self) -> int:
        return len(self._replica)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._replica)

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` from the local replica, or ``default``."""
        return self._replica.get(key, default)

    def copy(self) -> dict[Any, Any]:
        """Return a plain dict copy of the local replica."""
        return self._open_dict().copy()

    @property
    def position(self) -> tuple[int, int]:
        """(generation, sequence) of the last change the local replica applied."""
        return self._open_dict().position

    def _open_dict(self) -> SharedDict:
        self._replica.get(None)  # raises if not open or closed
        assert self._dict is not None
        return self._dict

    # -- writes: awaited -------------------------------------------------------------------

    async def set(self, key: Any, value: Any) -> None:
        """``d[key] = value``, across processes."""
        await self._write(SharedDict.__setitem__, key, value)

    async def delete(self, key: Any) -> None:
        """``del d[key]``, across processes (KeyError if missing)."""
        await self._write(SharedDict.__delitem__, key)

    async def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one change."""
        await self._write(SharedDict.update, other, kwargs)

    async def incr(self, key: Any, amount: float = 1) -> Any:
        """Add ``amount`` to ``key`` (missing counts as 0) atomically across processes; return the result."""
        return await self._write(SharedDict.incr, key, amount)

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        """Set ``key`` to ``default`` unless present, atomically; return its value."""
        return await self._write(SharedDict.setdefault, key, default)

    async def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default``; KeyError without one)."""
        if default is _MISSING:
            return await self._write(SharedDict.pop, key)
        return await self._write(SharedDict.pop, key, default)

    async def clear(self) -> None:
        """Remove every key, in one change."""
        await self._write(SharedDict.clear)

    async def perform(self, operation: Operation, *args: Any) -> Any:
        """``SharedDict.perform``: a registered operation (``ipchannel.contrib``) through the host."""
        return await self._write(SharedDict.perform, operation, *args)

    async def _write(self, method: Any, *args: Any) -> Any:
        deadline = Deadline(self._timeout)
        return await self._runner.call(
            self._write_blocking, method, args, deadline, deadline=deadline, late=self._late(deadline)
        )

    def _late(self, deadline: Deadline) -> Callable[[], BaseException]:
        def error() -> BaseException:
            if self._dict is None:
                return ChannelError(f"AsyncSharedDict {self._name!r}: every ipchannel-aio worker was busy")
            return busy_error(self._dict.channel, deadline)

        return error

    def _write_blocking(self, method: Any, args: tuple[Any, ...], deadline: Deadline) -> Any:
        shared = self._open()
        time_left(shared.channel, deadline)  # waited for a worker past the timeout: not sent
        if method is SharedDict.update:
            other, kwargs = args
            return shared.update(other, **kwargs)
        return method(shared, *args)

    def __repr__(self) -> str:
        state = "not open" if self._dict is None else repr(self._dict)
        return f"<AsyncSharedDict {self._name!r} {state}>"

    def _reset_after_fork(self) -> None:
        """In a forked child: no workers, a fresh lock; the SharedDict resets itself (its own hook)."""
        self._runner.reset_after_fork()
        self._open_lock = threading.Lock()


class _NotOpen(Mapping[Any, Any]):
    """What an AsyncSharedDict reads from before it opens: every read raises ChannelError."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _error(self) -> ChannelError:
        return ChannelError(
            f"AsyncSharedDict {self._name!r} is not open yet: await its open() (or async with it) first"
        )

    def __getitem__(self, key: Any) -> Any:
        raise self._error()

    def __iter__(self) -> Iterator[Any]:
        raise self._error()

    def __len__(self) -> int:
        raise self._error()

    def __contains__(self, key: object) -> bool:
        raise self._error()

    def get(self, key: Any, default: Any = None) -> Any:  # noqa: ARG002 - dict's signature
        raise self._error()


class _Closed(_NotOpen):
    """What a closed AsyncSharedDict reads from: every read raises ChannelClosed."""

    def _error(self) -> ChannelError:
        return ChannelClosed(self._name, "AsyncSharedDict")
