"""Storage for the ``limits`` library on a SharedDict: one rate limit shared by every worker.

::

    import ipchannel.contrib.limits  # registers the schemes ipchannel:// and async+ipchannel://

    limiter = Limiter(get_remote_address, app=app, storage_uri="ipchannel://myapp-limits")  # Flask-Limiter

``ipchannel://NAME`` is ``SharedDictStorage`` (``limits.storage``: Flask-Limiter, slowapi,
``limits.strategies``); ``async+ipchannel://NAME`` is ``AsyncSharedDictStorage`` (``limits.aio``).
Options come from the URI's query (``ipchannel://NAME?runtime_dir=/run/app&timeout=2``) or as
keyword arguments (Flask-Limiter's ``storage_options``): SharedDict's own (``_OPTIONS``).

Each hit is one SharedDict write: the host checks and counts in one op, on its clock
(``_limitsops``). Reads (``get``, ``test``, window stats) come from the local replica. Nothing
opens until the first use (``check()`` opens it), so a storage made in gunicorn's arbiter
(``--preload``) opens in each worker; one opened before a fork is reset in the child by the
SharedDict's own at-fork hook. The counts live in the processes that opened the dict: open it as
each worker starts, or a count held by one worker alone dies with it (or use ``appendonly=true``).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from ipchannel.contrib._extras import missing

try:
    from limits.aio.storage import MovingWindowSupport as AsyncMovingWindowSupport
    from limits.aio.storage import SlidingWindowCounterSupport as AsyncSlidingWindowCounterSupport
    from limits.aio.storage import Storage as AsyncStorage
    from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
    from limits.storage.base import TimestampedSlidingWindow
except ImportError as exc:  # pragma: no cover - tested in a process without limits
    raise missing("ipchannel.contrib.limits", "the limits library", "limits") from exc

from ipchannel._aio.dict import AsyncSharedDict
from ipchannel._codecs import resolve_codec
from ipchannel._errors import ChannelError
from ipchannel._options import Options, validate_name
from ipchannel._shareddict.dict import SharedDict
from ipchannel._shareddict.durability import durable_journal
from ipchannel.contrib import _limitsops
from ipchannel.contrib._opened import Opened

if TYPE_CHECKING:
    from ipchannel._shareddict.ops import Operation

__all__ = ["AsyncSharedDictStorage", "SharedDictStorage", "close_all"]

_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _seconds(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


#: SharedDict's keyword options: how a URI's query text becomes a value, and what a keyword may be
_OPTIONS: dict[str, tuple[Any, tuple[type, ...]]] = {
    "timeout": (_seconds, (int, float, type(None))),
    "runtime_dir": (str, (str, os.PathLike)),
    "authkey": (str.encode, (bytes,)),
    "coordinator": (str, (str,)),
    "listen": (str, (str,)),
    "advertise": (str, (str,)),
    "ttl": (_seconds, (int, float, type(None))),
    "ssl_context": (None, (object,)),  # a keyword only: an ssl.SSLContext has no text form
    "server_hostname": (str, (str,)),
    "ssl_verify": (_BOOLS.__getitem__, (bool,)),
    "appendonly": (_BOOLS.__getitem__, (bool,)),
    "appendfsync": (str, (str,)),
    "journal_dir": (str, (str, os.PathLike)),
}
_SYNC_ONLY = ("appendonly", "appendfsync", "journal_dir")  # AsyncSharedDict has no journal options


def parse_uri(uri: str, options: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """Return the channel name and SharedDict's options of ``uri`` and keyword ``options``.

    :raises TypeError, ValueError: naming the option that is unknown or of a wrong type or value.
    """
    parsed = urllib.parse.urlsplit(uri)
    if parsed.path not in {"", "/"} or parsed.fragment:
        raise ValueError(f"{kind}: the URI is {parsed.scheme}://NAME[?option=value&...], not {uri!r}")
    if not parsed.netloc:
        raise ValueError(f"{kind}: the URI {uri!r} names no channel: write {parsed.scheme}://NAME")
    name = validate_name(parsed.netloc)
    result = {**_from_query(parsed.query, kind), **_from_keywords(options, kind)}
    for option in ("timeout", "ttl"):
        if isinstance(value := result.get(option), (int, float)) and not value > 0:
            raise ValueError(f"{kind}: option {option!r} must be > 0 seconds, not {value!r}")
    if kind == "AsyncSharedDictStorage" and (sync_only := sorted(set(_SYNC_ONLY) & set(result))):
        raise ValueError(f"{kind}: option {sync_only[0]!r} is for ipchannel:// only (a durable SharedDict)")
    _check_together(name, result)
    return name, result


def _check_together(name: str, options: dict[str, Any]) -> None:
    """Check the options as the dict will check them when it opens (nothing is opened or made).

    So an option that cannot work raises as the app makes its limiter, not at its first request.
    """
    built = Options.build(**{k: v for k, v in options.items() if k != "timeout" and k not in _SYNC_ONLY})
    durable_journal(
        name,
        built,
        resolve_codec("json"),
        options.get("appendonly", False),
        options.get("appendfsync"),
        options.get("journal_dir"),
    )


def _from_query(query: str, kind: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for option, texts in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        convert, _ = _known(option, kind)
        if convert is None or len(texts) != 1:
            raise ValueError(f"{kind}: option {option!r} cannot be given (once) in the URI's query")
        if not texts[0]:  # runtime_dir= would be the current directory
            raise ValueError(f"{kind}: option {option!r} has no value in the URI's query")
        try:
            result[option] = convert(texts[0])
        except (KeyError, ValueError):
            raise ValueError(f"{kind}: option {option!r} has a value it cannot take: {texts[0]!r}") from None
    return result


def _from_keywords(options: dict[str, Any], kind: str) -> dict[str, Any]:
    for option, value in options.items():
        _, accepted = _known(option, kind)
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            accepted_names = " or ".join(each.__name__ for each in accepted)
            raise TypeError(f"{kind}: option {option!r} must be {accepted_names}, not {value!r}")
    return dict(options)


def _known(option: str, kind: str) -> tuple[Any, tuple[type, ...]]:
    if option not in _OPTIONS:
        raise TypeError(f"{kind}: unknown option {option!r} (known: {', '.join(sorted(_OPTIONS))})")
    return _OPTIONS[option]


_registry: Opened[Any] = Opened()  # (kind, name) -> its SharedDict or AsyncSharedDict


def _conflict(name: str, opened: dict[str, Any]) -> str:
    return (
        f"rate limit storage {name!r} is already open here with other options "
        f"({sorted(opened)}); one channel name, one set of options"
    )


def close_all() -> None:
    """Close every shared dict this process opened for rate limits (storages made earlier stop working).

    Not needed at exit (each dict hands hosting over then); for tests, and a process done with limits.
    """
    _registry.close_all()


class SharedDictStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """``limits`` storage ``ipchannel://NAME``: fixed window, moving window and sliding window counter.

    Opens the SharedDict ``NAME`` at its first use (one per name in a process). A hit is one write
    through the host, atomic across processes; reads are local.

    :raises TypeError, ValueError: an option that is unknown, or of a wrong type or value; in each
        method, before anything is sent, a key that is not a str or an expiry, amount or limit it
        cannot count with (``_limitsops.check``: a negative amount would give slots back).
    """

    STORAGE_SCHEME = ["ipchannel"]  # noqa: RUF012 - limits' registry reads it, as its own storages have it

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self._name, self._options = parse_uri(uri, options, type(self).__name__)
        self._shared: SharedDict | None = None
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """What ``wrap_exceptions=True`` turns into ``limits.errors.StorageError``."""
        return ChannelError

    @property
    def shared(self) -> SharedDict:
        """The SharedDict under this storage (opened now if it is not yet); ``.channel`` says who hosts."""
        if self._shared is None:
            self._shared = _registry.open(
                ("sync", self._name),
                self._options,
                lambda: SharedDict(self._name, **self._options),
                lambda opened: _conflict(self._name, opened),
            )
        return self._shared

    def _write(self, operation: Operation, *args: Any) -> Any:
        """One op through the host (``None`` at ``op[1]``: the host puts its time there)."""
        return self.shared.perform(operation, None, *args)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the counter of ``key``; a new one expires in ``expiry`` s (host clock)."""
        _limitsops.check(key, expiry, amount)
        return int(self._write(_limitsops.INCR, key, expiry, amount))

    def get(self, key: str) -> int:
        """Return the counter of ``key`` in the local replica (0: none or expired)."""
        _limitsops.check(key)
        return _limitsops.count(self.shared, key, _limitsops.now())

    def get_expiry(self, key: str) -> float:
        """Return when the counter of ``key`` expires (now, if it does not exist)."""
        _limitsops.check(key)
        return _limitsops.expiry(self.shared, key, _limitsops.now())

    def check(self) -> bool:
        """Tell whether the shared dict opens (a host is elected and answers)."""
        try:
            self.shared.channel.host_pid  # noqa: B018 - a look at the channel, which is open
        except ChannelError:
            return False
        return True

    def reset(self) -> int | None:
        """Remove every limit of this channel name (of every limiter on it); return how many were live."""
        return int(self._write(_limitsops.RESET))

    def clear(self, key: str) -> None:
        """Remove the counter and moving window of ``key``."""
        _limitsops.check(key)
        self._write(_limitsops.CLEAR, key)

    def acquire_entry(self, key: str, limit: int, expiry: float, amount: int = 1) -> bool:
        """Take ``amount`` entries of a moving window of ``limit`` per ``expiry`` s, unless full."""
        _limitsops.check(key, expiry, amount, limit)
        return amount <= limit and bool(self._write(_limitsops.ACQUIRE_MOVING, key, limit, expiry, amount))

    def get_moving_window(self, key: str, limit: int, expiry: float) -> tuple[float, int]:
        """Return (start of the moving window of ``key``, entries in it), from the local replica."""
        _limitsops.check(key, expiry, 0, limit)
        return _limitsops.moving_window(self.shared, key, expiry, _limitsops.now())

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: float, amount: int = 1) -> bool:
        """Take ``amount`` of a sliding window counter, unless the weighted count would pass ``limit``."""
        _limitsops.check(key, expiry, amount, limit)
        return amount <= limit and bool(self._write(_limitsops.ACQUIRE_SLIDING, key, limit, expiry, amount))

    def get_sliding_window(self, key: str, expiry: float) -> tuple[int, float, int, float]:
        """Return (previous count, previous ttl, current count, current ttl), from the local replica."""
        _limitsops.check(key, expiry)
        return _limitsops.sliding_window(self.shared, key, expiry, _limitsops.now())

    def clear_sliding_window(self, key: str, expiry: float) -> None:
        """Remove both windows of a sliding window counter (which ones: on the host's clock)."""
        _limitsops.check(key, expiry)
        self._write(_limitsops.CLEAR_SLIDING, key, expiry)


