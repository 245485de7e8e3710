"""Which coordinator and transport a channel runs on: chosen here, once, from its options.

``coordinator=None`` (and no ``IPCHANNEL_COORDINATOR``): the one-machine pair,
``LocalCoordinator`` + ``UnixTransport``. A coordinator URL: ``RemoteCoordinator``
on the engine it names + ``TcpTransport``. Engine clients are made once per
process and URL (``engine_for``), and again in a forked child: a client's
connections are the parent's.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import TYPE_CHECKING

from . import _fork, _platform
from ._errors import ChannelError, MissingExtraError
from ._local.coordinator import LocalCoordinator
from ._local.paths import ChannelPaths, ensure_runtime_dir, resolve_runtime_dir
from ._local.unix import UnixTransport
from ._remote.coordinator import RemoteCoordinator
from ._remote.tcp import TcpTransport
from ._remote.tls import validate_ssl_context
from ._url import DEFAULT_LISTEN, from_environment, parse_address, parse_url, validate_ttl

if TYPE_CHECKING:
    from ._local.coordinator import Coordinator
    from ._local.unix import Transport
    from ._remote.coordinator import Engine
    from ._url import CoordinatorURL

__all__ = ["ENGINES", "open_backend"]

#: engine -> (module to import, extra to install)
_CLIENTS = {"etcd": ("etcd3gw", "etcd"), "redis": ("redis", "redis")}


class _Engines:
    """The engine clients of this process, one per URL, closed with the last channel using it.

    A forked child starts with none: a client's connections are the parent's.
    """

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


ENGINES = _Engines()
_fork.register(ENGINES)


def _new_engine(url: CoordinatorURL) -> Engine:
    module, extra = _CLIENTS[url.engine]
    try:
        found = importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules: as good as missing
        found = False
    if not found:
        raise MissingExtraError(url.text, module, extra)
    if url.engine == "etcd":
        from ._remote.etcd import EtcdEngine  # noqa: PLC0415 - needs the optional extra

        return EtcdEngine(url)
    from ._remote.redis import RedisEngine  # noqa: PLC0415 - needs the optional extra

    return RedisEngine(url)


def open_backend(  # noqa: PLR0913 - the channel's options, checked here
    name: str,
    *,
    runtime_dir: object,
    coordinator: str | None,
    listen: str | None,
    advertise: str | None,
    ttl: float | None,
    ssl_context: object,
    authkey: bytes | None,
) -> tuple[Coordinator, Transport]:
    """Return the coordinator and transport for a channel's options, or raise naming the bad option."""
    url_text = from_environment(coordinator, "IPCHANNEL_COORDINATOR")
    if url_text is None:
        for option, value in (
            ("listen", listen),
            ("advertise", advertise),
            ("ttl", ttl),
            ("ssl_context", ssl_context),
        ):
            if value is not None:
                raise ValueError(
                    f"{option} applies only with a coordinator (coordinator= or IPCHANNEL_COORDINATOR); "
                    "on one machine the channel uses a Unix socket"
                )
        return _local_backend(name, runtime_dir)
    url = parse_url(url_text)
    if authkey is None:
        raise ValueError(
            f"authkey is required with a coordinator ({url.text}): hosts listen on TCP, where nothing "
            "else tells your processes from anyone who can reach the port; pass the same secret bytes "
            "(e.g. os.urandom(32), distributed like a password) to every process"
        )
    seconds = validate_ttl(ttl)
    tls = validate_ssl_context(ssl_context)
    bind = parse_address(from_environment(listen, "IPCHANNEL_LISTEN") or DEFAULT_LISTEN, "listen")
    advertise_text = from_environment(advertise, "IPCHANNEL_ADVERTISE")
    advertised = None if advertise_text is None else parse_address(advertise_text, "advertise")
    coordinator_ = RemoteCoordinator(name, url, seconds, resolve_runtime_dir(runtime_dir), ENGINES)
    transport = TcpTransport(name, bind, advertised, tls, lambda: coordinator_.engine.local_address())  # noqa: PLW0108 - a fork makes a new engine
    return coordinator_, transport


def _local_backend(name: str, runtime_dir: object) -> tuple[LocalCoordinator, UnixTransport]:
    """Return the one-machine coordinator and transport, on the runtime directory's files."""
    if not _platform.SUN_PATH_MAX:
        raise ChannelError("ipchannel needs Unix domain sockets and flock, which this platform lacks")
    directory = resolve_runtime_dir(runtime_dir)
    ensure_runtime_dir(directory)
    paths = ChannelPaths.for_channel(name, directory)
    return LocalCoordinator(name, paths), UnixTransport(name, paths)
