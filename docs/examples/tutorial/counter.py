# ruff: noqa: INP001 - run by gunicorn from this directory, not imported as a package
"""The tutorial's app: gunicorn workers share one counter, which survives ``kill -9`` of its host.

gunicorn -c gunicorn.conf.py counter:app
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ipchannel import SharedDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

hits = SharedDict("tutorial-hits")  # every worker holds a replica; one of them hosts


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """Count this request in the shared counter; say which worker answered and which one hosts."""
    del environ
    count = hits.incr("hits")  # atomic across every worker, applied by the host
    body = {"count": count, "worker": os.getpid(), "host": hits.channel.host_pid}
    data = json.dumps(body).encode() + b"\n"
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