class AsyncSharedDictStorage(
    AsyncStorage, AsyncMovingWindowSupport, AsyncSlidingWindowCounterSupport, TimestampedSlidingWindow
):
    """``limits.aio`` storage ``async+ipchannel://NAME``: as ``SharedDictStorage``, for asyncio code.

    On ``AsyncSharedDict``: a write runs in its ``ipchannel-aio:NAME`` threads, so the event loop
    never waits on a socket or a failover; reads are local dict reads on the loop.
    """

    STORAGE_SCHEME = ["async+ipchannel"]  # noqa: RUF012 - as above

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self._name, self._options = parse_uri(uri, options, type(self).__name__)
        super().__init__(uri, wrap_exceptions=wrap_exceptions)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """What ``wrap_exceptions=True`` turns into ``limits.errors.StorageError``."""
        return ChannelError

    async def _dict(self) -> AsyncSharedDict:
        shared: AsyncSharedDict = _registry.open(
            ("async", self._name),
            self._options,
            lambda: AsyncSharedDict(self._name, **self._options),
            lambda opened: _conflict(self._name, opened),
        )
        return await shared.open()

    async def _write(self, operation: Operation, *args: Any) -> Any:
        return await (await self._dict()).perform(operation, None, *args)

    async def _data(self) -> Any:
        return await self._dict()

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """As ``SharedDictStorage.incr``."""
        _limitsops.check(key, expiry, amount)
        return int(await self._write(_limitsops.INCR, key, expiry, amount))

    async def get(self, key: str) -> int:
        """As ``SharedDictStorage.get``."""
        _limitsops.check(key)
        return _limitsops.count(await self._data(), key, _limitsops.now())

    async def get_expiry(self, key: str) -> float:
        """As ``SharedDictStorage.get_expiry``."""
        _limitsops.check(key)
        return _limitsops.expiry(await self._data(), key, _limitsops.now())

    async def check(self) -> bool:
        """As ``SharedDictStorage.check``."""
        try:
            (await self._dict()).channel.host_pid  # noqa: B018 - a look at the channel, which is open
        except ChannelError:
            return False
        return True

    async def reset(self) -> int | None:
        """As ``SharedDictStorage.reset``."""
        return int(await self._write(_limitsops.RESET))

    async def clear(self, key: str) -> None:
        """As ``SharedDictStorage.clear``."""
        _limitsops.check(key)
        await self._write(_limitsops.CLEAR, key)

    async def acquire_entry(self, key: str, limit: int, expiry: float, amount: int = 1) -> bool:
        """As ``SharedDictStorage.acquire_entry``."""
        _limitsops.check(key, expiry, amount, limit)
        return amount <= limit and bool(
            await self._write(_limitsops.ACQUIRE_MOVING, key, limit, expiry, amount)
        )

    async def get_moving_window(self, key: str, limit: int, expiry: float) -> tuple[float, int]:
        """As ``SharedDictStorage.get_moving_window``."""
        _limitsops.check(key, expiry, 0, limit)
        return _limitsops.moving_window(await self._data(), key, expiry, _limitsops.now())

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: float, amount: int = 1
    ) -> bool:
        """As ``SharedDictStorage.acquire_sliding_window_entry``."""
        _limitsops.check(key, expiry, amount, limit)
        return amount <= limit and bool(
            await self._write(_limitsops.ACQUIRE_SLIDING, key, limit, expiry, amount)
        )

    async def get_sliding_window(self, key: str, expiry: float) -> tuple[int, float, int, float]:
        """As ``SharedDictStorage.get_sliding_window``."""
        _limitsops.check(key, expiry)
        return _limitsops.sliding_window(await self._data(), key, expiry, _limitsops.now())

    async def clear_sliding_window(self, key: str, expiry: float) -> None:
        """As ``SharedDictStorage.clear_sliding_window``."""
        _limitsops.check(key, expiry)
        await self._write(_limitsops.CLEAR_SLIDING, key, expiry)
