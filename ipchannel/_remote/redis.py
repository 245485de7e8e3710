"""The Redis engine, on ``redis-py``: one key with a TTL per channel, and Lua scripts for every change.

The key ``ipchannel:{NAME}`` holds ``"GENERATION JSON"``; ``ipchannel:{NAME}:generation``
counts claims (the braces are a hash tag: both keys sit in one slot). Claiming is
one script (``SET NX PX`` and ``INCR``: a separate INCR could number a claim
that never happened, or two claims alike); renewing is a compare-and-pexpire
script, releasing a compare-and-delete script, both keyed on the generation.
Waiting uses keyspace notifications where the server has them enabled
(``notify-keyspace-events`` with ``K`` and the generic and expired events),
else a read every 50 ms.

Limits: Redis replication is asynchronous, so a failover of Redis itself can
hand a claim to two processes (the generation fence limits the damage); the
generation survives a restart of Redis only with persistence (AOF).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, TypeVar, cast

import redis  # the redis extra; engine.py checks it is installed before importing this
from redis.backoff import NoBackoff
from redis.retry import Retry

from .engine import EngineUnavailable, Snapshot, facing_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._url import CoordinatorURL

_T = TypeVar("_T")

__all__ = ["RedisEngine"]

REQUEST_TIMEOUT = 1.0  # seconds one call may wait for Redis
POLL_INTERVAL = 0.05  # seconds between reads when the server sends no keyspace notifications
_WAKING_EVENTS = {b"set", b"del", b"expired", b"evicted", b"rename_from", b"rename_to"}

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local generation = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if generation <= floor then
    generation = floor + 1
    redis.call('SET', KEYS[2], generation)
end
redis.call('SET', KEYS[1], generation .. ' ' .. ARGV[1], 'PX', ARGV[2])
return generation
"""
_RENEW = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_PUT_IF_CLAIMED = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
    redis.call('SET', KEYS[2], ARGV[2])
    return 1
