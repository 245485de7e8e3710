"""The engine seam inside the remote backend: what etcd and Redis each answer, and their clients.

An ``Engine`` is one client of an etcd or Redis server (``etcd``, ``redis``), shared by
the channels of a process: ``ENGINES`` makes one per URL and closes it with the last
channel using it, and a forked child starts with none (a client's connections are the
parent's). An engine that does not answer raises ``EngineUnavailable``, never anything
that says something about the key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import threading
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .. import _fork
from .._errors import CoordinatorError, MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._url import CoordinatorURL

__all__ = [
    "ENGINES",
    "Claimed",
    "Engine",
    "EngineUnavailable",
    "Engines",
    "KeyWatch",
    "Renewal",
    "Seen",
    "Snapshot",
    "facing_address",
]

#: engine -> (module to import, extra to install)
_CLIENTS = {"etcd": ("etcd3gw", "etcd"), "redis": ("redis", "redis")}


class EngineUnavailable(Exception):
    """The engine did not answer (refused, timed out, or an error that says nothing about the key)."""


class Snapshot(NamedTuple):
    """One read of a channel's key: its value (None: no host), its generation and the engine's revision.

    ``epoch``: the engine's epoch now, read with the key (None: it has none, nothing was claimed
    since its data was made or reset); a record of another epoch is not the engine's to follow.
    """

    value: bytes | None
    generation: int
    revision: int = 0
    epoch: str | None = None


class Seen(NamedTuple):
    """What a claimant has followed: the epoch (None: nothing yet), its highest generation, the revision.

    The engine tells from it whether its state was reset under the claimant's eyes.
    """

    epoch: str | None
    generation: int
    revision: int = 0


class Claimed(NamedTuple):
    """A claim the engine granted: its generation and epoch, the record as stored, and how long to hold off.

    ``hold``: seconds from now before the new host may answer, because a host from before a
    reset of the engine may still serve (0 unless the engine was, or may have been, reset).
    """

    generation: int
    epoch: str
    value: bytes
    hold: float


class Renewal(NamedTuple):
    """What a renewal found: ``ours`` (renewed), else what someone rewrote our claim's record to.

    ``found`` is None when the key is gone or holds another claim (expired, then taken: an
    ordinary takeover); a value only when our claim itself (its generation) holds another record.
    """

    ours: bool
    found: bytes | None = None


class KeyWatch(Protocol):
    """Waits for a channel's key to change (one per coordinator, on its watch thread)."""

    def wait(self, after: Snapshot, timeout: float) -> None:
        """Return once the key may have changed since ``after``, after ``timeout``, or on ``cancel()``."""

    def cancel(self) -> None:
        """Wake ``wait()`` and release what it holds (from another thread)."""


class Engine(Protocol):
    """One client of an etcd or Redis server, shared by the channels of one process."""

    @property
    def url(self) -> str:
        """The URL, password hidden, for messages."""

    def read(self, name: str) -> Snapshot:
        """Return the channel's key now."""

    def claim(self, name: str, value: Callable[[str], bytes], ttl: float, seen: Seen) -> Claimed | None:
        """Create the key for ``ttl`` unless it exists: our claim (generation above ``seen``'s), or None.

        ``value(epoch)``: the record to store, carrying the epoch the engine numbers it in.
        """

    def renew(self, name: str, claim: Claimed, ttl: float) -> Renewal:
        """Extend our claim by ``ttl`` if the key still holds our record, all of it (else what it holds)."""

    def release(self, name: str, claim: Claimed) -> None:
        """Delete the key if it still holds our record (revoke the lease / compare-and-delete)."""

    def watch(self, name: str) -> KeyWatch:
        """Return a new watch on the channel's key."""

    def put_if_claimed(self, name: str, generation: int, leaf: str, value: bytes) -> bool:
        """Store ``value`` under the channel's key ``leaf`` if our claim ``generation`` still holds."""

    def get(self, name: str, leaf: str) -> bytes | None:
        """Return what the channel's key ``leaf`` holds, or None."""

    def present(self, name: str, leaf: str, ttl: float, *, first: bool) -> bool:
        """Make (``first``) or keep key ``leaf`` of ours for ``ttl`` more seconds; False if it lapsed."""

    def absent(self, name: str, leaf: str) -> None:
        """Delete key ``leaf`` of ours (kept by ``present``)."""

    def channels(self) -> list[tuple[str, Snapshot, float | None]]:
        """Return every channel with a host: (name, snapshot, seconds its claim has left or None)."""

    def local_address(self) -> str | None:
        """Return the address this machine reaches the engine from (a default to advertise), or None."""

    def close(self) -> None:
        """Close the client's connections (the last channel of the process using it closed)."""


class Engines:
    """The engine clients of this process, one per URL, closed with the last channel using it."""

    def __init__(self) -> None:
        self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[CoordinatorURL, tuple[Engine, int]] = {}

    def acquire(self, url: CoordinatorURL) -> Engine:
        """Return this process's client for ``url`` (MissingExtraError if its library is not installed)."""
        with self._lock:
            engine, users = self._clients.get(url) or (_new_engine(url), 0)
            self._clients[url] = (engine, users + 1)
            return engine

    def release(self, url: CoordinatorURL, engine: Engine) -> None:
        """One channel no longer uses ``engine``: close it if it was the last one."""
        with self._lock:
            current = self._clients.get(url)
            if current is None or current[0] is not engine:
                return  # made before a fork: the parent's, not ours to close
            if current[1] > 1:
                self._clients[url] = (engine, current[1] - 1)
                return
            del self._clients[url]
        engine.close()


ENGINES = Engines()
_fork.register(ENGINES)


def _new_engine(url: CoordinatorURL) -> Engine:
    module, extra = _CLIENTS[url.engine]
    try:
        found = importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules: as good as missing
        found = False
    if not found:
        raise MissingExtraError(url.text, module, extra)
    _check_tls_files(url)
    if url.engine == "etcd":
        from .etcd import EtcdEngine  # noqa: PLC0415 - needs the optional extra

        return EtcdEngine(url)
    from .redis import RedisEngine  # noqa: PLC0415 - needs the optional extra

    return RedisEngine(url)


def _check_tls_files(url: CoordinatorURL) -> None:
    """Raise CoordinatorError if a TLS file the URL names cannot be read (its client would say it late)."""
    for what, path in (("CA", url.ca_file), ("client certificate", url.cert_file), ("key", url.key_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):  # one open, to learn whether this process may read it
                pass
        except OSError as exc:
            raise CoordinatorError(
                f"coordinator {url.text}: cannot read its {what} file {path}: {exc.strerror}; "
                "check the path in the URL and that this process's user may read it"
            ) from None


def facing_address(endpoint: tuple[str, int]) -> str | None:
    """Return the local address a packet to ``endpoint`` leaves from (no packet is sent), or None."""
    try:
        infos = socket.getaddrinfo(endpoint[0], endpoint[1], type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, address in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    return None
