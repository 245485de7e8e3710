"""ipchannel for asyncio: awaited requests, publish/subscribe and shared-dict writes.

::

    from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict

    channel = AsyncRequestChannel("counter", on_request)   # on_request: a plain function
    reply = await channel.request({"op": "incr"})
    async with channel.messages() as stream:               # subscribed from here on
        await channel.publish("hello")
        async for message in stream:                       # until aclose() or the channel closes
            break

    hits = AsyncSharedDict("hits")
    await hits.incr("requests")
    hits.get("requests")                                   # a local read, no await

The event loop never blocks on the channel: the blocking, failover-tested client
runs in a few daemon threads per object (``ipchannel-aio:NAME``). See the how-to
guide docs/howto/asyncio.rst.
"""

from __future__ import annotations

from ._aio.channel import AsyncRequestChannel
from ._aio.dict import AsyncSharedDict
from ._aio.streams import MessageStream

__all__ = ["AsyncRequestChannel", "AsyncSharedDict", "MessageStream"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