end
return 0
"""
_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _key(name: str) -> str:
    return f"ipchannel:{{{name}}}"


def _parse(value: bytes | None) -> Snapshot:
    if value is None:
        return Snapshot(None, 0)
    generation, _, record = value.partition(b" ")
    try:
        return Snapshot(record, int(generation))
    except ValueError:
        return Snapshot(b"", 0)  # not ours: the coordinator logs and ignores it


class RedisEngine:
    """One ``redis.Redis`` client (a thread-safe connection pool) for the channels of a process."""

    def __init__(self, url: CoordinatorURL) -> None:
        self._url = url
        ((host, port),) = url.endpoints
        self._client = redis.Redis(
            host=host,
            port=port,
            db=url.db,
            username=url.username,
            password=url.password,
            ssl=url.tls,
            ssl_ca_certs=url.ca_file,
            ssl_certfile=url.cert_file,
            ssl_keyfile=url.key_file,
            socket_timeout=REQUEST_TIMEOUT,
            socket_connect_timeout=REQUEST_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # an engine that does not answer is the caller's to wait for
        )
        self._claim = self._client.register_script(_CLAIM)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._put_if_claimed = self._client.register_script(_PUT_IF_CLAIMED)
        self._notifications: bool | None = None

    @property
    def url(self) -> str:
        return self._url.text

    def run(self, call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """Call redis-py; EngineUnavailable if the server does not answer, or refuses us."""
        try:
            return call(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            # ResponseError: OOM, NOPERM, MISCONF, READONLY...: the server refuses us, say why and wait
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def read(self, name: str) -> Snapshot:
        return _parse(cast("bytes | None", self.run(self._client.get, _key(name))))

    def claim(self, name: str, value: bytes, ttl: float, floor: int) -> int | None:
        key = _key(name)
        generation = self.run(
            self._claim, keys=[key, f"{key}:generation"], args=[value, max(1, round(ttl * 1000)), floor]
        )
        return int(generation) or None

    def renew(self, name: str, generation: int, ttl: float) -> bool:
        return bool(
            self.run(self._renew, keys=[_key(name)], args=[f"{generation} ", max(1, round(ttl * 1000))])
        )

    def release(self, name: str, generation: int) -> None:
        self.run(self._release, keys=[_key(name)], args=[f"{generation} "])

    def put_if_claimed(self, name: str, generation: int, leaf: str, value: bytes) -> bool:
        keys = [_key(name), f"{_key(name)}:{leaf}"]
        return bool(self.run(self._put_if_claimed, keys=keys, args=[f"{generation} ", value]))

    def get(self, name: str, leaf: str) -> bytes | None:
        return cast("bytes | None", self.run(self._client.get, f"{_key(name)}:{leaf}"))

    def present(self, name: str, leaf: str, ttl: float, *, first: bool) -> bool:
        key, ttl_ms = f"{_key(name)}:{leaf}", max(1, round(ttl * 1000))
        if first:
            return bool(self.run(self._client.set, key, b"1", px=ttl_ms))
        return bool(self.run(self._client.pexpire, key, ttl_ms))

    def absent(self, name: str, leaf: str) -> None:
        self.run(self._client.delete, f"{_key(name)}:{leaf}")

    def watch(self, name: str) -> _RedisWatch:
        return _RedisWatch(self, _key(name), self._url.db)

    def notifications(self) -> bool:
        """Tell whether the server sends keyspace notifications for deletions, expiries and sets."""
        if self._notifications is None:
            try:
                reply = self._client.config_get("notify-keyspace-events")
            except redis.ResponseError:  # CONFIG is disabled (managed Redis): poll
                reply = {}
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
            flags = str(reply.get("notify-keyspace-events", ""))
            self._notifications = "K" in flags and ("A" in flags or {"g", "x", "$"} <= set(flags))
        return self._notifications

    def pubsub(self) -> redis.client.PubSub:
        # typed from redis-py 8.2 on, untyped before: either way the result is a PubSub
        pubsub: redis.client.PubSub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
        return pubsub

    def channels(self) -> list[tuple[str, Snapshot, float | None]]:
        found = []
        for key in self.run(lambda: list(self._client.scan_iter(match="ipchannel:{*}", count=1000))):
            text = key.decode()
            if not text.endswith("}"):
                continue
            name = text[len("ipchannel:{") : -1]
            value, left = self.run(lambda k=key: (self._client.get(k), self._client.pttl(k)))
            if value is not None:
                found.append((name, _parse(cast("bytes", value)), left / 1000 if left >= 0 else None))
        return found

    def local_address(self) -> str | None:
        return facing_address(self._url.endpoints[0])

    def close(self) -> None:
        self._client.close()


class _RedisWatch:
    """Waits on the key's keyspace notifications (a pubsub connection of its own), else sleeps 50 ms."""

    def __init__(self, engine: RedisEngine, key: str, db: int) -> None:
        self._cancelled = threading.Event()
        self._pubsub = None
        if engine.notifications():
            self._pubsub = engine.pubsub()
            engine.run(self._pubsub.subscribe, f"__keyspace@{db}__:{key}")

    def wait(self, after: Snapshot, timeout: float) -> None:  # noqa: ARG002 - notifications say what changed
        if self._pubsub is None:
            self._cancelled.wait(min(timeout, POLL_INTERVAL))
            return
        deadline = timeout
        step = min(timeout, 0.5)
        while deadline > 0 and not self._cancelled.is_set():
            try:
                message = self._pubsub.get_message(timeout=step)
            except Exception as exc:
                if self._cancelled.is_set():  # closed by cancel() from another thread
                    return
                if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                    raise EngineUnavailable(f"keyspace notifications: {exc}") from exc
                raise
            if message is not None and message.get("data") in _WAKING_EVENTS:
                return
            deadline -= step

    def cancel(self) -> None:
        self._cancelled.set()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # a watch that is going away: nothing to report
                self._pubsub.close()
