"""The Redis engine, on ``redis-py``: one key with a TTL per channel, and Lua scripts for every change.

The key ``ipchannel:{NAME}`` holds ``"GENERATION JSON"``; ``ipchannel:{NAME}:generation``
counts claims and ``ipchannel:{NAME}:epoch`` names the counter (a token the claim that
made the counter chose; the braces are a hash tag: all sit in one slot). Claiming is one
script (``SET NX PX`` and ``INCR``: a separate INCR could number a claim that never
happened, or two claims alike); renewing is a compare-and-pexpire script, releasing a
compare-and-delete script, both comparing the whole stored value. Waiting uses keyspace
notifications where the server has them enabled (``notify-keyspace-events`` with ``K``
and the generic and expired events, asked for every new watch), else a read every 50 ms.

Limits: Redis replication is asynchronous, so a failover of Redis itself can hand a
claim to two processes (the generation fence limits the damage). A restart without
persistence forgets every claim: a new claim then holds off until the server has been
up for a ttl (``_hold``); expiry follows Redis's wall clock.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from typing import TYPE_CHECKING, TypeVar, cast

import redis  # the redis extra; engine.py checks it is installed before importing this
from redis.backoff import NoBackoff
from redis.retry import Retry

from .engine import Claimed, EngineUnavailable, Renewal, Snapshot, facing_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._url import CoordinatorURL
    from .engine import Seen

_T = TypeVar("_T")

__all__ = ["RedisEngine"]

_LOGGER = logging.getLogger("ipchannel")
_CLAIM_TRIES = 3  # the epoch the record carries can be wrong once (unknown) and change once (a reset)

REQUEST_TIMEOUT = 1.0  # seconds one call may wait for Redis
POLL_INTERVAL = 0.05  # seconds between reads when the server sends no keyspace notifications
_WAKING_EVENTS = {b"set", b"del", b"expired", b"evicted", b"rename_from", b"rename_to"}

# KEYS: host, counter, epoch. ARGV: record, px, floor, the floor's epoch, the record's epoch, a fresh epoch.
# Returns {0}: claimed already; {-1, epoch}: build the record in that epoch and try again;
# {generation, reset, raised}: claimed (reset: the counter was missing; raised: below the floor in
# the floor's epoch). A claim is numbered above the floor in any epoch: a term is known by its
# generation (a SharedDict's changes are numbered by it), so the host after a reset must not
# reuse the number of one its claimant followed before.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local epoch = redis.call('GET', KEYS[3])
local reset = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
    if ARGV[5] ~= ARGV[6] then return {-1, ARGV[6]} end
    reset = 1
elseif epoch and epoch ~= ARGV[5] then
    return {-1, epoch}
end
redis.call('SET', KEYS[3], ARGV[5])
local generation = redis.call('INCR', KEYS[2])
local raised = 0
if generation <= tonumber(ARGV[3]) then
    generation = tonumber(ARGV[3]) + 1
    redis.call('SET', KEYS[2], generation)
    if reset == 0 and ARGV[4] == ARGV[5] then raised = 1 end
end
redis.call('SET', KEYS[1], generation .. ' ' .. ARGV[1], 'PX', ARGV[2])
return {generation, reset, raised}
"""
# The whole value is compared: a record rewritten by anyone else (another address, another epoch
# under the same generation) is not ours to keep alive.
_RENEW = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1}
end
if not value then return {0} end
return {0, value}
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
if redis.call('GET', KEYS[1]) == ARGV[1] then
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


