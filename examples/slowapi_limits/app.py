"""slowapi (Starlette, FastAPI) with one limit shared by every uvicorn worker: no Redis.

``/limited`` is slowapi's decorator on the ``ipchannel://slowapi-limits`` storage (slowapi calls
limits' blocking API: one write through the hosting worker per request). ``/aio`` uses limits'
asyncio API on ``async+ipchannel://``, whose writes run in ipchannel's threads, off the event loop.
Both allow 5 requests a minute per client key over all 4 workers together.

    cd examples/slowapi_limits
    uvicorn app:app --workers 4 --uds /tmp/slowapi-limits.sock
    for i in $(seq 8); do curl -s --unix-socket /tmp/slowapi-limits.sock http://localhost/limited; done
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request  # noqa: TC002 - slowapi looks at the endpoint's parameters
from starlette.responses import JSONResponse
from starlette.routing import Route

import ipchannel.contrib.limits  # noqa: F401 - registers ipchannel:// and async+ipchannel://

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def client_key(request: Request) -> str:
    """One limit per client key (the X-Api-Key header), else per address."""
    return request.headers.get("x-api-key") or get_remote_address(request)


limiter = Limiter(key_func=client_key, storage_uri="ipchannel://slowapi-limits", strategy="moving-window")
five_a_minute = parse("5/minute")
aio_limiter = MovingWindowRateLimiter(storage_from_string("async+ipchannel://slowapi-aio-limits"))


@limiter.limit("5/minute")
async def limited(request: Request) -> JSONResponse:  # noqa: ARG001 - slowapi reads it
    """Answer at most 5 times a minute per client key, whichever worker takes the request."""
    return JSONResponse({"pid": os.getpid()})


async def aio(request: Request) -> JSONResponse:
    """Apply the same limit through limits.aio: the check is awaited, the loop never blocks on it."""
    if not await aio_limiter.hit(five_a_minute, client_key(request)):
        return JSONResponse({"pid": os.getpid(), "error": "5 per 1 minute"}, status_code=429)
    return JSONResponse({"pid": os.getpid()})


async def too_many(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001 - Starlette's signature
    """Say which worker refused, as JSON."""
    return JSONResponse({"pid": os.getpid(), "error": str(exc)}, status_code=429)


@contextlib.asynccontextmanager
async def open_storages(_: Starlette) -> AsyncIterator[None]:
    """Open both shared dicts as the worker starts: every worker then holds the counts.

    docs/howto/metrics-and-limits.rst, "Rate limits": the hosting worker's death then loses no count.
    """
    storage_from_string("ipchannel://slowapi-limits").check()  # the dict slowapi's storage uses
    await aio_limiter.storage.check()
    yield


app = Starlette(routes=[Route("/limited", limited), Route("/aio", aio)], lifespan=open_storages)
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, too_many)
