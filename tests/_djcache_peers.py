"""Processes with a Django SharedDictCache, driven by the tests over a Pipe (see conftest's Peer)."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import _peers
import django
from django.conf import settings

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ipchannel.contrib.django import SharedDictCache

BACKEND = "ipchannel.contrib.django.SharedDictCache"


def custom_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION, importable by its dotted path as Django's tests do."""
    return "CUSTOM-" + ":".join([key_prefix, str(version), key])


def _open_cache(location: str, runtime_dir: str, options: dict[str, Any]) -> SharedDictCache:
    """Configure Django with one cache, as a project's settings would, and return it."""
    caches_setting = {
        "BACKEND": BACKEND,
        "LOCATION": location,
        "OPTIONS": {"runtime_dir": runtime_dir, **options},
    }
    settings.configure(CACHES={"default": caches_setting})
    django.setup()
    from django.core.cache import caches  # noqa: PLC0415 - after the settings

    cache: SharedDictCache = caches["default"]
    return cache


class _CachePeer:
    def __init__(self, name: str, runtime_dir: str, options: dict[str, Any]) -> None:
        self.cache = _open_cache(name, runtime_dir, options)
        self.channel = self.cache.shared  # what "exit" closes
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._written = 0
        self._errors: list[str] = []

    def do(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        cache, shared = self.cache, self.channel
        if cmd == "info":
            return {"is_host": shared.channel.is_host, "position": shared.position}
        if cmd == "set":
            cache.set(args["key"], args["value"], args["seconds"])
            return {}
        if cmd == "wait_get":
            _peers.wait_for(lambda: cache.get(args["key"]) == args["value"], args.get("within", 10))
            return {"got": cache.get(args["key"])}
        if cmd == "incr":
            return {"results": [cache.incr(args["key"]) for _ in range(args["times"])]}
        if cmd == "set_many_one_by_one":
            for i in range(args["count"]):  # timeouts taken in turn from the list "seconds"
                cache.set(f"{args['prefix']}{i}", i, args["seconds"][i % len(args["seconds"])])
            return {}
        if cmd == "keys":
            _peers.wait_for(lambda: shared.position >= tuple(args["position"]), 10)
            return {"keys": list(shared.copy())}
        if cmd == "start_writing":
            self._writer = threading.Thread(target=self._write, args=(args["prefix"],), daemon=True)
            self._writer.start()
            return {}
        if cmd == "written":
            return {"count": self._written}
        if cmd == "stop_writing":
            self._stop.set()
            assert self._writer is not None
            self._writer.join(30)
            return {"count": self._written, "errors": self._errors}
        if cmd == "check":
            keys = [f"{args['prefix']}{i}" for i in range(args["count"])]
            _peers.wait_for(lambda: all(cache.has_key(k) for k in keys), 10)
            return {"missing": [k for k in keys if cache.get(k) != int(k.rsplit("-", 1)[1])]}
        raise ValueError(cmd)

    def _write(self, prefix: str) -> None:
        """Set prefix0, prefix1, ... one after the other; a failed set is tried again (and reported)."""
        while not self._stop.is_set():
            try:
                self.cache.set(f"{prefix}{self._written}", self._written, None)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                self._errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self._written += 1


def cache_peer_main(conn: Connection, name: str, runtime_dir: str, options: dict[str, Any]) -> None:
    """Entry point of a peer process with a SharedDictCache named ``name``."""
    _peers._serve_commands(conn, _CachePeer(name, runtime_dir, options))  # noqa: SLF001


def _child(cache: SharedDictCache, i: int, times: int) -> dict[str, Any]:
    """Body of a forked child: read the parent's value, increment, set a key of its own; report."""
    result = {"seen": cache.get("seen"), "values": [cache.incr("x") for _ in range(times)]}
    cache.set(f"child-{i}", i, None)
    return result


def fork_main(conn: Connection, runtime_dir: str, children: int, times: int) -> None:
    """Use the cache (this process hosts), then fork children as gunicorn --preload does; report."""
    cache = _open_cache("forked", runtime_dir, {})
    cache.set("seen", "from the parent", None)
    cache.set("x", 0, None)
    statuses, results = _peers.fork_children(children, runtime_dir, lambda i: _child(cache, i, times))
    child_keys = [f"child-{i}" for i in range(children)]
    _peers.wait_for(lambda: all(cache.has_key(k) for k in child_keys), 10)
    conn.send(
        {
            "statuses": statuses,
            "results": results,
            "final": cache.get("x"),
            "child_keys": [k for k in child_keys if cache.has_key(k)],
            "is_host": cache.shared.channel.is_host,
        }
    )
    conn.recv()  # the test's go-ahead to close
    cache.shared.close()


def fork_with_registry_locked_main(conn: Connection, runtime_dir: str) -> None:
    """Fork while another thread holds the cache registry's lock; the child must still open a cache."""
    from ipchannel.contrib import django as backend  # noqa: PLC0415

    cache = _open_cache("locked", runtime_dir, {})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with backend._registry._lock:  # noqa: SLF001 - what a thread opening a cache holds
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            other = backend.SharedDictCache("locked-other", {"OPTIONS": {"runtime_dir": runtime_dir}})
            other.set("k", "v")
            code = 0 if other.get("k") == "v" and cache.get("k") is None else 1
        finally:
            os._exit(code)
    release.set()
    holder.join(10)
    deadline = time.monotonic() + 10
    status: int | str = "hung"
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    conn.send({"status": status})
    conn.recv()
    cache.shared.close()
