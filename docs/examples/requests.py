"""Request/reply and publish/subscribe with RequestChannel (docs: howto/messages)."""
# ruff: noqa: ANN001, ANN201, D103, INP001, T201 - a documentation example, shown from line 6 on

from __future__ import annotations

import threading

from ipchannel import RequestChannel


def on_request(message):  # runs in the host process, in a handler thread
    return {"double": message * 2}


received = threading.Event()
channel = RequestChannel("math", on_request)  # codec="json" by default
print(channel.request(21, timeout=5.0))  # from whichever process hosts; any thread
channel.subscribe(lambda message: (print(message), received.set()))  # in a background thread
channel.publish("hello")  # reaches every subscriber, this process's included
received.wait(5)
channel.close()
