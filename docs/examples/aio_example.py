"""ipchannel.aio: awaited requests, messages and shared-dict writes (docs: howto/asyncio)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import asyncio

from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict


def on_request(message):  # a plain function: runs in the host, in a handler thread
    return {"double": message * 2}


channel = AsyncRequestChannel("math", on_request)  # RequestChannel's options, and workers=8
hits = AsyncSharedDict("hits")  # SharedDict's options, and workers=8


async def main():
    async with channel, hits:  # aclose() on the way out
        print(await channel.request(21, timeout=5.0))
        async with channel.messages() as stream:  # subscribed before the body runs
            await channel.publish("hello")
            async for message in stream:  # every message published from now on
                print(message)
                break
        await hits.incr("requests")  # set, delete, update, incr, setdefault, pop, clear
        print(hits.get("requests"))  # reads are plain, local and lock-free: no await


asyncio.run(main())
