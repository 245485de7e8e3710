"""The etcd engine, on ``etcd3gw`` (etcd's HTTP/JSON gateway: no gRPC, nothing to re-create after fork).

A channel's record is the key ``PREFIX/NAME/host``, bound to a lease of ``ttl``
seconds (etcd leases have whole seconds: rounded up). Claiming is one
transaction that puts the key only if its ``create_revision`` is 0 (and the
channel's epoch ``PREFIX/NAME/epoch`` if it has none); the transaction's revision,
the key's create revision, is the generation, and etcd's revisions only grow in
a cluster's life. Renewing is a transaction that checks the key still holds our
record, then a lease keep-alive; releasing revokes the lease, which deletes the
key at once. Waiting is a watch from the revision
after the last read, streamed over the gateway, so no change is missed between
a read and the watch. Several endpoints (``etcd://h1,h2,h3``): a call that gets
no answer tries the next.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any, cast

from .engine import Claimed, EngineUnavailable, Renewal, Snapshot, facing_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._url import CoordinatorURL
    from .engine import Seen

import requests  # the etcd extra (etcd3gw needs requests); engine.py checks it before importing this
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

__all__ = ["EtcdEngine"]

_LOGGER = logging.getLogger("ipchannel")

REQUEST_TIMEOUT = 1.0  # seconds one call may wait for one etcd endpoint
_CLAIM_TRIES = 3  # the epoch the record carries can be wrong once (unknown) and change once (a reset)
YOUNG = 60  # seconds etcd's clock tells the age of its data for (``_age``); older needs no wait at ttl <= 60


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _text(kv: dict[str, Any] | None) -> str | None:
    """Return a key-value's value as text (an epoch), or None for no key."""
    return None if kv is None else base64.b64decode(kv.get("value", "")).decode("latin-1")


