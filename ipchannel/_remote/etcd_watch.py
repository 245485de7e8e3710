"""Waiting for a channel's etcd key to change: one streamed ``/v3/watch`` request at a time.

The watch starts from the revision after the last read, so no change is missed between a
read and the watch; it runs on a ``requests`` session of its own, which the engine gives
the client certificate and auth token of its own clients (``EtcdEngine.prepare``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from typing import TYPE_CHECKING, Any, cast

import requests  # the etcd extra (etcd3gw needs requests); engine.py checks it before importing this

from .engine import EngineUnavailable
from .etcd_http import new_session

if TYPE_CHECKING:
    from .engine import Snapshot
    from .etcd import EtcdEngine

__all__ = ["REQUEST_TIMEOUT", "EtcdWatch", "b64"]

REQUEST_TIMEOUT = 1.0  # seconds one call may wait for one etcd endpoint


def b64(data: str | bytes) -> str:
    """Return ``data`` as etcd's JSON gateway takes keys and values: base64 text."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class EtcdWatch:
    """One streamed ``/v3/watch`` request at a time, on a session of its own; ``cancel()`` shuts it."""

    def __init__(self, engine: EtcdEngine, key: str) -> None:
        self._engine, self._key = engine, key
        self._session = new_session()
        self._response: requests.Response | None = None
        self._cancelled = threading.Event()

    def wait(self, after: Snapshot, timeout: float) -> None:  # noqa: C901 - each way a watch ends
        if self._cancelled.is_set():
            return
        request = {"create_request": {"key": b64(self._key), "start_revision": after.revision + 1}}
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
