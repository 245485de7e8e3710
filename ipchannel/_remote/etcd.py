"""The etcd engine, on ``etcd3gw`` (etcd's HTTP/JSON gateway: no gRPC, nothing to re-create after fork).

A channel's record is the key ``PREFIX/NAME/host``, bound to a lease of ``ttl``
seconds (etcd leases have whole seconds: rounded up). Claiming is one
transaction that puts the key only if its ``create_revision`` is 0 (and the
channel's epoch ``PREFIX/NAME/epoch`` if it has none); the key's create revision
is the generation, and etcd's revisions only grow in a cluster's life. A new
cluster counts from 1 again: an epoch made by a claimant that followed generation
G is ``TOKEN+G`` and adds G to every create revision in it (``_offset``), so no
host after a reset reuses a number seen before it (a term is known by its number).
Renewing is a transaction that checks the key still holds our record, then a lease
keep-alive; releasing revokes the lease, which deletes the key at once. Waiting is
a watch from the revision after the last read, streamed over the gateway, so no
change is missed between a read and the watch. Several endpoints
(``etcd://h1,h2,h3``): a call that gets no answer tries the next.
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
import threading
from typing import TYPE_CHECKING, Any, cast

from .engine import Claimed, EngineUnavailable, Renewal, Snapshot, facing_address
from .etcd_http import close_on_close
from .etcd_watch import REQUEST_TIMEOUT, EtcdWatch, b64

if TYPE_CHECKING:
    from collections.abc import Callable

    import requests

    from .._url import CoordinatorURL
    from .engine import Seen

from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

__all__ = ["EtcdEngine"]

_LOGGER = logging.getLogger("ipchannel")

#: what etcd answers a call without a valid token (etcdserver's ErrUserEmpty, ErrInvalidAuthToken)
_AUTH_NEEDED = ("user name is empty", "invalid auth token")
_CLAIM_TRIES = 3  # the epoch the record carries can be wrong once (unknown) and change once (a reset)
YOUNG = 60  # seconds etcd's clock tells the age of its data for (``_age``); older needs no wait at ttl <= 60


def _text(kv: dict[str, Any] | None) -> str | None:
    """Return a key-value's value as text (an epoch), or None for no key."""
    return None if kv is None else base64.b64decode(kv.get("value", "")).decode("latin-1")


def _offset(epoch: str | None) -> int:
    """Return what ``epoch`` adds to a create revision to make a generation (``TOKEN+OFFSET``; else 0)."""
    _, plus, offset = (epoch or "").partition("+")
    return int(offset) if plus and offset.isdigit() else 0


def _first(response: dict[str, Any]) -> dict[str, Any] | None:
    """Return the first key-value of one range response of a transaction, or None."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    return cast("dict[str, Any]", kvs[0]) if kvs else None


def _post(client: Etcd3Client, path: str, payload: dict[str, Any], url: CoordinatorURL) -> dict[str, Any]:
    """POST once, authenticating first (``USER:PASSWORD@``) if etcd says the token is missing or stale.

    etcd3gw has no authentication of its own: etcd's gateway takes the token of
    ``/v3/auth/authenticate`` in the ``Authorization`` header, on the client's session. The
    CA goes with every request (``EtcdEngine.ca_file``).
    """
    target = client.get_url(path)
    try:
        return cast("dict[str, Any]", client.post(target, json=payload, verify=url.ca_file))
    except Etcd3Exception as exc:
        if url.username is None or not any(sign in str(exc.detail_text) for sign in _AUTH_NEEDED):
            raise
    login = {"name": url.username, "password": url.password or ""}
    client.session.headers.pop("Authorization", None)  # etcd refuses a login that shows a stale token
    token = client.post(client.get_url("/auth/authenticate"), json=login, verify=url.ca_file)["token"]
    client.session.headers["Authorization"] = token
    return cast("dict[str, Any]", client.post(target, json=payload, verify=url.ca_file))


def _client(url: CoordinatorURL, host: str, port: int) -> Etcd3Client:
    """Return a client of one endpoint, whose session's ``close()`` closes its connections at once."""
    client = Etcd3Client(
        host=host,
        port=port,
        protocol="https" if url.tls else "http",
        ca_cert=url.ca_file,
        cert_cert=url.cert_file,
        cert_key=url.key_file,
        timeout=REQUEST_TIMEOUT,
        api_path="/v3/",
    )
    close_on_close(client.session)  # ``etcd_http``: urllib3 2 leaves them to the garbage collector
    return client