def _new_client(url: CoordinatorURL) -> redis.Redis:
    """Return a client of the server ``url`` names, with a connection pool of its own."""
    ((host, port),) = url.endpoints
    return redis.Redis(
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


class RedisEngine:
    """One ``redis.Redis`` client (a thread-safe connection pool) for the channels of a process."""

    def __init__(self, url: CoordinatorURL) -> None:
        self._url = url
        self._client = _new_client(url)
        self._claim = self._client.register_script(_CLAIM)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._put_if_claimed = self._client.register_script(_PUT_IF_CLAIMED)
        self._persistence_checked = False  # warned once if the server keeps no data on disk
        self._uptime_unknown = False  # warned once that INFO is refused
        self._closed = False  # the last channel using this client closed (``close``)

    @property
    def url(self) -> str:
        return self._url.text

    def run(self, call: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """Call redis-py; EngineUnavailable if the server does not answer, refuses us, or is not one.

        A call on another thread as the last channel closes (a subscriber's election, say) may
        open a connection after ``close`` closed the pool: it closes the pool again once done.
        """
        try:
            return call(*args, **kwargs)
        except redis.RedisError as exc:
            # ResponseError: OOM, NOPERM, MISCONF, READONLY...: the server refuses us, say why and wait;
            # InvalidResponse: another service answers at that address
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if self._closed:
                self._client.close()

    def read(self, name: str) -> Snapshot:
        key = _key(name)
        value, epoch = cast("list[bytes | None]", self.run(self._client.mget, key, f"{key}:epoch"))
        return _parse(value)._replace(epoch=None if epoch is None else epoch.decode(errors="replace"))

    def claim(self, name: str, value: Callable[[str], bytes], ttl: float, seen: Seen) -> Claimed | None:
        key, fresh = _key(name), secrets.token_hex(8)
        epoch = seen.epoch or fresh
        for _ in range(_CLAIM_TRIES):
            record = value(epoch)
            args = [record, max(1, round(ttl * 1000)), seen.generation, seen.epoch or "", epoch, fresh]
            reply = self.run(self._claim, keys=[key, f"{key}:generation", f"{key}:epoch"], args=args)
            if int(reply[0]) == -1:
                epoch = bytes(reply[1]).decode()  # the engine's epoch, or ours to start a new one
                continue
            if int(reply[0]) == 0:
                return None
            generation, reset, raised = (int(part) for part in reply)
            hold = self._hold(ttl, known_reset=bool(raised) or (bool(reset) and seen.epoch is not None))
            return Claimed(generation, epoch, f"{generation} ".encode() + record, hold)
        return None  # the epoch changed under us at every try: as good as claimed by another

    def _hold(self, ttl: float, *, known_reset: bool) -> float:
        """Seconds a new claim holds off: until the server has been up a ttl; a full one after a reset.

        A host from before a restart renewed last before it, so it stopped serving within a
        ttl of the server's start (``uptime_in_seconds``, read after the claim: whole seconds,
        rounded down). A reset seen by the claimant (a counter gone, or below what it saw) may
        be a FLUSH on a server up for long: any earlier host's last renewal may be just before.
        """
        if known_reset:
            return ttl
        try:
            uptime = float(self.run(self._client.info, "server")["uptime_in_seconds"])
        except (EngineUnavailable, KeyError, ValueError) as exc:
            if not self._uptime_unknown:
                self._uptime_unknown = True
                _LOGGER.warning(
                    "%s: cannot tell how long the server has been up (%s): every new host waits %g s "
                    "before serving, in case the server restarted with an earlier host's claim lost",
                    self.url,
                    exc,
                    ttl,
                )
            return ttl
        return max(0.0, ttl - uptime)

    def renew(self, name: str, claim: Claimed, ttl: float) -> Renewal:
        reply = self.run(self._renew, keys=[_key(name)], args=[claim.value, max(1, round(ttl * 1000))])
        if int(reply[0]):
            return Renewal(ours=True)
        found = bytes(reply[1]) if len(reply) > 1 else None
        if found is None or _parse(found).generation != claim.generation:  # expired, then another's claim
            return Renewal(ours=False)
        return Renewal(ours=False, found=found)  # our claim, its record rewritten

    def release(self, name: str, claim: Claimed) -> None:
        self.run(self._release, keys=[_key(name)], args=[claim.value])

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
        """Tell whether the server sends keyspace notifications for deletions, expiries and sets.

        Asked afresh for every new watch: a server restarted with another configuration is
        asked again once its old watch broke. Warns once if the server keeps no data on disk.
        """
        if not self._persistence_checked:
            self._persistence_checked = True
            with contextlib.suppress(redis.RedisError):  # CONFIG disabled, or no answer: cannot tell
                self._warn_unless_persistent()
        try:
            reply = cast("dict[str, str]", self._client.config_get("notify-keyspace-events"))
        except redis.ResponseError:  # CONFIG is disabled (managed Redis): poll
            reply = {}
        except redis.RedisError as exc:  # no answer, or not a Redis server that answers
            raise EngineUnavailable(f"{type(exc).__name__}: {exc}") from exc
        flags = str(reply.get("notify-keyspace-events", ""))
        return "K" in flags and ("A" in flags or {"g", "x", "$"} <= set(flags))

    def _warn_unless_persistent(self) -> None:
        appendonly = cast("dict[str, str]", self._client.config_get("appendonly")).get("appendonly", "")
        save = cast("dict[str, str]", self._client.config_get("save")).get("save", "")
        if appendonly == "no" and not save.strip():
            _LOGGER.warning(
                'the coordinator %s keeps no data on disk (appendonly no, save ""): a restart forgets '
                "every claim, and each new host then waits up to a ttl before serving",
                self.url,
            )

    def pubsub(self) -> redis.client.PubSub:
        """Return a PubSub on a connection pool of its own, which its watch closes whole.

        Closed from another thread (``cancel``) while its own reads, a PubSub of the shared pool
        gave its connection back to it while still in use: another caller took it, and one of
        them read from a closed socket ("Bad file descriptor").
        """
        # typed from redis-py 8.2 on, untyped before: either way the result is a PubSub
        pubsub: redis.client.PubSub = _new_client(self._url).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
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
        self._closed = True
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
        try:
            while deadline > 0 and not self._cancelled.is_set():
                try:
                    message = self._pubsub.get_message(timeout=step)
                except Exception as exc:
                    if self._cancelled.is_set():  # closed by cancel() from another thread
                        return
                    if isinstance(exc, redis.RedisError):
                        raise EngineUnavailable(f"keyspace notifications: {exc}") from exc
                    raise
                if message is not None and message.get("data") in _WAKING_EVENTS:
                    return
                deadline -= step
        finally:
            if self._cancelled.is_set():  # redis-py may have connected again after cancel() closed it
                self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # a watch that is going away: nothing to report
                self._pubsub.close()
            self._pubsub.connection_pool.disconnect()  # its own: a connection made again, in use or not
