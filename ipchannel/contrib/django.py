"""A Django cache backend on a SharedDict: one cache shared by every worker, read locally.

::

    CACHES = {"default": {"BACKEND": "ipchannel.contrib.django.SharedDictCache",
                          "LOCATION": "myproject-cache",          # the channel name
                          "TIMEOUT": 300, "OPTIONS": {"MAX_ENTRIES": 1000}}}

Every process opens one SharedDict per LOCATION (shared by the backend objects Django makes per
thread). Reads (``get``, ``has_key``, ``get_many``) come from the local replica, without a lock or
a socket; writes go to the host, which stamps expiry with its clock and culls, identically in every
replica (see ``_cacheops``). Values are pickled as Django's own backends pickle them.
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any

from ipchannel.contrib._extras import missing

try:
    from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
except ImportError as exc:  # pragma: no cover - tested in a process without Django
    raise missing("ipchannel.contrib.django", "Django", "django") from exc

from ipchannel._shareddict.dict import SharedDict
from ipchannel.contrib import _cacheops
from ipchannel.contrib._opened import Opened

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ipchannel._shareddict.ops import Operation

__all__ = ["SharedDictCache", "close_all"]

#: OPTIONS passed on to SharedDict, with the types each may have (checked before anything opens)
_DICT_OPTIONS: dict[str, tuple[type, ...]] = {
    "timeout": (int, float, type(None)),
    "runtime_dir": (str, os.PathLike, type(None)),
    "authkey": (bytes, type(None)),
    "coordinator": (str, type(None)),
    "listen": (str, type(None)),
    "advertise": (str, type(None)),
    "ttl": (int, float, type(None)),
    "ssl_context": (object,),
    "server_hostname": (str, type(None)),
    "ssl_verify": (bool,),
    "appendonly": (bool,),
    "appendfsync": (str, type(None)),
    "journal_dir": (str, os.PathLike, type(None)),
}
_CACHE_OPTIONS = {"MAX_ENTRIES": 1, "CULL_FREQUENCY": 0}  # BaseCache's own, with their least value


class SharedDictCache(BaseCache):  # type: ignore[misc] # Django ships no type information
    """``django.core.cache.backends.base.BaseCache`` on a SharedDict named ``LOCATION``.

    OPTIONS: ``MAX_ENTRIES`` (300) and ``CULL_FREQUENCY`` (3) as for LocMemCache; and SharedDict's
    keyword arguments: ``timeout`` (seconds a write may wait for a host, not the entries' TIMEOUT),
    ``runtime_dir``, ``authkey``, and ``coordinator``, ``listen``, ``advertise``, ``ttl``,
    ``ssl_context``, ``server_hostname``, ``ssl_verify`` across machines.

    :raises TypeError, ValueError: an OPTIONS key that is unknown, or of the wrong type or value.
    """

    pickle_protocol = _cacheops.PROTOCOL

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        options = _check_options(params.get("OPTIONS", {}))
        if not location:
            raise ValueError("SharedDictCache needs a LOCATION: the name of the channel the workers share")
        super().__init__(params)
        self._shared = _registry.open(
            location,
            options,
            lambda: SharedDict(location, codec="pickle", **options),
            lambda opened: (
                f"SharedDictCache LOCATION {location!r} is already open here with other "
                f"OPTIONS ({sorted(opened)}); one LOCATION, one set of channel options"
            ),
        )

    @property
    def shared(self) -> SharedDict:
        """The SharedDict under this cache (one per LOCATION in a process); ``.channel`` says who hosts."""
        return self._shared

    # -- reads: the local replica, lock-free ----------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Return the value of ``key`` from the local replica, or ``default`` if missing or expired."""
        entry = self._shared.get(self.make_and_validate_key(key, version=version))
        if not _cacheops.is_live(entry, _cacheops.now()):
            return default
        return pickle.loads(entry[1])  # noqa: S301 - as Django's own backends: pickle trusts the peers

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Tell whether ``key`` is in the local replica and not expired."""
        entry = self._shared.get(self.make_and_validate_key(key, version=version))
        return _cacheops.is_live(entry, _cacheops.now())

    # -- writes: through the host ----------------------------------------------------------------

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Set ``key`` unless it holds a live value, atomically across processes; True if it was set."""
        key = self.make_and_validate_key(key, version=version)
        pickled = pickle.dumps(value, self.pickle_protocol)
        return bool(self._write(_cacheops.ADD, key, pickled, self._timeout(timeout), *self._cull()))

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        """Set ``key``; it expires ``timeout`` seconds from now on the host's clock (None: never)."""
        key = self.make_and_validate_key(key, version=version)
        pickled = pickle.dumps(value, self.pickle_protocol)
        self._write(_cacheops.SET, key, pickled, self._timeout(timeout), *self._cull())

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Set every key of ``data`` in one write; return the keys that failed (always none)."""
        items = [
            (self.make_and_validate_key(key, version=version), pickle.dumps(value, self.pickle_protocol))
            for key, value in data.items()
        ]
        if items:
            self._write(_cacheops.SET_MANY, items, self._timeout(timeout), *self._cull())
        return []

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; True if it held a live value."""
        key = self.make_and_validate_key(key, version=version)
        return bool(self._write(_cacheops.TOUCH, key, self._timeout(timeout)))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value of ``key`` in the host, atomically; ValueError if it is missing."""
        key = self.make_and_validate_key(key, version=version)
        result = self._write(_cacheops.INCR, key, delta)
        if result[0] == "missing":
            raise ValueError(f"Key '{key}' not found")
        if result[0] == "failed":
            raise _cacheops.failure(result)
        return result[1]

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete ``key``; True if it held a live value."""
        return bool(self._write(_cacheops.DELETE, self.make_and_validate_key(key, version=version)))

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Delete every key of ``keys`` in one write."""
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        if made:
            self._write(_cacheops.DELETE_MANY, made)

    def clear(self) -> None:
        """Remove every entry (of every KEY_PREFIX and VERSION: the whole LOCATION), in one write."""
        self._shared.clear()

    def close(self, **kwargs: Any) -> None:
        """Do nothing: Django calls this after every request, and the shared dict stays open for the next."""

    def _write(self, operation: Operation, *args: Any) -> Any:
        """Send one cache operation to the host (``None`` at ``op[1]``: the host puts its time there)."""
        return self._shared.perform(operation, None, *args)

    def _timeout(self, timeout: Any) -> float | None:
        """Return the timeout relative to the host's clock: None for never, <= 0 for expired at once."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    def _cull(self) -> tuple[int, int]:
        return self._max_entries, self._cull_frequency


def _check_options(options: object) -> dict[str, Any]:
    """Validate OPTIONS; return those for SharedDict. Raise TypeError or ValueError naming the option."""
    if not isinstance(options, dict):
        raise TypeError(f"SharedDictCache OPTIONS must be a dict, not {type(options).__name__}")
    for name, value in options.items():
        if name in _CACHE_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"SharedDictCache OPTIONS[{name!r}] must be an int, not {value!r}")
            if value < _CACHE_OPTIONS[name]:
                raise ValueError(f"SharedDictCache OPTIONS[{name!r}] must be >= {_CACHE_OPTIONS[name]}")
        elif name in _DICT_OPTIONS:
            accepted = _DICT_OPTIONS[name]
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
                raise TypeError(f"SharedDictCache OPTIONS[{name!r}] has the wrong type: {value!r}")
            if name in {"timeout", "ttl"} and isinstance(value, (int, float)) and value <= 0:
                raise ValueError(f"SharedDictCache OPTIONS[{name!r}] must be > 0, not {value!r}")
        else:
            known = ", ".join(sorted([*_CACHE_OPTIONS, *_DICT_OPTIONS]))
            raise TypeError(f"SharedDictCache: unknown OPTIONS key {name!r} (known: {known})")
    return {name: value for name, value in options.items() if name in _DICT_OPTIONS}


_registry: Opened[SharedDict] = Opened()  # LOCATION -> its SharedDict: every backend object of it shares one


def close_all() -> None:
    """Close every shared dict this process opened for a cache (backends made earlier stop working).

    Not needed at exit (each dict hands hosting over then); for tests, and a process done with the cache.
    """
    _registry.close_all()