def _first(response: dict[str, Any]) -> dict[str, Any] | None:
    """Return the first key-value of one range response of a transaction, or None."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return cast("dict[str, Any]", kvs[0]) if kvs else None


class EtcdEngine:
    """etcd through ``etcd3gw.Etcd3Client``, one per endpoint, shared by the channels of a process."""

    def __init__(self, url: CoordinatorURL) -> None:
        self._url = url
        protocol = "https" if url.tls else "http"
        self._clients = [
            Etcd3Client(host=host, port=port, protocol=protocol, timeout=REQUEST_TIMEOUT, api_path="/v3/")
            for host, port in url.endpoints
        ]
        self._index = 0
        self._leases: dict[tuple[str, int], int] = {}
        self._kept: dict[tuple[str, str], int] = {}  # (name, leaf) -> lease of a key ``present`` keeps
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url.text

    def _key(self, name: str) -> str:
        return f"{self._url.prefix}/{name}/host"

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to the gateway, trying each endpoint once; EngineUnavailable if none answers."""
        problems = []
        for _ in self._clients:
            client = self._clients[self._index]
            try:
                return cast("dict[str, Any]", client.post(client.get_url(path), json=payload))
            except Etcd3Exception as exc:
                problems.append(f"{client.host}:{client.port}: {type(exc).__name__} {exc.detail_text or exc}")
                self._index = (self._index + 1) % len(self._clients)
        raise EngineUnavailable("; ".join(problems))

    def _epoch_key(self, name: str) -> str:
        return f"{self._url.prefix}/{name}/epoch"

    def read(self, name: str) -> Snapshot:
        host, epoch = _b64(self._key(name)), _b64(self._epoch_key(name))
        ranges = [{"request_range": {"key": host}}, {"request_range": {"key": epoch}}]
        result = self._call("/kv/txn", {"compare": [], "success": ranges, "failure": []})
        revision = int(result["header"]["revision"])
        kv, epoch_kv = (_first(response) for response in result.get("responses") or [{}, {}])
        current = (
            None if epoch_kv is None else base64.b64decode(epoch_kv.get("value", "")).decode(errors="replace")
        )
        if kv is None:
            return Snapshot(None, 0, revision, current)
        return Snapshot(base64.b64decode(kv.get("value", "")), int(kv["create_revision"]), revision, current)

    def claim(self, name: str, value: Callable[[str], bytes], ttl: float, seen: Seen) -> Claimed | None:
        lease_id = int(self._call("/lease/grant", {"TTL": math.ceil(ttl)})["ID"])
        try:
            claimed = self._claim(name, value, lease_id, seen, ttl)
        except EngineUnavailable:
            self._revoke(lease_id)
            raise
        if claimed is None:
            self._revoke(lease_id)
            return None
        with self._lock:
            self._leases[(name, claimed.generation)] = lease_id
        return claimed

    def _claim(
        self, name: str, value: Callable[[str], bytes], lease_id: int, seen: Seen, ttl: float
    ) -> Claimed | None:
        """Put the key in the engine's epoch (a new one, made now, if it has none): at most three tries.

        The claim holds off if it made the epoch (the first claim, or the data was reset: etcd
        cannot tell which) until the data is a ttl old (``_age``); a full ttl if the claimant
        followed an epoch that is gone, or saw a higher revision (a restore).
        """
        host, epoch_key = _b64(self._key(name)), _b64(self._epoch_key(name))
        epoch = seen.epoch
        for _ in range(_CLAIM_TRIES):
            new = epoch is None
            epoch = secrets.token_hex(8) if epoch is None else epoch
            record = value(epoch)
            compare: list[dict[str, Any]] = [
                {"key": host, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                {"key": epoch_key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
                if new
                else {"key": epoch_key, "result": "EQUAL", "target": "VALUE", "value": _b64(epoch)},
            ]
            success = [{"request_put": {"key": host, "value": _b64(record), "lease": lease_id}}]
            if new:
                success.append({"request_put": {"key": epoch_key, "value": _b64(epoch)}})
            ranges = [{"request_range": {"key": host}}, {"request_range": {"key": epoch_key}}]
            result = self._call("/kv/txn", {"compare": compare, "success": success, "failure": ranges})
            revision = int(result["header"]["revision"])
            if result.get("succeeded"):
                if epoch == seen.epoch and revision < seen.revision:  # a restore, under our eyes
                    return Claimed(revision, epoch, record, ttl)
                if new and seen.epoch:  # the epoch it followed is gone: a reset ("": from before epochs)
                    return Claimed(revision, epoch, record, ttl)
                return Claimed(revision, epoch, record, max(0.0, ttl - self._age()) if new else 0.0)
            kv, epoch_kv = (_first(response) for response in result.get("responses") or [{}, {}])
            if kv is not None:
                return None
            epoch = _text(epoch_kv)
        return None

    def _age(self) -> float:
        """Return how long the engine's data has existed at least (up to ``YOUNG``): what a new epoch waits.

        A claim that makes its channel's epoch cannot tell the first claim from one after the
        data was reset; any host from before a reset stopped within a ttl of it, and the data
        is as old as the reset. ``PREFIX/.data/born`` is made with the first epoch, together with
        ``young`` on a lease of ``YOUNG`` seconds: while it lives, etcd's own clock says the age.
        """
        try:
            return self._known_age()
        except EngineUnavailable as exc:  # not allowed there (a role for the channel's keys only)?
            _LOGGER.warning(
                "%s: cannot tell how old its data is (%s): a new epoch waits a ttl", self.url, exc
            )
            return 0.0

    def _known_age(self) -> float:
        born, young = _b64(f"{self._url.prefix}/.data/born"), _b64(f"{self._url.prefix}/.data/young")
        ranges = [{"request_range": {"key": born}}, {"request_range": {"key": young}}]
        found = self._call("/kv/txn", {"compare": [], "success": ranges, "failure": []})
        born_kv, young_kv = (_first(response) for response in found.get("responses") or [{}, {}])
        if born_kv is None:
            lease_id = int(self._call("/lease/grant", {"TTL": YOUNG})["ID"])
            puts = [
                {"request_put": {"key": born, "value": _b64(b"1")}},
                {"request_put": {"key": young, "value": _b64(b"1"), "lease": lease_id}},
            ]
            compare = [{"key": born, "result": "EQUAL", "target": "CREATE", "create_revision": 0}]
            if not self._call("/kv/txn", {"compare": compare, "success": puts, "failure": []}).get(
                "succeeded"
            ):
                self._revoke(lease_id)
            return 0.0
        if young_kv is None or not young_kv.get("lease"):
            return float(YOUNG)
        left = self._call("/kv/lease/timetolive", {"ID": int(young_kv["lease"])})
        remaining, granted = int(left.get("TTL", -1)), int(left.get("grantedTTL", YOUNG))
        # whole seconds, rounded down: the age is at least granted - remaining - 1
        return float(YOUNG) if remaining < 0 else max(0.0, float(granted - remaining - 1))

    def renew(self, name: str, claim: Claimed, ttl: float) -> Renewal:  # noqa: ARG002 - the lease has it
        with self._lock:
            lease_id = self._leases.get((name, claim.generation))
        if lease_id is None:
            return Renewal(ours=False)
        key = _b64(self._key(name))
        compare = [
            {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": claim.generation},
            {"key": key, "result": "EQUAL", "target": "VALUE", "value": _b64(claim.value)},
            {"key": key, "result": "EQUAL", "target": "LEASE", "lease": lease_id},
        ]
        checked = self._call(
            "/kv/txn", {"compare": compare, "success": [], "failure": [{"request_range": {"key": key}}]}
        )
        if not checked.get("succeeded"):
            kv = _first((checked.get("responses") or [{}])[0])
            return Renewal(ours=False, found=None if kv is None else base64.b64decode(kv.get("value", "")))
        result = self._call("/lease/keepalive", {"ID": lease_id})
        if "result" not in result:  # a streamed error (no leader, say): it says nothing of our lease
            raise EngineUnavailable(f"keepalive: {result.get('error', result)}")
        return Renewal(ours=int(result["result"].get("TTL", 0)) > 0)

    def release(self, name: str, claim: Claimed) -> None:
        with self._lock:
            lease_id = self._leases.pop((name, claim.generation), None)
        if lease_id is not None:
            self._revoke(lease_id, quiet=False)

    def _revoke(self, lease_id: int, *, quiet: bool = True) -> None:
        try:
            self._call("/kv/lease/revoke", {"ID": lease_id})
        except EngineUnavailable as exc:
            if "not found" in str(exc):
                return  # expired already: the key is gone
            if not quiet:
                raise

    def watch(self, name: str) -> _EtcdWatch:
        return _EtcdWatch(self, self._key(name))

    def put_if_claimed(self, name: str, generation: int, leaf: str, value: bytes) -> bool:
        txn = {
            "compare": [
                {
                    "key": _b64(self._key(name)),
                    "result": "EQUAL",
                    "target": "CREATE",
                    "create_revision": generation,
                }
            ],
            "success": [
                {"request_put": {"key": _b64(f"{self._url.prefix}/{name}/{leaf}"), "value": _b64(value)}}
            ],
            "failure": [],
        }
        return bool(self._call("/kv/txn", txn).get("succeeded"))

    def get(self, name: str, leaf: str) -> bytes | None:
        kvs = self._call("/kv/range", {"key": _b64(f"{self._url.prefix}/{name}/{leaf}")}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def present(self, name: str, leaf: str, ttl: float, *, first: bool) -> bool:
        with self._lock:
            lease_id = self._kept.get((name, leaf))
        if first:
            lease_id = int(self._call("/lease/grant", {"TTL": math.ceil(ttl)})["ID"])
            key = _b64(f"{self._url.prefix}/{name}/{leaf}")
            try:
                self._call("/kv/put", {"key": key, "value": _b64(b"1"), "lease": lease_id})
            except EngineUnavailable:
                self._revoke(lease_id)
                raise
            with self._lock:
                self._kept[(name, leaf)] = lease_id
            return True
        if lease_id is None:
            return False
        result = self._call("/lease/keepalive", {"ID": lease_id})
        if "result" not in result:
            raise EngineUnavailable(f"keepalive: {result.get('error', result)}")
        if int(result["result"].get("TTL", 0)) > 0:
            return True
        with self._lock:
            self._kept.pop((name, leaf), None)
        return False

    def absent(self, name: str, leaf: str) -> None:
        with self._lock:
            lease_id = self._kept.pop((name, leaf), None)
        if lease_id is not None:
            self._revoke(lease_id)

    def channels(self) -> list[tuple[str, Snapshot, float | None]]:
        prefix = f"{self._url.prefix}/"
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        result = self._call("/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
        found = []
        for kv in result.get("kvs") or []:
            key = base64.b64decode(kv["key"]).decode()
            name, _, leaf = key[len(prefix) :].partition("/")
            if leaf != "host":
                continue
            left: float | None = None
            if kv.get("lease"):
                ttl = self._call("/kv/lease/timetolive", {"ID": int(kv["lease"])})
                left = float(ttl.get("TTL", 0))  # whole seconds; protobuf's JSON omits a 0
                left = None if left < 0 else left
            snapshot = Snapshot(base64.b64decode(kv.get("value", "")), int(kv["create_revision"]))
            found.append((name, snapshot, left))
        return found

    def local_address(self) -> str | None:
        return facing_address(self._url.endpoints[self._index])

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    def watch_url(self) -> str:
        """Return the gateway URL of the watch stream, on the endpoint that answered last."""
        client = self._clients[self._index]
        return client.get_url("/watch")


class _EtcdWatch:
    """One streamed ``/v3/watch`` request at a time, on a session of its own; ``cancel()`` shuts it."""

    def __init__(self, engine: EtcdEngine, key: str) -> None:
        self._engine, self._key = engine, key
        self._session = requests.Session()
        self._response: requests.Response | None = None
        self._cancelled = threading.Event()

    def wait(self, after: Snapshot, timeout: float) -> None:  # noqa: C901 - each way a watch ends
        if self._cancelled.is_set():
            return
        request = {"create_request": {"key": _b64(self._key), "start_revision": after.revision + 1}}
        try:
            response = self._session.post(
                self._engine.watch_url(),
                json=cast("Any", request),
                stream=True,
                timeout=(REQUEST_TIMEOUT, timeout),
            )
        except requests.RequestException as exc:
            raise EngineUnavailable(f"watch: {exc}") from exc
        self._response = response
        try:
            if self._cancelled.is_set():
                return
            if response.status_code != 200:
                raise EngineUnavailable(f"watch: HTTP {response.status_code} {response.reason}")
            for line in response.iter_lines():
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("events") or result.get("canceled") or result.get("compact_revision"):
                    return
        except requests.RequestException as exc:
            if self._cancelled.is_set():
                return
            if isinstance(exc, requests.ConnectionError) and "timed out" in str(exc).lower():
                return  # nothing changed for ``timeout``: read again
            raise EngineUnavailable(f"watch: {exc}") from exc
        finally:
            self._response = None
            response.close()

    def cancel(self) -> None:
        self._cancelled.set()
        response = self._response
        if response is not None:
            connection = getattr(response.raw, "connection", None)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._session.close()
