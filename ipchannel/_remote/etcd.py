"""The etcd engine, on ``etcd3gw`` (etcd's HTTP/JSON gateway: no gRPC, nothing to re-create after fork).

A channel's record is the key ``PREFIX/NAME/host``, bound to a lease of ``ttl``
seconds (etcd leases have whole seconds: rounded up). Claiming is one
transaction that puts the key only if its ``create_revision`` is 0; the
transaction's revision, the key's create revision, is the generation, and
etcd's revisions only grow. Renewing is a lease keep-alive; releasing revokes
the lease, which deletes the key at once. Waiting is a watch from the revision
after the last read, streamed over the gateway, so no change is missed between
a read and the watch. Several endpoints (``etcd://h1,h2,h3``): a call that gets
no answer tries the next.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import socket
import threading
from typing import TYPE_CHECKING, Any, cast

from .engine import EngineUnavailable, Snapshot, facing_address

if TYPE_CHECKING:
    from .._url import CoordinatorURL

import requests  # the etcd extra (etcd3gw needs requests); engine.py checks it before importing this
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

__all__ = ["EtcdEngine"]

REQUEST_TIMEOUT = 1.0  # seconds one call may wait for one etcd endpoint
#: what etcd answers a call without a valid token (etcdserver's ErrUserEmpty, ErrInvalidAuthToken)
_AUTH_NEEDED = ("user name is empty", "invalid auth token")


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class EtcdEngine:
    """etcd through ``etcd3gw.Etcd3Client``, one per endpoint, shared by the channels of a process."""

    def __init__(self, url: CoordinatorURL) -> None:
        self._url = url
        protocol = "https" if url.tls else "http"
        self._clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol=protocol,
                ca_cert=url.ca_file,
                cert_cert=url.cert_file,
                cert_key=url.key_file,
                timeout=REQUEST_TIMEOUT,
                api_path="/v3/",
            )
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
                return self._post(client, path, payload)
            except Etcd3Exception as exc:
                problems.append(f"{client.host}:{client.port}: {type(exc).__name__} {exc.detail_text or exc}")
                self._index = (self._index + 1) % len(self._clients)
        raise EngineUnavailable("; ".join(problems))

    def _post(self, client: Etcd3Client, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST once, authenticating first (``USER:PASSWORD@``) if etcd says the token is missing or stale.

        etcd3gw has no authentication of its own: etcd's gateway takes the token of
        ``/v3/auth/authenticate`` in the ``Authorization`` header, on the client's session.
        """
        url = client.get_url(path)
        try:
            return cast("dict[str, Any]", client.post(url, json=payload, verify=self.ca_file))
        except Etcd3Exception as exc:
            if self._url.username is None or not any(sign in str(exc.detail_text) for sign in _AUTH_NEEDED):
                raise
        login = {"name": self._url.username, "password": self._url.password or ""}
        client.session.headers.pop("Authorization", None)  # etcd refuses a login that shows a stale token
        token = client.post(client.get_url("/auth/authenticate"), json=login, verify=self.ca_file)["token"]
        client.session.headers["Authorization"] = token
        return cast("dict[str, Any]", client.post(url, json=payload, verify=self.ca_file))

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

    def read(self, name: str) -> Snapshot:
        result = self._call("/kv/range", {"key": _b64(self._key(name))})
        revision = int(result["header"]["revision"])
        kvs = result.get("kvs") or []
        if not kvs:
            return Snapshot(None, 0, revision)
        kv = kvs[0]
        return Snapshot(base64.b64decode(kv.get("value", "")), int(kv["create_revision"]), revision)

    def claim(self, name: str, value: bytes, ttl: float, floor: int) -> int | None:  # noqa: ARG002 - revisions only grow
        lease = self._call("/lease/grant", {"TTL": math.ceil(ttl)})
        lease_id = int(lease["ID"])
        key = _b64(self._key(name))
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": key, "value": _b64(value), "lease": lease_id}}],
            "failure": [],
        }
        try:
            result = self._call("/kv/txn", txn)
        except EngineUnavailable:
            self._revoke(lease_id)
            raise
        if not result.get("succeeded"):
            self._revoke(lease_id)
            return None
        generation = int(result["header"]["revision"])
        with self._lock:
            self._leases[(name, generation)] = lease_id
        return generation

    def renew(self, name: str, generation: int, ttl: float) -> bool:  # noqa: ARG002 - the lease has it
        with self._lock:
            lease_id = self._leases.get((name, generation))
        if lease_id is None:
            return False
        result = self._call("/lease/keepalive", {"ID": lease_id})
        if "result" not in result:  # a streamed error (no leader, say): it says nothing of our lease
            raise EngineUnavailable(f"keepalive: {result.get('error', result)}")
        return int(result["result"].get("TTL", 0)) > 0

    def release(self, name: str, generation: int) -> None:
        with self._lock:
            lease_id = self._leases.pop((name, generation), None)
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
                self._engine.prepare(self._session),
                json=cast("Any", request),
                stream=True,
                timeout=(REQUEST_TIMEOUT, timeout),
                verify=self._engine.ca_file,
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
