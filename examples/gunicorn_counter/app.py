"""A WSGI app whose gunicorn workers share one counter and one rate limiter, with no extra process.

Every worker opens the same ``RequestChannel``; whichever worker was elected host
keeps the state in its memory and answers the others. Kill that worker and
another one takes over (gunicorn starts a replacement): requests keep working,
and the new host starts from fresh state, since the state lived in the old host.
For state that must outlive its host, keep a replica in every worker or a file
(docs/explanation/guarantees.rst, "Guarantees and limits").

The SharedDict ``stats`` (``/hits``, ``/record``) has a replica in every worker, so it
outlives any one worker, but not all of them exiting at once (``max_requests``
recycling them together, a restart, the OOM killer) unless it is durable:
``COUNTER_APPENDONLY=always|everysec|no`` opens it with ``appendonly=True`` and that
``appendfsync``, journaled in the runtime directory or in ``COUNTER_JOURNAL_DIR``.

    cd examples/gunicorn_counter
    gunicorn -c gunicorn.conf.py app:app            # or -c gunicorn_preload.conf.py
    curl --unix-socket /tmp/gunicorn-counter.sock http://localhost/count
    COUNTER_APPENDONLY=always gunicorn -c gunicorn.conf.py app:app     # /hits survives restarts
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ipchannel import ChannelTimeout, RequestChannel, SharedDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

RATE_LIMIT = 5  # requests per client key...
RATE_WINDOW = 1.0  # ...per this many seconds, across all workers

# The host's state. on_request runs in the hosting worker, one handler thread per connection,
# so several calls can run at once: the lock keeps each change whole.
_lock = threading.Lock()
_count = 0
_hits: defaultdict[str, deque[float]] = defaultdict(deque)


def on_request(message: dict[str, Any]) -> Any:
    """Answer another worker (or this one): runs only in the worker that hosts."""
    global _count  # noqa: PLW0603 - the host's state is module state, as in any WSGI app
    with _lock:
        if message["op"] == "incr":
            _count += 1
            return _count
        if message["op"] == "allow":  # a sliding-window rate limiter shared by every worker
            now, hits = time.monotonic(), _hits[message["key"]]
            while hits and hits[0] <= now - RATE_WINDOW:
                hits.popleft()
            if len(hits) >= RATE_LIMIT:
                return False
            hits.append(now)
            return True
    raise ValueError(f"unknown op {message['op']!r}")


# Creating the channel does nothing yet: no thread, no socket. It connects on the first request,
# in the worker, so this module may be imported by a --preload master.
channel = RequestChannel("gunicorn-counter", on_request)

# A SharedDict opens (and writes) at import: with --preload the master opens it and hosts it, and
# every forked worker gets a replica and a writer identity of its own.
_appendfsync = os.environ.get("COUNTER_APPENDONLY")  # see the docstring above
if _appendfsync:  # durable: journaled, replayed by the next host even after every process exited
    _journal_dir = os.environ.get("COUNTER_JOURNAL_DIR")
    stats = SharedDict("gunicorn-stats", appendonly=True, appendfsync=_appendfsync, journal_dir=_journal_dir)
else:  # the default: lost once every process that has it exited
    stats = SharedDict("gunicorn-stats")
stats.setdefault("hits", 0)


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """``/count``: the shared counter; ``/limited``: the shared rate limiter; ``/hits``: a SharedDict.

    ``/record?key=K`` records the event K with the number it got; ``/records``: them all.
    """
    path = environ.get("PATH_INFO", "/")
    try:
        if path == "/count":
            status, body = "200 OK", {"count": channel.request({"op": "incr"}, timeout=5)}
        elif path == "/hits":
            status, body = "200 OK", {"count": stats.incr("hits")}
        elif path == "/record":
            key = parse_qs(environ.get("QUERY_STRING", "")).get("key", [""])[0]
            number = stats.incr("records")  # answered once the host applied (and journaled) it
            stats[f"record:{key}"] = number
            status, body = "200 OK", {"number": number}
        elif path == "/records":
            records = {key[7:]: value for key, value in stats.items() if key.startswith("record:")}
            status, body = "200 OK", {"count": stats.get("records", 0), "records": records}
        elif path == "/limited":
            key = environ.get("REMOTE_ADDR") or "local"
            allowed = channel.request({"op": "allow", "key": key}, timeout=5)
            status, body = ("200 OK", {"allowed": True}) if allowed else ("429 Too Many Requests", {})
        else:
            status, body = "404 Not Found", {"paths": ["/count", "/limited", "/hits", "/record", "/records"]}
    except ChannelTimeout as exc:
        status, body = "503 Service Unavailable", {"error": str(exc)}
    body |= {"worker": os.getpid(), "host": channel.channel.host_pid}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