class EtcdEngine:
    """etcd through ``etcd3gw.Etcd3Client``, one per endpoint, shared by the channels of a process."""

    def __init__(self, url: CoordinatorURL) -> None:
        self._url = url
        self._clients = [_client(url, host, port) for host, port in url.endpoints]
        self._index = 0
        self._leases: dict[tuple[str, int], tuple[int, int]] = {}  # (name, generation) -> lease, revision
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
                return _post(client, path, payload, self._url)
            except Etcd3Exception as exc:
                problems.append(f"{client.host}:{client.port}: {type(exc).__name__} {exc.detail_text or exc}")
                self._index = (self._index + 1) % len(self._clients)
        raise EngineUnavailable("; ".join(problems))

    @property
    def ca_file(self) -> str | None:
        """The CA the URL names, given to each request (None: the default, the system's).

        On the session it would lose to ``REQUESTS_CA_BUNDLE`` (requests merges the
        environment over a session's ``verify``, psf/requests#3829); on the request it wins.
        """
        return self._url.ca_file

    def prepare(self, session: requests.Session) -> str:
        """Give ``session`` what the last endpoint's client has (client certificate, token); the watch URL."""
        client = self._clients[self._index]
        session.cert = client.session.cert
        if token := client.session.headers.get("Authorization"):
            session.headers["Authorization"] = token
        return client.get_url("/watch")

    def _epoch_key(self, name: str) -> str:
        return f"{self._url.prefix}/{name}/epoch"

    def read(self, name: str) -> Snapshot:
        host, epoch = b64(self._key(name)), b64(self._epoch_key(name))
        ranges = [{"request_range": {"key": host}}, {"request_range": {"key": epoch}}]
        result = self._call("/kv/txn", {"compare": [], "success": ranges, "failure": []})
        revision = int(result["header"]["revision"])
        kv, epoch_kv = (_first(response) for response in result.get("responses") or [{}, {}])
        current = (
            None if epoch_kv is None else base64.b64decode(epoch_kv.get("value", "")).decode(errors="replace")
        )
        if kv is None:
            return Snapshot(None, 0, revision, current)
        generation = int(kv["create_revision"]) + _offset(current)
        return Snapshot(base64.b64decode(kv.get("value", "")), generation, revision, current)

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
            self._leases[(name, claimed.generation)] = (lease_id, claimed.generation - _offset(claimed.epoch))
        return claimed

    def _claim(
        self, name: str, value: Callable[[str], bytes], lease_id: int, seen: Seen, ttl: float
    ) -> Claimed | None:
        """Put the key in the engine's epoch (a new one, made now, if it has none): at most three tries.

        The claim holds off if it made the epoch (the first claim, or the data was reset: etcd
        cannot tell which) until the data is a ttl old (``_age``); a full ttl if the claimant
        followed an epoch that is gone, or saw a higher revision (a restore).
        """
        host, epoch_key = b64(self._key(name)), b64(self._epoch_key(name))
        epoch = seen.epoch
        for _ in range(_CLAIM_TRIES):
            new = epoch is None
            if epoch is None:  # numbered above what the claimant followed: a term is known by its number
                epoch = secrets.token_hex(8) + (f"+{seen.generation}" if seen.generation > 0 else "")
            record = value(epoch)
            compare: list[dict[str, Any]] = [
                {"key": host, "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                {"key": epoch_key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}
                if new
                else {"key": epoch_key, "result": "EQUAL", "target": "VALUE", "value": b64(epoch)},
            ]
            success = [{"request_put": {"key": host, "value": b64(record), "lease": lease_id}}]
            if new:
                success.append({"request_put": {"key": epoch_key, "value": b64(epoch)}})
            ranges = [{"request_range": {"key": host}}, {"request_range": {"key": epoch_key}}]
            result = self._call("/kv/txn", {"compare": compare, "success": success, "failure": ranges})
            revision = int(result["header"]["revision"])
            if result.get("succeeded"):
                generation = revision + _offset(epoch)
                if epoch == seen.epoch and revision < seen.revision:  # a restore, under our eyes
                    return Claimed(generation, epoch, record, ttl)
                if new and seen.epoch:  # the epoch it followed is gone: a reset ("": from before epochs)
                    return Claimed(generation, epoch, record, ttl)
                return Claimed(generation, epoch, record, max(0.0, ttl - self._age()) if new else 0.0)
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
        born, young = b64(f"{self._url.prefix}/.data/born"), b64(f"{self._url.prefix}/.data/young")
        ranges = [{"request_range": {"key": born}}, {"request_range": {"key": young}}]
        found = self._call("/kv/txn", {"compare": [], "success": ranges, "failure": []})
        born_kv, young_kv = (_first(response) for response in found.get("responses") or [{}, {}])
        if born_kv is None:
            lease_id = int(self._call("/lease/grant", {"TTL": YOUNG})["ID"])
            puts = [
                {"request_put": {"key": born, "value": b64(b"1")}},
                {"request_put": {"key": young, "value": b64(b"1"), "lease": lease_id}},
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
            held = self._leases.get((name, claim.generation))
        if held is None:
            return Renewal(ours=False)
        lease_id, created = held
        key = b64(self._key(name))
        compare = [
            {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": created},
            {"key": key, "result": "EQUAL", "target": "VALUE", "value": b64(claim.value)},
            {"key": key, "result": "EQUAL", "target": "LEASE", "lease": lease_id},
        ]
        checked = self._call(
            "/kv/txn", {"compare": compare, "success": [], "failure": [{"request_range": {"key": key}}]}
        )
        if not checked.get("succeeded"):
            kv = _first((checked.get("responses") or [{}])[0])
            if kv is None or int(kv.get("create_revision", 0)) != created:  # expired, then another's claim
                return Renewal(ours=False)
            return Renewal(ours=False, found=base64.b64decode(kv.get("value", "")))  # ours, rewritten
        result = self._call("/lease/keepalive", {"ID": lease_id})
        if "result" not in result:  # a streamed error (no leader, say): it says nothing of our lease
            raise EngineUnavailable(f"keepalive: {result.get('error', result)}")
        return Renewal(ours=int(result["result"].get("TTL", 0)) > 0)

    def release(self, name: str, claim: Claimed) -> None:
        with self._lock:
            held = self._leases.pop((name, claim.generation), None)
        if held is not None:
            self._revoke(held[0], quiet=False)

    def _revoke(self, lease_id: int, *, quiet: bool = True) -> None:
        try:
            self._call("/kv/lease/revoke", {"ID": lease_id})
        except EngineUnavailable as exc:
            if "not found" in str(exc):
                return  # expired already: the key is gone
            if not quiet:
                raise

    def watch(self, name: str) -> EtcdWatch:
        return EtcdWatch(self, self._key(name))

    def put_if_claimed(self, name: str, generation: int, leaf: str, value: bytes) -> bool:
        with self._lock:
            held = self._leases.get((name, generation))
        if held is None:  # not a claim of this process's (released, or another's)
            return False
        txn = {
            "compare": [
                {
                    "key": b64(self._key(name)),
                    "result": "EQUAL",
                    "target": "CREATE",
                    "create_revision": held[1],
                }
            ],
            "success": [
                {"request_put": {"key": b64(f"{self._url.prefix}/{name}/{leaf}"), "value": b64(value)}}
            ],
            "failure": [],
        }
        return bool(self._call("/kv/txn", txn).get("succeeded"))

    def get(self, name: str, leaf: str) -> bytes | None:
        kvs = self._call("/kv/range", {"key": b64(f"{self._url.prefix}/{name}/{leaf}")}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def present(self, name: str, leaf: str, ttl: float, *, first: bool) -> bool:
        with self._lock:
            lease_id = self._kept.get((name, leaf))
        if first:
            lease_id = int(self._call("/lease/grant", {"TTL": math.ceil(ttl)})["ID"])
            key = b64(f"{self._url.prefix}/{name}/{leaf}")
            try:
                self._call("/kv/put", {"key": key, "value": b64(b"1"), "lease": lease_id})
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
        result = self._call("/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        found = []
        kvs = [
            (base64.b64decode(kv["key"]).decode()[len(prefix) :].partition("/"), kv)
            for kv in result.get("kvs") or []
        ]
        offsets = {name: _offset(_text(kv)) for (name, _, leaf), kv in kvs if leaf == "epoch"}
        for (name, _, leaf), kv in kvs:
            if leaf != "host":
                continue
            left: float | None = None
            if kv.get("lease"):
                ttl = self._call("/kv/lease/timetolive", {"ID": int(kv["lease"])})
                left = float(ttl.get("TTL", 0))  # whole seconds; protobuf's JSON omits a 0
                left = None if left < 0 else left
            generation = int(kv["create_revision"]) + offsets.get(name, 0)
            snapshot = Snapshot(base64.b64decode(kv.get("value", "")), generation)
            found.append((name, snapshot, left))
        return found

    def local_address(self) -> str | None:
        return facing_address(self._url.endpoints[self._index])

    def close(self) -> None:
        for client in self._clients:
            client.session.close()
