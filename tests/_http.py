"""HTTP over a Unix socket: what the tests that run a real server (gunicorn, uvicorn) ask it."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` to a server listening on the Unix socket ``path``."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def get_json(address: str, url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET ``url`` from the server on the Unix socket ``address``; return the status and JSON body."""
    conn = UnixHTTPConnection(address, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
