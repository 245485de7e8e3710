"""A Starlette app whose uvicorn workers share a counter and a dict, with no extra process.

Every worker opens the same ``AsyncRequestChannel`` and ``AsyncSharedDict``
(``ipchannel.aio``): the views ``await`` them, so a worker's event loop never
blocks on the channel, not even while the hosting worker dies and another takes
over. ``/count`` is kept in the host's memory (it starts again from 0 when the
host dies); ``/hits`` is a SharedDict counter, replicated in every worker, which
survives the host. ``/metrics`` is prometheus_client's ASGI app: any worker shows
the requests every worker served (``ipchannel.contrib.prometheus``).

    cd examples/uvicorn_counter
    uvicorn app:app --workers 4 --uds /tmp/uvicorn-counter.sock
    curl --unix-socket /tmp/uvicorn-counter.sock http://localhost/count
    curl --unix-socket /tmp/uvicorn-counter.sock http://localhost/hits
    curl --unix-socket /tmp/uvicorn-counter.sock http://localhost/metrics/
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from ipchannel import ChannelTimeout
from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict
from ipchannel.contrib import prometheus

prometheus.enable("uvicorn-metrics")  # before the first metric: every worker's counts add up

import prometheus_client  # noqa: E402 - after enable(), as the metrics below

COUNTED = prometheus_client.Counter("counter_requests", "Requests /count answered, by every worker")

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from ipchannel import Channel

# The host's state. on_request runs in the hosting worker, in a handler thread (not on its event
# loop), one per connection, so several calls can run at once: the lock keeps each change whole.
_lock = threading.Lock()
_count = 0


def on_request(message: dict[str, Any]) -> Any:
    """Answer a worker (this one too): runs only in the worker that hosts, in a handler thread."""
    global _count  # noqa: PLW0603 - the host's state is module state, as in any app
    if message["op"] != "incr":
        raise ValueError(f"unknown op {message['op']!r}")
    with _lock:
        _count += 1
        return _count


# Creating them opens nothing: each worker connects in its lifespan, on its own event loop.
channel = AsyncRequestChannel("uvicorn-counter", on_request)
hits = AsyncSharedDict("uvicorn-hits")


async def count(_request: Request) -> JSONResponse:
    """Count in the host, through whichever worker answers the HTTP request."""
    response = await _answer(lambda: channel.request({"op": "incr"}, timeout=5), channel.channel)
    if response.status_code == 200:
        COUNTED.inc()  # local and cheap; a scrape of /metrics in any worker sums every worker's
    return response


async def hit(_request: Request) -> JSONResponse:
    """Count in the shared dict: the write is awaited, the replica is local."""
    return await _answer(lambda: hits.incr("hits"), hits.channel)


async def _answer(call: Any, shared: Channel) -> JSONResponse:
    try:
        status, body = 200, {"count": await call()}
    except ChannelTimeout as exc:
        status, body = 503, {"error": str(exc)}
    body |= {"worker": os.getpid(), "host": shared.host_pid}
    return JSONResponse(body, status_code=status)


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    """Open the dict at start-up; on shutdown close both, handing hosting over at once."""
    # ipchannel's threads hand the GIL back to the event loop within 1 ms, not 5 (docs/howto/asyncio.rst)
    sys.setswitchinterval(0.001)
    async with channel, hits:
        yield
    # uvicorn's workers exit by re-raising the SIGTERM they caught, without atexit: send what is left
    prometheus.shutdown()


app = Starlette(
    routes=[
        Route("/count", count),
        Route("/hits", hit),
        Mount("/metrics", prometheus_client.make_asgi_app()),
    ],
    lifespan=lifespan,
)
